import test from 'ava';
import { mkdtemp, readFile, readdir, rm, stat, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { writeFileDurable, writeInPlaceDurable } from '../../shared/durable-write.ts';

let dir = '';
test.before(async () => {
  dir = await mkdtemp(join(tmpdir(), 'tandem-boot-durable-'));
});
test.after.always(async () => {
  await rm(dir, { recursive: true, force: true });
});

test('writeFileDurable creates and replaces a file through a new inode, leaving no temp file', async (t) => {
  const path = join(dir, 'state.json');
  await writeFileDurable(path, '{"a":1}', { mode: 0o600 });
  t.is(await readFile(path, 'utf8'), '{"a":1}');
  t.is((await stat(path)).mode & 0o777, 0o600);
  const { ino } = await stat(path);
  await writeFileDurable(path, Buffer.from('second'));
  t.is(await readFile(path, 'utf8'), 'second');
  t.not((await stat(path)).ino, ino);
  t.deepEqual(await readdir(dir).then((names) => names.filter((f) => f.includes('state.json'))), ['state.json']);
});

test('writeFileDurable into a missing folder fails and leaves nothing behind', async (t) => {
  await t.throwsAsync(writeFileDurable(join(dir, 'nope', 'x'), 'x'), { code: 'ENOENT' });
});

test('writeInPlaceDurable overwrites the block in place: same inode, no truncation, offsets honoured', async (t) => {
  const path = join(dir, 'flash.img');
  await writeFile(path, Buffer.alloc(64, 0xaa));
  const { ino } = await stat(path);
  await writeInPlaceDurable(path, Buffer.alloc(16, 0x11));
  await writeInPlaceDurable(path, Buffer.alloc(16, 0x22), { offset: 32 });
  const bytes = await readFile(path);
  t.is((await stat(path)).ino, ino);
  t.deepEqual(bytes, Buffer.concat([Buffer.alloc(16, 0x11), Buffer.alloc(16, 0xaa), Buffer.alloc(16, 0x22), Buffer.alloc(16, 0xaa)]));
});

test('writeInPlaceDurable creates a missing file, at an offset too', async (t) => {
  const path = join(dir, 'new.env');
  await writeInPlaceDurable(path, Buffer.from('env'), { offset: 4 });
  t.deepEqual(await readFile(path), Buffer.from('\0\0\0\0env', 'latin1'));
});
