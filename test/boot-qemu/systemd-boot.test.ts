/**
 * The real systemd-boot (systemd-bootx64.efi from systemd-boot-efi) under OVMF
 * in QEMU/TCG, with the agent's systemd-boot backend renaming the slots' entries
 * between boots: at every boot, chooseSystemdBootEntry (the backend's model of
 * systemd-boot) must predict the entry systemd-boot started and the name it
 * renamed the entry to. Each slot's "OS" is a tiny GRUB EFI image that prints
 * its slot and the entry names it sees, then powers off. About 3.5 s a boot.
 */
import test from 'ava';
import type { ExecutionContext } from 'ava';
import { execFile } from 'node:child_process';
import { copyFile, mkdir, mkdtemp, readFile, readdir, rm, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { promisify } from 'node:util';
import { createBootControl } from '../../agent/boot-control/index.ts';
import type { BootControl } from '../../agent/boot-control/index.ts';
import { LOADER_GUID, chooseSystemdBootEntry, slotOfEntryId } from '../../agent/boot-control/systemd-boot-backend.ts';
import { bootTest } from './boot-test.ts';
import { fatDelete, fatList, fatRead, fatWrite, firstPartition, makeFatImage, writeMbrDisk } from './disk-image.ts';
import type { PartitionRef } from './disk-image.ts';
import { describeState, timingSummary } from './env-boot-cycle.ts';
import { OVMF_CODE, OVMF_VARS } from './grub-rig.ts';
import { osSlot, runQemu } from './qemu-run.ts';

const exec = promisify(execFile);
const SYSTEMD_BOOT = '/usr/lib/systemd/boot/efi/systemd-bootx64.efi';
const ENTRIES = 'loader/entries';

let dir = '';
test.before(async () => {
  dir = await mkdtemp(join(tmpdir(), 'tandem-boot-qemu-systemd-'));
});
test.after.always(async () => {
  await rm(dir, { recursive: true, force: true });
});

/**
 * The stand-in OS of one slot: GRUB EFI with an embedded script (no normal
 * mode, no kernel). It lists the entries folder as it finds it on starting,
 * which shows systemd-boot renamed the entry before starting it.
 */
async function stubOs(workdir: string, slot: string): Promise<string> {
  const cfg = join(workdir, `os-${slot}.cfg`);
  const out = join(workdir, `os-${slot}.efi`);
  await writeFile(
    cfg,
    `serial --unit=0 --speed=115200
terminal_output serial
echo "TANDEM OS slot=${slot.toUpperCase()}"
echo "TANDEM ENTRIES"
ls /${ENTRIES}/
echo
echo "TANDEM END"
echo
halt
`,
  );
  await exec('grub-mkimage', ['-O', 'x86_64-efi', '-o', out, '-c', cfg, '-p', '/', 'part_msdos', 'fat', 'ls', 'echo', 'serial', 'terminal', 'halt']);
  return out;
}

interface Rig {
  esp: string;
  efivars: string;
  part: PartitionRef;
  control: BootControl;
  boot(): Promise<{ console: string; ms: number }>;
}

async function createRig(workdir: string): Promise<Rig> {
  // The host's copy of the ESP, as the agent sees it mounted; the disk image gets its entries before each boot.
  const esp = join(workdir, 'esp');
  await mkdir(join(esp, ENTRIES), { recursive: true });
  await mkdir(join(esp, 'EFI', 'tandem'), { recursive: true });
  const files: Record<string, string | Uint8Array> = {
    '/EFI/BOOT/BOOTX64.EFI': SYSTEMD_BOOT,
    // timeout 0: no menu, start the default at once; no `default` line, which would pin an entry, bad or not.
    '/loader/loader.conf': Buffer.from('timeout 0\neditor no\n'),
  };
  for (const slot of ['a', 'b']) {
    const image = await stubOs(workdir, slot);
    await copyFile(image, join(esp, 'EFI', 'tandem', `os-${slot}.efi`));
    files[`/EFI/tandem/os-${slot}.efi`] = image;
  }
  // As the installer leaves them: A good; B's entry present, its slot empty, so marked bad.
  await writeFile(join(esp, ENTRIES, 'tandem-1-a.conf'), 'title Appliance (slot A)\nefi /EFI/tandem/os-a.efi\n');
  await writeFile(join(esp, ENTRIES, 'tandem-0-b+0.conf'), 'title Appliance (slot B)\nefi /EFI/tandem/os-b.efi\n');
  const partImage = join(workdir, 'part.img');
  await makeFatImage(partImage, 16, files);
  const disk = join(workdir, 'disk.img');
  await writeMbrDisk(disk, { partitions: [{ type: 0xef, image: partImage }] });
  await rm(partImage);
  const vars = join(workdir, 'OVMF_VARS.fd');
  await copyFile(OVMF_VARS, vars);
  const efivars = join(workdir, 'efivars');
  await mkdir(efivars);
  return {
    esp,
    efivars,
    part: firstPartition(disk),
    control: createBootControl({ kind: 'systemd-boot', esp, efivars }),
    boot: () =>
      runQemu(
        'qemu-system-x86_64',
        [
          '-nodefaults', '-m', '256',
          '-drive', `if=pflash,format=raw,readonly=on,file=${OVMF_CODE}`,
          '-drive', `if=pflash,format=raw,file=${vars}`,
          '-drive', `file=${disk},format=raw,if=ide`,
        ],
        120_000,
      ),
  };
}

const hostEntries = async (rig: Rig) => (await readdir(join(rig.esp, ENTRIES))).sort();

/** Makes the image's entries folder hold exactly `names`, with the host's content. */
async function pushEntries(rig: Rig): Promise<void> {
  const want = await hostEntries(rig);
  for (const name of await fatList(rig.part, ENTRIES)) if (!want.includes(name)) await fatDelete(rig.part, `${ENTRIES}/${name}`);
  for (const name of want) await fatWrite(rig.part, `${ENTRIES}/${name}`, await readFile(join(rig.esp, ENTRIES, name)));
}

/** Makes the host's entries folder what the bootloader left on the image. */
async function pullEntries(rig: Rig): Promise<string[]> {
  const names = await fatList(rig.part, ENTRIES);
  for (const name of await hostEntries(rig)) if (!names.includes(name)) await rm(join(rig.esp, ENTRIES, name));
  for (const name of names) await writeFile(join(rig.esp, ENTRIES, name), (await fatRead(rig.part, `${ENTRIES}/${name}`))!);
  return names;
}

/**
 * One real boot. Asserts that systemd-boot started the entry
 * chooseSystemdBootEntry predicts, renamed it as predicted before starting it,
 * and touched nothing else. Then it hands the agent the id of the started entry
 * in LoaderEntrySelected — the one thing faked here: that variable is volatile,
 * it lives in the guest's efivarfs, and the stand-in OS cannot read it.
 */
async function bootAndCheck(t: ExecutionContext, rig: Rig, step: string, times: number[]): Promise<string> {
  const before = await hostEntries(rig);
  const predicted = chooseSystemdBootEntry(before)!;
  const expectedAfter = before.map((f) => (f === predicted.file ? predicted.renamedTo ?? f : f)).sort();
  await pushEntries(rig);
  const run = await rig.boot();
  times.push(run.ms);
  const after = await pullEntries(rig);
  const slot = slotOfEntryId(predicted.id);
  t.is(osSlot(run.console), slot, `${step}: the slot systemd-boot started (predicted ${predicted.file})`);
  t.deepEqual(after, expectedAfter, `${step}: the entry names systemd-boot left`);
  const seen = /TANDEM ENTRIES\n([\s\S]*?)TANDEM END/.exec(run.console)?.[1]?.split(/\s+/).filter(Boolean).sort();
  t.deepEqual(seen, expectedAfter, `${step}: the OS already sees the renamed entry (renamed before the start)`);
  const attrs = Buffer.alloc(4);
  attrs.writeUInt32LE(0x6); // BOOTSERVICE_ACCESS | RUNTIME_ACCESS, not NON_VOLATILE
  await writeFile(join(rig.efivars, `LoaderEntrySelected-${LOADER_GUID}`), Buffer.concat([attrs, Buffer.from(`${predicted.id}\0`, 'utf16le')]));
  return `${step}: ${osSlot(run.console)} ${predicted.file}→${predicted.renamedTo ?? '-'} | ${describeState(await rig.control.read())}`;
}

bootTest(
  'systemd-boot (OVMF): boot counting in entry names, driven by the agent\'s systemd-boot backend through the A/B cycle',
  {
    commands: ['qemu-system-x86_64', 'grub-mkimage', 'mkfs.fat', 'mcopy'],
    files: [SYSTEMD_BOOT, OVMF_CODE, OVMF_VARS, '/usr/lib/grub/x86_64-efi/normal.mod'],
    packages: 'systemd-boot-efi qemu-system-x86 ovmf grub-efi-amd64-bin grub-common mtools dosfstools',
  },
  async (t) => {
    const rig = await createRig(await mkdtemp(join(dir, 'cycle-')));
    const times: number[] = [];
    const records: string[] = [];
    const boot = async (step: string) => records.push(await bootAndCheck(t, rig, step, times));
    await rig.control.markGood('A');
    await boot('provisioned');
    await rig.control.setTrial('B', 2); // update 1: B never confirmed
    await boot('trial 1/2');
    await boot('trial 2/2');
    await boot('tries spent');
    await rig.control.setTrial('B', 2); // update 2: B confirmed
    await boot('trial 1/2 again');
    await rig.control.markGood('B');
    await boot('confirmed');
    await rig.control.setTrial('A', 2); // update 3: A rejected by the agent
    await boot('trial A');
    await rig.control.markBad('A');
    await boot('rejected');
    t.deepEqual(records, [
      'provisioned: A tandem-1-a.conf→- | A>A trial=- good=10',
      'trial 1/2: B tandem-2-b+2.conf→tandem-2-b+1-1.conf | B>B trial=1 good=10',
      'trial 2/2: B tandem-2-b+1-1.conf→tandem-2-b+0-2.conf | B>B trial=0 good=10',
      'tries spent: A tandem-1-a.conf→- | A>A trial=- good=10 fb=B',
      'trial 1/2 again: B tandem-3-b+2.conf→tandem-3-b+1-1.conf | B>B trial=1 good=10',
      'confirmed: B tandem-3-b.conf→- | B>B trial=- good=11',
      'trial A: A tandem-4-a+2.conf→tandem-4-a+1-1.conf | A>A trial=1 good=01',
      'rejected: B tandem-3-b.conf→- | B>B trial=- good=01',
    ]);
    t.log(timingSummary('systemd-boot', times));
  },
);
