/**
 * The real GRUB built for UEFI (x86_64-efi, /EFI/BOOT/BOOTX64.EFI) under OVMF
 * in QEMU/TCG, running agent/boot/grub.cfg with grubenv on the FAT ESP: the
 * same A/B cycle as the BIOS build, once (about 3.3 s a boot: OVMF is the slow part).
 */
import test from 'ava';
import { mkdtemp, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { bootTest } from './boot-test.ts';
import { EXPECTED_ENV_CYCLE, runEnvCycle, timingSummary } from './env-boot-cycle.ts';
import { GRUB_EFI_FILES, createGrubRig } from './grub-rig.ts';

let dir = '';
test.before(async () => {
  dir = await mkdtemp(join(tmpdir(), 'tandem-boot-qemu-grub-efi-'));
});
test.after.always(async () => {
  await rm(dir, { recursive: true, force: true });
});

bootTest(
  'GRUB UEFI (OVMF), grubenv on the ESP: every real boot does what decideBoot predicts, through the whole A/B cycle',
  {
    commands: ['qemu-system-x86_64', 'grub-mkimage', 'mkfs.fat', 'mcopy'],
    files: GRUB_EFI_FILES,
    packages: 'qemu-system-x86 ovmf grub-efi-amd64-bin grub-common mtools dosfstools',
  },
  async (t) => {
    const rig = await createGrubRig({ dir: await mkdtemp(join(dir, 'cycle-')), firmware: 'efi', filesystem: 'fat' });
    const { records, times } = await runEnvCycle(t, rig);
    t.deepEqual(records, EXPECTED_ENV_CYCLE);
    t.log(timingSummary('GRUB UEFI', times));
  },
);
