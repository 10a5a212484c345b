/**
 * A disk with the real GRUB running agent/boot/grub.cfg, for the QEMU boot
 * tests: BIOS (i386-pc core.img in the MBR gap, SeaBIOS) or UEFI (x86_64-efi
 * as /EFI/BOOT/BOOTX64.EFI, OVMF), grubenv on FAT or ext4 (BOOTLOADERS.md §2).
 */
import type { ExecutionContext } from 'ava';
import { execFile } from 'node:child_process';
import { copyFile, readFile, rm, writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import { promisify } from 'node:util';
import { createBootControl } from '../../agent/boot-control/index.ts';
import type { BootVars } from '../../agent/boot-control/boot-vars.ts';
import { parseGrubEnv, serializeGrubEnv } from '../../agent/boot-control/grub-env.ts';
import { ext4Read, ext4Write, fatDelete, fatRead, fatWrite, firstPartition, makeExt4Image, makeFatImage, writeMbrDisk } from './disk-image.ts';
import type { EnvBootRig } from './env-boot-cycle.ts';
import { runQemu } from './qemu-run.ts';

const exec = promisify(execFile);

export const GRUB_CFG = new URL('../../agent/boot/grub.cfg', import.meta.url).pathname;
export const OVMF_CODE = '/usr/share/OVMF/OVMF_CODE_4M.fd';
export const OVMF_VARS = '/usr/share/OVMF/OVMF_VARS_4M.fd';
const GRUB_I386 = '/usr/lib/grub/i386-pc';
export const GRUB_BIOS_FILES = [`${GRUB_I386}/boot.img`, `${GRUB_I386}/normal.mod`];
export const GRUB_EFI_FILES = ['/usr/lib/grub/x86_64-efi/normal.mod', OVMF_CODE, OVMF_VARS];

// Only what the scripts use: no kernel loaders, no menu graphics.
const MODULES = ['part_msdos', 'normal', 'configfile', 'loadenv', 'echo', 'test', 'serial', 'terminal', 'halt', 'sleep'];

// -nodefaults: no VGA, CD-ROM or NIC for the firmware to probe; the serial port is given explicitly.

/**
 * The board's grub.cfg around the Tandem script, as agent/boot/README.md says
 * to install it: source tandem.cfg, then one menu entry per slot with the id
 * the script selects. Each entry is the stand-in "OS": it reports its slot and
 * powers off. timeout=0 makes GRUB start `default` at once, so what boots is
 * what the script chose through GRUB's own menu code, not a test-side echo.
 * The echo after each marker is padding against output cut by the power-off.
 */
const BOARD_CFG = `serial --unit=0 --speed=115200
terminal_input serial
terminal_output serial
set timeout=0
source "\${prefix}/tandem.cfg"
menuentry "Appliance (slot A)" --id tandem-A {
  echo "TANDEM OS slot=A"
  echo
  halt
}
menuentry "Appliance (slot B)" --id tandem-B {
  echo "TANDEM OS slot=B"
  echo
  halt
}
`;

export interface GrubRigOptions {
  dir: string;
  firmware: 'bios' | 'efi';
  filesystem: 'fat' | 'ext4';
}

export async function createGrubRig(options: GrubRigOptions): Promise<EnvBootRig> {
  const { dir, firmware, filesystem } = options;
  if (firmware === 'efi' && filesystem !== 'fat') throw new Error('UEFI boots from a FAT partition');
  const disk = join(dir, 'disk.img');
  const part = firstPartition(disk);
  const hostEnv = join(dir, 'grubenv');
  const envInside = '/boot/grub/grubenv';
  const files: Record<string, string | Uint8Array> = {
    '/boot/grub/grub.cfg': Buffer.from(BOARD_CFG),
    '/boot/grub/tandem.cfg': GRUB_CFG,
  };

  let qemu: { binary: string; args: string[]; timeoutMs: number };
  if (firmware === 'bios') {
    const core = join(dir, 'core.img');
    const fsModule = filesystem === 'fat' ? 'fat' : 'ext2';
    await exec('grub-mkimage', ['-O', 'i386-pc', '-o', core, '-p', '(hd0,msdos1)/boot/grub', 'biosdisk', fsModule, ...MODULES]);
    const partImage = join(dir, 'part.img');
    if (filesystem === 'fat') await makeFatImage(partImage, 16, files);
    else await makeExt4Image(partImage, 16, files);
    await writeMbrDisk(disk, {
      bootCode: await readFile(`${GRUB_I386}/boot.img`),
      gap: await readFile(core),
      partitions: [{ type: filesystem === 'fat' ? 0x06 : 0x83, bootable: true, image: partImage }],
    });
    await rm(partImage);
    qemu = { binary: 'qemu-system-x86_64', args: ['-nodefaults', '-m', '128', '-drive', `file=${disk},format=raw,if=ide`], timeoutMs: 60_000 };
  } else {
    const efi = join(dir, 'BOOTX64.EFI');
    // No device in -p: GRUB-EFI takes the partition it was loaded from.
    await exec('grub-mkimage', ['-O', 'x86_64-efi', '-o', efi, '-p', '/boot/grub', 'part_gpt', 'fat', ...MODULES]);
    const partImage = join(dir, 'part.img');
    await makeFatImage(partImage, 16, { ...files, '/EFI/BOOT/BOOTX64.EFI': efi });
    await writeMbrDisk(disk, { partitions: [{ type: 0xef, image: partImage }] });
    await rm(partImage);
    const vars = join(dir, 'OVMF_VARS.fd');
    await copyFile(OVMF_VARS, vars);
    qemu = {
      binary: 'qemu-system-x86_64',
      args: [
        '-nodefaults',
        '-m', '256',
        '-drive', `if=pflash,format=raw,readonly=on,file=${OVMF_CODE}`,
        '-drive', `if=pflash,format=raw,file=${vars}`,
        '-drive', `file=${disk},format=raw,if=ide`,
      ],
      timeoutMs: 120_000,
    };
  }

  return {
    // On FAT the agent writes in place (rename is not crash-safe there); on ext4 it renames.
    control: createBootControl({ kind: 'grub', path: hostEnv, inPlace: filesystem === 'fat' }),
    hostEnv,
    decode: (bytes) => parseGrubEnv(bytes),
    encode: (vars) => serializeGrubEnv(vars),
    checkSaved(t: ExecutionContext, after: Buffer, expected: BootVars, step: string) {
      // GRUB's save_env replaces variables in place and appends new ones in argument order:
      // the block must be exactly the one the agent's codec makes from decideBoot's env.
      t.deepEqual(after.toString('latin1'), serializeGrubEnv(expected).toString('latin1'), `${step}: the grubenv GRUB saved`);
    },
    async push() {
      const bytes = await readFile(hostEnv).catch(() => null);
      if (filesystem === 'ext4') return ext4Write(part, envInside, bytes);
      if (bytes !== null) return fatWrite(part, envInside, bytes);
      if ((await fatRead(part, envInside)) !== null) await fatDelete(part, envInside);
    },
    async pull() {
      const bytes = filesystem === 'ext4' ? await ext4Read(part, envInside) : await fatRead(part, envInside);
      if (bytes === null) await rm(hostEnv, { force: true });
      else await writeFile(hostEnv, bytes);
    },
    boot: () => runQemu(qemu.binary, qemu.args, qemu.timeoutMs),
  };
}
