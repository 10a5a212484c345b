import test from 'ava';
import { mkdtemp, readFile, rm, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { isTandemError } from '../../shared/errors.ts';
import { createBootControl, simulateReboot } from '../../agent/boot-control/index.ts';
import type { BootControl, BootControlConfig, BootState } from '../../agent/boot-control/index.ts';

let dir = '';
let n = 0;
const fresh = (name: string) => join(dir, `${n++}-${name}`);

test.before(async () => {
  dir = await mkdtemp(join(tmpdir(), 'tandem-boot-control-'));
});
test.after.always(async () => {
  await rm(dir, { recursive: true, force: true });
});

const configs: Record<string, () => BootControlConfig> = {
  file: () => ({ kind: 'file', path: fresh('boot.json') }),
  grub: () => ({ kind: 'grub', path: fresh('grubenv') }),
  'grub in place': () => ({ kind: 'grub', path: fresh('grubenv'), inPlace: true }),
  uboot: () => ({ kind: 'uboot', copies: [{ path: fresh('uboot.env') }] }),
  'uboot redundant': () => ({ kind: 'uboot', copies: [{ path: fresh('env0') }, { path: fresh('env1') }], size: 0x2000 }),
};

/** The agent's life across simulated reboots (the reboot cannot be real here: decideBoot is applied the way the bootloader would). */
async function lifecycle(bc: BootControl): Promise<string[]> {
  const log: string[] = [];
  const note = (s: BootState) =>
    log.push(`${s.booted ?? '-'}>${s.active} trial=${s.trial ? s.triesLeft : '-'} good=${+s.good.A}${+s.good.B}${s.fallbackFrom ? ` fb=${s.fallbackFrom}` : ''}`);
  const reboot = async () => {
    await simulateReboot(bc);
    note(await bc.read());
  };
  await bc.markGood('A'); // provisioning: A installed and good
  await reboot();
  await bc.setTrial('B', 2); // update 1: B never comes up healthy
  await reboot();
  await reboot();
  await reboot(); // tries exhausted: the bootloader falls back by itself
  await bc.setTrial('B', 2); // update 2: B passes its health checks
  await reboot();
  await bc.markGood('B');
  note(await bc.read());
  await reboot();
  await bc.setTrial('A', 3); // update 3: A comes up, fails health checks, the agent rolls back
  await reboot();
  await bc.markBad('A');
  await reboot();
  return log;
}

const expectedLife = [
  'A>A trial=- good=10',
  'B>B trial=1 good=10',
  'B>B trial=0 good=10',
  'A>A trial=- good=10 fb=B',
  'B>B trial=1 good=10',
  'B>B trial=- good=11',
  'B>B trial=- good=11',
  'A>A trial=2 good=01',
  'B>B trial=- good=01',
];

for (const [name, config] of Object.entries(configs)) {
  test(`${name}: the same life across reboots as every other backend`, async (t) => {
    t.deepEqual(await lifecycle(createBootControl(config())), expectedLife);
  });

  test(`${name}: concurrent verbs do not lose each other's edits`, async (t) => {
    const bc = createBootControl(config());
    await Promise.all([bc.markGood('A'), bc.setTrial('B', 3), bc.markGood('A')]);
    t.like(await bc.read(), { active: 'B', trial: true, triesLeft: 3, good: { A: true, B: false } });
  });
}

test('errors carry the backend name and an ERR_BOOTENV_* code', async (t) => {
  const bc = createBootControl({ kind: 'file', path: fresh('boot.json') });
  t.is(bc.kind, 'file');
  const missing = await t.throwsAsync(bc.read());
  t.true(isTandemError(missing, 'ERR_BOOTENV_MISSING'));
  t.regex(missing?.message ?? '', /^file: .*boot\.json does not exist/);
  const tries = await t.throwsAsync(bc.setTrial('B', 12));
  t.true(isTandemError(tries, 'ERR_BOOTENV_INVALID'));
  t.regex(tries?.message ?? '', /^file: Tries must be an integer from 1 to 9/);
  const io = await t.throwsAsync(createBootControl({ kind: 'grub', path: join(dir, 'no-such-dir', 'grubenv') }).markGood('A'));
  t.true(isTandemError(io, 'ERR_BOOTENV_IO'));
  t.regex(io?.message ?? '', /^grub: ENOENT/);
  const kind = t.throws(() => createBootControl({ kind: 'lilo' } as unknown as BootControlConfig));
  t.true(isTandemError(kind, 'ERR_BOOTENV_CONFIG'));
  t.regex(kind?.message ?? '', /^lilo: Unknown boot-control kind "lilo"/);
  const notEnv = await t.throwsAsync(simulateReboot({ kind: 'fake' } as BootControl));
  t.regex(notEnv?.message ?? '', /^fake: simulateReboot needs/);
});

test('file backend: plain JSON of the shared variables; corrupt JSON reads as ERR_BOOTENV_CORRUPT and boots A', async (t) => {
  const path = fresh('boot.json');
  const bc = createBootControl({ kind: 'file', path });
  await bc.setTrial('B', 2);
  t.deepEqual(JSON.parse(await readFile(path, 'utf8')), { TANDEM_ACTIVE: 'B', TANDEM_TRIAL: '1', TANDEM_TRIES: '2', TANDEM_B_GOOD: '0' });
  for (const junk of ['{"TANDEM_ACTIVE":', '[1]', '{"TANDEM_TRIES":3}', '{"a":"1","a":"2"}']) {
    await writeFile(path, junk);
    t.true(isTandemError(await t.throwsAsync(bc.read()), 'ERR_BOOTENV_CORRUPT'), junk);
  }
  t.is((await simulateReboot(bc)).boot, 'A');
  await bc.markGood('A');
  t.like(await bc.read(), { active: 'A', good: { A: true, B: false } });
});
