/**
 * The real GRUB (i386-pc, SeaBIOS, QEMU/TCG) running agent/boot/grub.cfg, its
 * grubenv written by the agent's grub backend: the whole A/B cycle on real
 * boots, with grubenv on FAT and on ext4 (about 0.3 s a boot).
 */
import test from 'ava';
import { mkdtemp, readFile, rm, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { decideBoot } from '../../agent/boot-control/boot-decision.ts';
import { VAR } from '../../agent/boot-control/boot-vars.ts';
import { parseGrubEnv, serializeGrubEnv } from '../../agent/boot-control/grub-env.ts';
import { bootTest } from './boot-test.ts';
import { EXPECTED_ENV_CYCLE, EXPECTED_ODD_ENVS, runEnvCycle, runOddEnvs, timingSummary } from './env-boot-cycle.ts';
import { GRUB_BIOS_FILES, createGrubRig } from './grub-rig.ts';
import { osSlot, tandemBootLine, tandemWarnings } from './qemu-run.ts';

let dir = '';
test.before(async () => {
  dir = await mkdtemp(join(tmpdir(), 'tandem-boot-qemu-grub-bios-'));
});
test.after.always(async () => {
  await rm(dir, { recursive: true, force: true });
});

const need = {
  commands: ['qemu-system-x86_64', 'grub-mkimage', 'mkfs.fat', 'mcopy', 'mkfs.ext4', 'debugfs'],
  files: GRUB_BIOS_FILES,
  packages: 'qemu-system-x86 grub-pc-bin grub-common mtools dosfstools e2fsprogs',
};

for (const filesystem of ['fat', 'ext4'] as const) {
  bootTest(`GRUB BIOS, grubenv on ${filesystem}: every real boot does what decideBoot predicts, through the whole A/B cycle`, need, async (t) => {
    const rig = await createGrubRig({ dir: await mkdtemp(join(dir, `${filesystem}-`)), firmware: 'bios', filesystem });
    const { records, times } = await runEnvCycle(t, rig);
    t.deepEqual(records, EXPECTED_ENV_CYCLE);
    t.log(timingSummary(`GRUB BIOS ${filesystem}`, times));
  });
}

bootTest('GRUB BIOS: envs the agent never writes (odd tries, lowercase slot, unrelated variables) boot as decideBoot predicts', need, async (t) => {
  const rig = await createGrubRig({ dir: await mkdtemp(join(dir, 'odd-')), firmware: 'bios', filesystem: 'fat' });
  t.deepEqual(await runOddEnvs(t, rig), EXPECTED_ODD_ENVS);
});

bootTest('GRUB BIOS: a trial whose spent try cannot be saved (full grubenv) is not started: the other slot boots, the env stays', need, async (t) => {
  const rig = await createGrubRig({ dir: await mkdtemp(join(dir, 'full-')), firmware: 'bios', filesystem: 'fat' });
  const vars = new Map([
    [VAR.active, 'B'],
    [VAR.trial, '1'],
    [VAR.tries, '3'],
    [VAR.good.A, '1'],
    [VAR.good.B, '0'],
    ['filler', ''],
  ]);
  // A variable outside the script's whitelist fills the block exactly: TANDEM_BOOTED no longer fits.
  const free = serializeGrubEnv(vars).toString('latin1').match(/#*$/)![0].length;
  vars.set('filler', 'x'.repeat(free));
  const full = serializeGrubEnv(vars);
  t.false(full.includes('##', 1000), 'the block is full');
  await writeFile(rig.hostEnv, full);
  // decideBoot assumes the bootloader's write succeeds; this failure is the one thing it cannot model (agent/boot/README.md).
  t.is(decideBoot(parseGrubEnv(full)).boot, 'B');
  await rig.push();
  const run = await rig.boot();
  await rig.pull();
  t.like(tandemBootLine(run.console), { slot: 'A' });
  t.is(osSlot(run.console), 'A');
  t.deepEqual(tandemWarnings(run.console), ['save_env failed, trial of B not started']);
  t.regex(run.console, /environment block too small/);
  t.deepEqual(await readFile(rig.hostEnv), full, 'nothing written: the try is still there for a boot that can count it');
});
