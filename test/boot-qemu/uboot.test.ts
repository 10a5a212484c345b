/**
 * The real U-Boot (Debian's u-boot-qemu, qemu_arm64, QEMU -M virt under TCG)
 * running agent/boot/boot.cmd as /boot.scr, with Tandem's env in /tandem.env on
 * the FAT boot partition (env import -c / env export -c + fatwrite: saveenv to
 * the emulated flash is broken in Debian 12's QEMU, BOOTLOADERS.md §3), the file
 * edited between boots by the agent's uboot backend. About 2.2 s a boot.
 */
import test from 'ava';
import type { ExecutionContext } from 'ava';
import { execFile } from 'node:child_process';
import { mkdtemp, readFile, rm, truncate, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { promisify } from 'node:util';
import { createBootControl } from '../../agent/boot-control/index.ts';
import { BOOT_VAR_NAMES } from '../../agent/boot-control/boot-vars.ts';
import type { BootVars } from '../../agent/boot-control/boot-vars.ts';
import { UBOOT_ENV_DEFAULT_SIZE, parseUBootEnvCopy, serializeUBootEnv } from '../../agent/boot-control/uboot-env.ts';
import { bootTest } from './boot-test.ts';
import { fatDelete, fatRead, fatWrite, firstPartition, makeFatImage, writeMbrDisk } from './disk-image.ts';
import { EXPECTED_ENV_CYCLE, EXPECTED_ODD_ENVS, runEnvCycle, runOddEnvs, timingSummary } from './env-boot-cycle.ts';
import type { EnvBootRig } from './env-boot-cycle.ts';
import { runQemu } from './qemu-run.ts';

const exec = promisify(execFile);
const BOOT_CMD = new URL('../../agent/boot/boot.cmd', import.meta.url).pathname;
const UBOOT_BIN = '/usr/lib/u-boot/qemu_arm64/u-boot.bin';

let dir = '';
test.before(async () => {
  dir = await mkdtemp(join(tmpdir(), 'tandem-boot-qemu-uboot-'));
});
test.after.always(async () => {
  await rm(dir, { recursive: true, force: true });
});

/**
 * What the board runs after boot.cmd (agent/boot/README.md: "the board's
 * commands load the kernel of ${tandem_slot}"): here a stand-in "OS" that
 * reports the slot and the bootargs it would get, then powers off (PSCI). The
 * echo after the marker is padding against output cut by the power-off.
 */
const BOARD_TAIL = `
echo "TANDEM OS slot=\${tandem_slot} bootargs=\${bootargs}"
echo
poweroff
`;

/**
 * The board's own environment in the second flash bank (where qemu_arm64 reads
 * it: 64 MiB bank, env at 0, 0x40000 bytes): U-Boot's built-in default env with
 * bootdelay=0 instead of 2, which saves 2 s a boot. Reading it works in this
 * QEMU, only saveenv is broken. Null (no flash, 2 s slower) if the default env
 * cannot be found in this u-boot.bin.
 */
async function writeBoardFlash(path: string): Promise<string | null> {
  const bin = await readFile(UBOOT_BIN);
  const start = bin.indexOf('bootcmd=run distro_bootcmd\0');
  const end = bin.indexOf('\0\0', start);
  if (start < 0 || end < 0) return null;
  const vars = new Map(bin.toString('latin1', start, end).split('\0').map((e): [string, string] => [e.slice(0, e.indexOf('=')), e.slice(e.indexOf('=') + 1)]));
  if (vars.get('bootdelay') === undefined) return null;
  vars.set('bootdelay', '0');
  await writeFile(path, serializeUBootEnv(vars, { size: 0x40000 }));
  await truncate(path, 64 * 1024 * 1024);
  return path;
}

async function createUBootRig(workdir: string): Promise<EnvBootRig> {
  const disk = join(workdir, 'disk.img');
  const part = firstPartition(disk);
  const hostEnv = join(workdir, 'tandem.env');
  const script = join(workdir, 'boot.cmd');
  const scr = join(workdir, 'boot.scr');
  await writeFile(script, (await readFile(BOOT_CMD, 'utf8')) + BOARD_TAIL);
  await exec('mkimage', ['-A', 'arm64', '-O', 'linux', '-T', 'script', '-C', 'none', '-d', script, scr]);
  const partImage = join(workdir, 'part.img');
  await makeFatImage(partImage, 16, { '/boot.scr': scr });
  // Bootable (0x80): distro_bootcmd scans virtio 0's bootable partitions for /boot.scr by itself.
  await writeMbrDisk(disk, { partitions: [{ type: 0x0c, bootable: true, image: partImage }] });
  await rm(partImage);
  const flash = await writeBoardFlash(join(workdir, 'flash1.img'));
  const size = UBOOT_ENV_DEFAULT_SIZE;
  return {
    control: createBootControl({ kind: 'uboot', copies: [{ path: hostEnv }], size }),
    hostEnv,
    decode: (bytes) => parseUBootEnvCopy(bytes, { size }).vars,
    encode: (vars) => serializeUBootEnv(vars, { size }),
    checkSaved(t: ExecutionContext, after: Buffer, expected: BootVars, step: string) {
      // `env export -c` writes the listed variables sorted, as the agent's codec does, padded with zeros.
      // Only the listed ones: anything else in tandem.env is dropped (agent/boot/README.md: keep nothing else there).
      const listed = new Map([...expected].filter(([name]) => BOOT_VAR_NAMES.includes(name)));
      t.deepEqual(after.toString('latin1'), serializeUBootEnv(listed, { size, pad: 0 }).toString('latin1'), `${step}: the env U-Boot saved`);
    },
    async push() {
      const bytes = await readFile(hostEnv).catch(() => null);
      if (bytes !== null) await fatWrite(part, '/tandem.env', bytes);
      else if ((await fatRead(part, '/tandem.env')) !== null) await fatDelete(part, '/tandem.env');
    },
    async pull() {
      const bytes = await fatRead(part, '/tandem.env');
      if (bytes === null) await rm(hostEnv, { force: true });
      else await writeFile(hostEnv, bytes);
    },
    checkConsole(t: ExecutionContext, console: string, slot: string, step: string) {
      t.regex(console, new RegExp(`TANDEM OS slot=${slot} bootargs= tandem\\.slot=${slot}\\n`), `${step}: tandem.slot appended to bootargs`);
    },
    boot: () =>
      runQemu(
        'qemu-system-aarch64',
        [
          '-M', 'virt', '-cpu', 'cortex-a57', '-m', '512', '-bios', UBOOT_BIN,
          ...(flash === null ? [] : ['-drive', `if=pflash,index=1,format=raw,file=${flash}`]),
          '-drive', `if=none,file=${disk},format=raw,id=d0`, '-device', 'virtio-blk-device,drive=d0',
        ],
        60_000,
      ),
  };
}

const need = {
  commands: ['qemu-system-aarch64', 'mkimage', 'mkfs.fat', 'mcopy'],
  files: [UBOOT_BIN],
  packages: 'qemu-system-arm u-boot-qemu u-boot-tools mtools dosfstools',
};

bootTest(
  'U-Boot (qemu_arm64): every real boot of boot.cmd does what decideBoot predicts, through the whole A/B cycle',
  need,
  async (t) => {
    const workdir = await mkdtemp(join(dir, 'cycle-'));
    const rig = await createUBootRig(workdir);
    const boardEnv = () => readFile(join(workdir, 'flash1.img')).then((b) => b.subarray(0, 0x40000), () => null);
    const flash = await boardEnv();
    const { records, times } = await runEnvCycle(t, rig);
    t.deepEqual(records, EXPECTED_ENV_CYCLE);
    if (flash !== null) t.true(flash.equals((await boardEnv())!), "the board's own env (flash) is never written: the script keeps to tandem.env");
    t.log(timingSummary('U-Boot qemu_arm64', times));
  },
);

bootTest(
  'U-Boot (qemu_arm64): envs the agent never writes (odd tries, lowercase slot, unrelated variables) boot as decideBoot predicts',
  need,
  async (t) => {
    const rig = await createUBootRig(await mkdtemp(join(dir, 'odd-')));
    t.deepEqual(await runOddEnvs(t, rig), EXPECTED_ODD_ENVS);
  },
);
