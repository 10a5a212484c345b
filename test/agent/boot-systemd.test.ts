import test from 'ava';
import { mkdir, mkdtemp, readdir, rename, rm, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { isTandemError } from '../../shared/errors.ts';
import { createBootControl } from '../../agent/boot-control/index.ts';
import type { BootControl, BootState } from '../../agent/boot-control/index.ts';
import {
  LOADER_GUID,
  chooseSystemdBootEntry,
  compareEntryFiles,
  parseBootCounter,
  slotOfEntryId,
  strverscmpImproved,
} from '../../agent/boot-control/systemd-boot-backend.ts';

let dir = '';
let n = 0;

test.before(async () => {
  dir = await mkdtemp(join(tmpdir(), 'tandem-boot-systemd-'));
});
test.after.always(async () => {
  await rm(dir, { recursive: true, force: true });
});

interface Esp {
  esp: string;
  entries: string;
  efivars: string;
  control: BootControl;
}

/**
 * A fresh ESP as the installer leaves it: both slots' entries, each naming an
 * image that exists; slot A good, slot B installed empty and marked bad (`+0`).
 */
async function freshEsp(files: Record<string, string> = { 'tandem-1-a.conf': 'a', 'tandem-0-b+0.conf': 'b' }, efivars = true): Promise<Esp> {
  const esp = join(dir, `esp-${n++}`);
  const entries = join(esp, 'loader', 'entries');
  await mkdir(entries, { recursive: true });
  await mkdir(join(esp, 'EFI', 'tandem'), { recursive: true });
  for (const slot of ['a', 'b']) await writeFile(join(esp, 'EFI', 'tandem', `os-${slot}.efi`), 'MZ');
  for (const [file, slot] of Object.entries(files)) {
    await writeFile(join(entries, file), slot.includes('\n') ? slot : `title Slot ${slot.toUpperCase()}\nefi /EFI/tandem/os-${slot}.efi\n`);
  }
  const vars = join(esp, 'efivars');
  await mkdir(vars);
  return { esp, entries, efivars: vars, control: createBootControl({ kind: 'systemd-boot', esp, efivars: efivars ? vars : join(esp, 'none') }) };
}

const list = async (e: Esp) => (await readdir(e.entries)).sort();

/**
 * A reboot, simulated the way systemd-boot does it (chooseSystemdBootEntry):
 * the first entry starts, its counter file renamed first, and its id lands in
 * the volatile LoaderEntrySelected variable (attributes, then UTF-16LE with NUL).
 * The real thing runs in test/boot-qemu/systemd-boot.test.ts.
 */
async function reboot(e: Esp): Promise<string> {
  const choice = chooseSystemdBootEntry(await list(e));
  if (choice === undefined) throw new Error('nothing to boot');
  if (choice.renamedTo !== undefined) await rename(join(e.entries, choice.file), join(e.entries, choice.renamedTo));
  const attrs = Buffer.alloc(4);
  attrs.writeUInt32LE(0x6); // BOOTSERVICE_ACCESS | RUNTIME_ACCESS: volatile
  await writeFile(join(e.efivars, `LoaderEntrySelected-${LOADER_GUID}`), Buffer.concat([attrs, Buffer.from(`${choice.id}\0`, 'utf16le')]));
  return choice.file;
}

const describe = (s: BootState) =>
  `${s.booted ?? '-'}>${s.active} trial=${s.trial ? s.triesLeft : '-'} good=${+s.good.A}${+s.good.B}${s.fallbackFrom ? ` fb=${s.fallbackFrom}` : ''}`;

test('parseBootCounter reads and steps counters as systemd-boot does', (t) => {
  t.like(parseBootCounter('foobar+3.conf'), { base: 'foobar', left: 3, done: 0, next: 'foobar+2-1.conf' });
  t.like(parseBootCounter('foobar+4-0.conf'), { left: 4, done: 0, next: 'foobar+3-1.conf' });
  t.like(parseBootCounter('foobar+1-2.conf'), { next: 'foobar+0-3.conf' });
  t.like(parseBootCounter('foobar+0-3.conf'), { left: 0, done: 3, next: 'foobar+0-4.conf' }, 'a bad entry started by hand still counts');
  t.like(parseBootCounter('a+1+2.conf'), { base: 'a+1', left: 2 }, 'the last + counts');
  for (const none of ['foobar.conf', 'foobar+.conf', 'foobar+3-.conf', 'foobar+3-x.conf', 'foobar+3.conf.bak', 'foobar+3.CONF', 'foo+3bar.conf']) {
    t.is(parseBootCounter(none), undefined, none);
  }
});

test('strverscmpImproved orders versions like systemd (its own table), numbers by value', (t) => {
  const ordered = ['122.1', '123~rc1-1', '123', '123-a', '123-a.1', '123-1', '123-1.1', '123^post1', '123.a-1', '123.1-1', '123a-1', '124-1'];
  for (let i = 0; i < ordered.length; i++) {
    for (let j = 0; j < ordered.length; j++) {
      t.is(Math.sign(strverscmpImproved(ordered[i]!, ordered[j]!)), Math.sign(i - j), `${ordered[i]} vs ${ordered[j]}`);
    }
  }
  t.is(strverscmpImproved('00123', '123'), 0);
  t.true(strverscmpImproved('tandem-10-a.conf', 'tandem-9-b.conf') > 0);
  t.true(strverscmpImproved('tandem-3-a+2-1.conf', 'tandem-3-b.conf') < 0);
  t.is(strverscmpImproved('', ''), 0);
  t.true(strverscmpImproved('', 'a') < 0);
});

test('chooseSystemdBootEntry: newest name first, bad entries (+0) last, counters renamed before the start', (t) => {
  t.deepEqual(chooseSystemdBootEntry(['tandem-1-a.conf', 'tandem-2-b+3.conf']), { file: 'tandem-2-b+3.conf', renamedTo: 'tandem-2-b+2-1.conf', id: 'tandem-2-b+3.conf' });
  t.deepEqual(chooseSystemdBootEntry(['tandem-1-a.conf', 'tandem-2-b+0-3.conf']), { file: 'tandem-1-a.conf', id: 'tandem-1-a.conf' });
  t.is(chooseSystemdBootEntry(['tandem-2-b+0-3.conf', 'tandem-1-a+0.conf'])?.file, 'tandem-2-b+0-3.conf', 'all bad: still the newest');
  t.is(chooseSystemdBootEntry(['tandem-9-a.conf', 'tandem-10-b.conf'])?.file, 'tandem-10-b.conf', 'numbers by value');
  t.is(chooseSystemdBootEntry([]), undefined);
  t.true(compareEntryFiles('x+2.conf', 'x+1.conf') < 0, 'ids compare first: "+" is a separator, 2 is newer than 1');
  t.true(compareEntryFiles('a.conf', 'z+0-1.conf') < 0, 'bad after good, whatever the names');
  t.is(compareEntryFiles('a.conf', 'a.conf'), 0);
});

test('slotOfEntryId takes ids with or without counter and .conf', (t) => {
  t.is(slotOfEntryId('tandem-3-b+2-1.conf'), 'B');
  t.is(slotOfEntryId('TANDEM-3-A.conf'), 'A');
  t.is(slotOfEntryId('tandem-3-a'), 'A');
  t.is(slotOfEntryId('debian-6.1.conf'), undefined);
  t.is(slotOfEntryId('os-1-b.conf', 'os'), 'B');
});

test('the same life across (simulated) reboots as every other backend, with the names systemd-boot sees', async (t) => {
  const e = await freshEsp();
  const bc = e.control;
  const log: string[] = [];
  const note = async () => log.push(`${describe(await bc.read())} | ${(await list(e)).join(' ')}`);
  const boot = async () => {
    await reboot(e);
    await note();
  };
  await bc.markGood('A'); // provisioning: A installed and good
  await boot();
  await bc.setTrial('B', 2); // update 1: B never comes up healthy
  await boot();
  await boot();
  await boot(); // tries exhausted: systemd-boot falls back by itself
  await bc.setTrial('B', 2); // update 2: B passes its health checks
  await boot();
  await bc.markGood('B');
  await note();
  await boot();
  await bc.setTrial('A', 3); // update 3: A comes up, fails health checks, the agent rolls back
  await boot();
  await bc.markBad('A');
  await boot();
  t.deepEqual(log, [
    'A>A trial=- good=10 | tandem-0-b+0.conf tandem-1-a.conf',
    'B>B trial=1 good=10 | tandem-1-a.conf tandem-2-b+1-1.conf',
    'B>B trial=0 good=10 | tandem-1-a.conf tandem-2-b+0-2.conf',
    'A>A trial=- good=10 fb=B | tandem-1-a.conf tandem-2-b+0-2.conf',
    'B>B trial=1 good=10 | tandem-1-a.conf tandem-3-b+1-1.conf',
    'B>B trial=- good=11 | tandem-1-a.conf tandem-3-b.conf',
    'B>B trial=- good=11 | tandem-1-a.conf tandem-3-b.conf',
    'A>A trial=2 good=01 | tandem-3-b.conf tandem-4-a+2-1.conf',
    'B>B trial=- good=01 | tandem-3-b.conf tandem-4-a+0.conf',
  ]);
});

test('a slot confirmed on its last try stays; without efivarfs that boot reads as the fallback it will be', async (t) => {
  const e = await freshEsp();
  await e.control.setTrial('B', 1);
  t.is(await reboot(e), 'tandem-2-b+1.conf');
  t.deepEqual(await list(e), ['tandem-1-a.conf', 'tandem-2-b+0-1.conf']);
  t.like(await e.control.read(), { booted: 'B', active: 'B', trial: true, triesLeft: 0 });
  const blind = createBootControl({ kind: 'systemd-boot', esp: e.esp, efivars: join(e.esp, 'none') });
  const seen = await blind.read();
  t.like(seen, { active: 'A', trial: false, fallbackFrom: 'B' });
  t.is(seen.booted, undefined);
  await e.control.markGood('B');
  t.deepEqual(await list(e), ['tandem-1-a.conf', 'tandem-2-b.conf']);
  t.is(await reboot(e), 'tandem-2-b.conf');
});

test('markGood on the slot that is not active keeps the active one first, whatever the generations', async (t) => {
  const e = await freshEsp();
  await e.control.setTrial('B', 1);
  await reboot(e);
  await reboot(e); // fell back to A; B is tandem-2-b+0-1
  t.like(await e.control.read(), { booted: 'A', active: 'A', fallbackFrom: 'B' });
  await e.control.markGood('B');
  t.deepEqual(await list(e), ['tandem-2-b.conf', 'tandem-3-a.conf']);
  t.like(await e.control.read(), { active: 'A', good: { A: true, B: true } });
  t.is(await reboot(e), 'tandem-3-a.conf');
});

test('setTrial clears the other slot\'s fallback record (+0-N → +0) and always takes the next generation', async (t) => {
  const e = await freshEsp();
  await e.control.setTrial('B', 1);
  await reboot(e);
  await reboot(e);
  await e.control.setTrial('A', 4);
  t.deepEqual(await list(e), ['tandem-2-b+0.conf', 'tandem-3-a+4.conf']);
  const s = await e.control.read();
  t.like(s, { active: 'A', trial: true, triesLeft: 4, good: { A: false, B: false } });
  t.is(s.fallbackFrom, undefined);
});

test('markBad of the active slot boots the other one without a trial, which for systemd-boot means blessed', async (t) => {
  const e = await freshEsp({ 'tandem-1-a+0-3.conf': 'a', 'tandem-2-b.conf': 'b' });
  await e.control.markBad('B');
  t.deepEqual(await list(e), ['tandem-1-a.conf', 'tandem-2-b+0.conf']);
  t.like(await e.control.read(), { active: 'A', trial: false, good: { A: true, B: false } });
  t.is((await e.control.read()).fallbackFrom, undefined, "the agent's +0 is not the bootloader's fallback");
  await e.control.markBad('B');
  t.deepEqual(await list(e), ['tandem-1-a.conf', 'tandem-2-b+0.conf'], 'idempotent');
});

test('markBad: a slot that already fell back keeps its record; one running its last try is rejected for good', async (t) => {
  const fell = await freshEsp({ 'tandem-1-a.conf': 'a', 'tandem-2-b+0-3.conf': 'b' });
  await fell.control.markBad('B');
  t.deepEqual(await list(fell), ['tandem-1-a.conf', 'tandem-2-b+0-3.conf']);
  t.like(await fell.control.read(), { active: 'A', fallbackFrom: 'B' });
  const last = await freshEsp();
  await last.control.setTrial('B', 1);
  await reboot(last);
  t.like(await last.control.read(), { booted: 'B', active: 'B', trial: true, triesLeft: 0 });
  await last.control.markBad('B');
  t.deepEqual(await list(last), ['tandem-1-a.conf', 'tandem-2-b+0.conf']);
  const s = await last.control.read();
  t.like(s, { booted: 'B', active: 'A', trial: false });
  t.is(s.fallbackFrom, undefined);
});

test('entries systemd-boot would not list (no image on the ESP) do not count, and cannot be put on trial', async (t) => {
  const e = await freshEsp({ 'tandem-1-a.conf': 'a', 'tandem-2-b.conf': 'title B\nlinux /vmlinuz-b\n' });
  t.like(await e.control.read(), { active: 'A', good: { A: true, B: false } });
  const err = await t.throwsAsync(e.control.setTrial('B', 3));
  t.true(isTandemError(err, 'ERR_BOOTENV_MISSING'));
  t.regex(err!.message, /^systemd-boot: tandem-2-b\.conf names no linux or efi image/);
});

test('other entries on the ESP are left alone', async (t) => {
  const e = await freshEsp({ 'tandem-1-a.conf': 'a', 'tandem-0-b+0.conf': 'b', 'debian-6.1.conf': 'a', 'tandem-x.conf': 'b' });
  await e.control.setTrial('B', 2);
  t.deepEqual(await list(e), ['debian-6.1.conf', 'tandem-1-a.conf', 'tandem-2-b+2.conf', 'tandem-x.conf']);
});

test('errors: ERR_BOOTENV_* codes, messages prefixed with the backend name', async (t) => {
  const code = async (p: Promise<unknown>) => ((await t.throwsAsync(p)) as { code?: string; message: string });
  const none = createBootControl({ kind: 'systemd-boot', esp: join(dir, 'no-such-esp') });
  const missing = await code(none.read());
  t.is(missing.code, 'ERR_BOOTENV_MISSING');
  t.regex(missing.message, /^systemd-boot: /);
  t.is((await code((await freshEsp({ 'other.conf': 'a' })).control.read())).code, 'ERR_BOOTENV_MISSING');
  t.is((await code((await freshEsp({ 'tandem-1-a.conf': 'a', 'tandem-2-a+1.conf': 'a' })).control.read())).code, 'ERR_BOOTENV_CORRUPT');
  const sortKey = await freshEsp({ 'tandem-1-a.conf': 'title A\nsort-key tandem\nefi /EFI/tandem/os-a.efi\n' });
  t.is((await code(sortKey.control.read())).code, 'ERR_BOOTENV_CONFIG');
  const e = await freshEsp({ 'tandem-1-a.conf': 'a' });
  t.is((await code(e.control.setTrial('B', 2))).code, 'ERR_BOOTENV_MISSING');
  for (const tries of [0, 10, 1.5]) t.is((await code(e.control.setTrial('A', tries))).code, 'ERR_BOOTENV_INVALID');
  t.is((await code(e.control.markGood('C' as never))).code, 'ERR_BOOTENV_INVALID');
  const badPrefix = t.throws(() => createBootControl({ kind: 'systemd-boot', esp: e.esp, prefix: 'Tandem+' }));
  t.true(isTandemError(badPrefix, 'ERR_BOOTENV_CONFIG'));
  t.regex(badPrefix!.message, /^systemd-boot: /);
});

test('concurrent verbs do not lose each other\'s renames', async (t) => {
  const e = await freshEsp();
  await Promise.all([e.control.markGood('A'), e.control.setTrial('B', 3), e.control.markGood('A')]);
  t.like(await e.control.read(), { active: 'B', trial: true, triesLeft: 3, good: { A: true, B: false } });
  t.deepEqual(await list(e), ['tandem-1-a.conf', 'tandem-2-b+3.conf']);
});
