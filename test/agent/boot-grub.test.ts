import test from 'ava';
import type { ExecutionContext } from 'ava';
import { toolTest as withTool } from '../helpers/tool-test.ts';
import { execFile } from 'node:child_process';
import { mkdtemp, readFile, readdir, rm, stat, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { basename, join } from 'node:path';
import { promisify } from 'node:util';
import { isTandemError } from '../../shared/errors.ts';
import { GRUB_ENV_SIZE, parseGrubEnv, serializeGrubEnv } from '../../agent/boot-control/grub-env.ts';
import { createBootControl, simulateReboot } from '../../agent/boot-control/index.ts';

const run = promisify(execFile);
let dir = '';
let n = 0;
const fresh = () => join(dir, `grubenv-${n++}`);

test.before(async () => {
  dir = await mkdtemp(join(tmpdir(), 'tandem-boot-grub-'));
});
test.after.always(async () => {
  await rm(dir, { recursive: true, force: true });
});

/** Tests of the real grub-editenv (test/helpers/tool-test.ts). */
const toolTest = (title: string, fn: (t: ExecutionContext) => Promise<void>): void => withTool(test, title, { commands: ['grub-editenv'], packages: 'grub-common' }, fn);

const editenv = async (file: string, ...args: string[]) => (await run('grub-editenv', [file, ...args])).stdout;
const vars = (o: Record<string, string>) => new Map(Object.entries(o));

test('codec: round trip keeps order, escapes backslash and newline', (t) => {
  const v = vars({ TANDEM_ACTIVE: 'B', path: 'C:\\boot\\', multi: 'line1\nline2\\\n', empty: '', bytes: '\xe9\xff' });
  const block = serializeGrubEnv(v);
  t.is(block.length, GRUB_ENV_SIZE);
  t.true(block.includes(Buffer.from('path=C:\\\\boot\\\\\nmulti=line1\\\nline2\\\\\\\n')));
  t.deepEqual([...parseGrubEnv(block)], [...v]);
});

test('codec: an exactly full block is fine, one byte more is ERR_BOOTENV_TOO_LARGE', (t) => {
  const overhead = serializeGrubEnv(new Map()).indexOf('#', 30); // signature + warning line
  const fill = (len: number) => vars({ k: 'x'.repeat(len) });
  const exact = GRUB_ENV_SIZE - overhead - 'k=\n'.length;
  const block = serializeGrubEnv(fill(exact));
  t.is(block[GRUB_ENV_SIZE - 1], 0x0a);
  t.is(parseGrubEnv(block).get('k')?.length, exact);
  t.true(isTandemError(t.throws(() => serializeGrubEnv(fill(exact + 1))), 'ERR_BOOTENV_TOO_LARGE'));
});

test('codec: refuses a wrong size, a bad signature, and names GRUB cannot hold', (t) => {
  const good = serializeGrubEnv(vars({ a: '1' }));
  t.true(isTandemError(t.throws(() => parseGrubEnv(good.subarray(0, 1000))), 'ERR_BOOTENV_CORRUPT'));
  t.true(isTandemError(t.throws(() => parseGrubEnv(Buffer.concat([good, Buffer.from('#')]))), 'ERR_BOOTENV_CORRUPT'));
  const bad = Buffer.from(good);
  bad[2] = 0x67; // "# gRUB …"
  t.true(isTandemError(t.throws(() => parseGrubEnv(bad)), 'ERR_BOOTENV_CORRUPT'));
  t.is(parseGrubEnv(serializeGrubEnv(vars({ a: '1' }), 4096), 4096).get('a'), '1');
  for (const name of ['a=b', '#x', 'nul\0']) {
    t.true(isTandemError(t.throws(() => serializeGrubEnv(vars({ [name]: '1' }))), 'ERR_BOOTENV_INVALID'), name);
  }
  t.true(isTandemError(t.throws(() => serializeGrubEnv(vars({ a: '\u20ac' }))), 'ERR_BOOTENV_INVALID'));
});

test('codec: reads odd blocks the way GRUB does', (t) => {
  const block = (body: string) => Buffer.from(`# GRUB Environment Block\n${body}`.padEnd(GRUB_ENV_SIZE, '#'), 'latin1');
  // Comments skipped; a line without '=' glues onto the next name; a truncated last line is dropped.
  t.deepEqual([...parseGrubEnv(block('# note\nv1=1\nv2_2\nv3=3\nlast=x'))], [
    ['v1', '1'],
    ['v2_2\nv3', '3'],
  ]);
  t.deepEqual([...parseGrubEnv(block('a=1\na=2\n'))], [['a', '2']], 'the later duplicate wins, as with load_env');
  const zeroPadded = Buffer.alloc(GRUB_ENV_SIZE);
  zeroPadded.write('# GRUB Environment Block\nx=1\n', 'latin1');
  t.deepEqual([...parseGrubEnv(zeroPadded)], [['x', '1']]);
});

toolTest('grub-editenv: our blocks equal its own byte for byte (create, set, replace, unset)', async (t) => {
  const theirs = fresh();
  await editenv(theirs, 'create');
  t.deepEqual(await readFile(theirs), serializeGrubEnv(new Map()));
  await editenv(theirs, 'set', 'TANDEM_ACTIVE=A', 'TANDEM_TRIES=3', 'note=a\\b\nc');
  await editenv(theirs, 'set', 'TANDEM_TRIES=2', 'TANDEM_ACTIVE=Bravo');
  await editenv(theirs, 'unset', 'TANDEM_TRIES');
  const ours = vars({ TANDEM_ACTIVE: 'A', TANDEM_TRIES: '3', note: 'a\\b\nc' });
  ours.set('TANDEM_TRIES', '2').set('TANDEM_ACTIVE', 'Bravo').delete('TANDEM_TRIES');
  t.deepEqual(await readFile(theirs), serializeGrubEnv(ours));
});

toolTest('grub-editenv: lists what the grub backend wrote, unrelated variables kept', async (t) => {
  const path = fresh();
  await editenv(path, 'create');
  await editenv(path, 'set', 'saved_entry=linux', 'TANDEM_ACTIVE=A', 'TANDEM_A_GOOD=1');
  const bc = createBootControl({ kind: 'grub', path });
  await bc.setTrial('B', 3);
  t.is(
    await editenv(path, 'list'),
    'saved_entry=linux\nTANDEM_ACTIVE=B\nTANDEM_A_GOOD=1\nTANDEM_TRIAL=1\nTANDEM_TRIES=3\nTANDEM_B_GOOD=0\n',
  );
  t.is((await stat(path)).size, GRUB_ENV_SIZE);
  const temps = (await readdir(dir)).filter((f) => f.startsWith(`.${basename(path)}.`));
  t.deepEqual(temps, [], 'no temp file left behind (other tests write beside it concurrently)');
});

toolTest('grub-editenv: the backend reads what grub-editenv set, and its set still works on our file', async (t) => {
  const path = fresh();
  await editenv(path, 'create');
  await editenv(path, 'set', 'TANDEM_ACTIVE=B', 'TANDEM_TRIAL=1', 'TANDEM_TRIES=2', 'TANDEM_A_GOOD=1', 'TANDEM_BOOTED=B');
  const bc = createBootControl({ kind: 'grub', path });
  t.deepEqual(await bc.read(), { active: 'B', booted: 'B', trial: true, triesLeft: 2, good: { A: true, B: false } });
  await bc.markGood('B');
  await editenv(path, 'set', 'other=x');
  t.deepEqual(await bc.read(), { active: 'B', booted: 'B', trial: false, triesLeft: 0, good: { A: true, B: true } });
  t.is(parseGrubEnv(await readFile(path)).get('other'), 'x');
});

toolTest('grub-editenv: a full env is refused by both, and the file is left as it was', async (t) => {
  const path = fresh();
  await editenv(path, 'create');
  await editenv(path, 'set', `pad=${'x'.repeat(900)}`);
  const before = await readFile(path);
  const bc = createBootControl({ kind: 'grub', path });
  const err = await t.throwsAsync(bc.setTrial('B', 3));
  t.true(isTandemError(err, 'ERR_BOOTENV_TOO_LARGE'));
  t.regex(err?.message ?? '', /^grub: /);
  await t.throwsAsync(editenv(path, 'set', `more=${'y'.repeat(100)}`), { message: /environment block too small/ });
  t.deepEqual(await readFile(path), before);
});

test('backend: missing or corrupt grubenv reads as an error, the next write re-creates it', async (t) => {
  const path = fresh();
  const bc = createBootControl({ kind: 'grub', path });
  t.true(isTandemError(await t.throwsAsync(bc.read()), 'ERR_BOOTENV_MISSING'));
  await writeFile(path, Buffer.alloc(GRUB_ENV_SIZE));
  const err = await t.throwsAsync(bc.read());
  t.true(isTandemError(err, 'ERR_BOOTENV_CORRUPT'));
  t.regex(err?.message ?? '', /^grub: GRUB environment block has no/);
  t.is((await simulateReboot(bc)).boot, 'A', 'the bootloader boots the safe default');
  await bc.markGood('A');
  t.deepEqual(await bc.read(), { active: 'A', trial: false, triesLeft: 0, good: { A: true, B: false } });
});

test('backend: in-place mode rewrites the same inode (FAT-safe path)', async (t) => {
  const path = fresh();
  await writeFile(path, serializeGrubEnv(vars({ TANDEM_ACTIVE: 'A' })));
  const { ino } = await stat(path);
  await createBootControl({ kind: 'grub', path, inPlace: true }).setTrial('B', 2);
  t.is((await stat(path)).ino, ino);
  t.is(parseGrubEnv(await readFile(path)).get('TANDEM_TRIES'), '2');
  await createBootControl({ kind: 'grub', path }).markGood('B');
  t.not((await stat(path)).ino, ino, 'the default renames a new file over it');
});
