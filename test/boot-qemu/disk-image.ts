/**
 * Disk images for the QEMU boot tests, built and read back without mounting
 * (no root, no loop devices): an MBR written here, FAT filesystems made by
 * mkfs.fat and edited with mtools, ext4 made by mkfs.ext4 -d and edited with
 * debugfs (BOOTLOADERS.md §2).
 */
import { execFile } from 'node:child_process';
import { open, readFile, rm, stat, writeFile } from 'node:fs/promises';
import { dirname, join } from 'node:path';
import { promisify } from 'node:util';

const exec = promisify(execFile);

/** Partitions start at 1 MiB, as fdisk aligns them; the gap below holds GRUB's core.img. */
export const PARTITION_OFFSET = 1024 * 1024;
const SECTOR = 512;

export interface MbrPartition {
  /** MBR type byte: 0x06 FAT16, 0x0c FAT32 LBA, 0x83 Linux, 0xef EFI system. */
  type: number;
  bootable?: boolean;
  /** The filesystem image copied in. */
  image: string;
}

export interface MbrDisk {
  /** Boot code for the first 440 bytes of sector 0 (GRUB's boot.img); zeros otherwise. */
  bootCode?: Uint8Array;
  /** Bytes written from sector 1 on, in the gap before the first partition (GRUB's core.img). */
  gap?: Uint8Array;
  partitions: MbrPartition[];
}

/** Writes `path`: an MBR, the gap, then each partition's image at the next MiB boundary. */
export async function writeMbrDisk(path: string, disk: MbrDisk): Promise<void> {
  const mbr = Buffer.alloc(SECTOR);
  if (disk.bootCode) Buffer.from(disk.bootCode.subarray(0, 440)).copy(mbr, 0);
  if (disk.gap && SECTOR + disk.gap.length > PARTITION_OFFSET) throw new Error(`gap of ${disk.gap.length} bytes does not fit below 1 MiB`);
  if (disk.partitions.length > 4) throw new Error('an MBR holds 4 primary partitions');
  const fh = await open(path, 'w');
  try {
    let at = PARTITION_OFFSET;
    for (const [i, part] of disk.partitions.entries()) {
      const size = (await stat(part.image)).size;
      if (size % SECTOR !== 0) throw new Error(`${part.image}: ${size} bytes is not a whole number of sectors`);
      const entry = 446 + 16 * i;
      mbr[entry] = part.bootable ? 0x80 : 0x00;
      // CHS fields "beyond 8 GiB": every firmware here addresses by LBA.
      mbr.set([0xfe, 0xff, 0xff], entry + 1);
      mbr[entry + 4] = part.type;
      mbr.set([0xfe, 0xff, 0xff], entry + 5);
      mbr.writeUInt32LE(at / SECTOR, entry + 8);
      mbr.writeUInt32LE(size / SECTOR, entry + 12);
      await fh.write(await readFile(part.image), 0, size, at);
      at += Math.ceil(size / PARTITION_OFFSET) * PARTITION_OFFSET;
    }
    mbr.writeUInt16LE(0xaa55, 510);
    await fh.write(mbr, 0, SECTOR, 0);
    if (disk.gap) await fh.write(disk.gap, 0, disk.gap.length, SECTOR);
    await fh.truncate(at);
  } finally {
    await fh.close();
  }
}

// mtools checks the geometry of a raw image against its boot sector; ours have none worth checking.
const MTOOLS_ENV = { ...process.env, MTOOLS_SKIP_CHECK: '1' };

/** A partition inside a disk image, as mtools and debugfs address it (byte offset, no mounting). */
export interface PartitionRef {
  disk: string;
  offset: number;
}

export const firstPartition = (disk: string): PartitionRef => ({ disk, offset: PARTITION_OFFSET });
const mtoolsImage = (p: PartitionRef) => `${p.disk}@@${p.offset}`;

/**
 * A FAT16 filesystem image of `sizeMiB` holding `files` (path inside → host
 * file or bytes), folders created as needed.
 */
export async function makeFatImage(image: string, sizeMiB: number, files: Record<string, string | Uint8Array>): Promise<void> {
  await rm(image, { force: true });
  await exec('mkfs.fat', ['-F', '16', '-n', 'TANDEM', '-C', image, String(sizeMiB * 1024)]);
  const ref = { disk: image, offset: 0 };
  for (const [inside, content] of Object.entries(files)) await fatWrite(ref, inside, content);
}

/** Creates or overwrites one file (and its folders) on a FAT partition. */
export async function fatWrite(part: PartitionRef, inside: string, content: string | Uint8Array): Promise<void> {
  const folders = inside.split('/').filter(Boolean).slice(0, -1);
  for (let i = 1; i <= folders.length; i++) {
    const folder = `::/${folders.slice(0, i).join('/')}`;
    // mmd fails on an existing folder (whatever its -D says): then the folder is there, which is all we need.
    await exec('mmd', ['-i', mtoolsImage(part), folder], { env: MTOOLS_ENV }).catch(async (err: unknown) => {
      await exec('mdir', ['-b', '-i', mtoolsImage(part), `${folder}/`], { env: MTOOLS_ENV }).catch(() => {
        throw err;
      });
    });
  }
  const source = typeof content === 'string' ? content : await stageBytes(part, content);
  try {
    await exec('mcopy', ['-o', '-i', mtoolsImage(part), source, `::/${inside.replace(/^\/+/, '')}`], { env: MTOOLS_ENV });
  } finally {
    if (source !== content) await rm(source, { force: true });
  }
}

/** A file's bytes from a FAT partition, or null when it does not exist. */
export async function fatRead(part: PartitionRef, inside: string): Promise<Buffer | null> {
  const out = `${part.disk}.read-${process.pid}-${Math.random().toString(16).slice(2)}`;
  try {
    await exec('mcopy', ['-n', '-i', mtoolsImage(part), `::/${inside.replace(/^\/+/, '')}`, out], { env: MTOOLS_ENV });
    return await readFile(out);
  } catch (err) {
    if (/not found/i.test(String((err as { stderr?: string }).stderr))) return null;
    throw err;
  } finally {
    await rm(out, { force: true });
  }
}

export async function fatDelete(part: PartitionRef, inside: string): Promise<void> {
  await exec('mdel', ['-i', mtoolsImage(part), `::/${inside.replace(/^\/+/, '')}`], { env: MTOOLS_ENV });
}

/** Names in a FAT folder (long names, as the firmware and Linux see them), sorted; none if it does not exist. */
export async function fatList(part: PartitionRef, folder: string): Promise<string[]> {
  // -b: bare listing, one full path per line (long names).
  let stdout: string;
  try {
    ({ stdout } = await exec('mdir', ['-b', '-i', mtoolsImage(part), `::/${folder.replace(/^\/+|\/+$/g, '')}/`], { env: MTOOLS_ENV }));
  } catch (err) {
    if (/not found/i.test(String((err as { stderr?: string }).stderr))) return [];
    throw err;
  }
  return stdout
    .split('\n')
    .map((line) => line.trim())
    .filter(Boolean)
    .map((line) => line.slice(line.lastIndexOf('/') + 1))
    .filter((name) => name !== '.' && name !== '..')
    .sort();
}

/** An ext4 image of `sizeMiB` holding `files`, made by mkfs.ext4 -d from a staging folder beside it. */
export async function makeExt4Image(image: string, sizeMiB: number, files: Record<string, string | Uint8Array>): Promise<void> {
  const staging = `${image}.staging`;
  await rm(staging, { recursive: true, force: true });
  for (const [inside, content] of Object.entries(files)) {
    const target = join(staging, inside);
    await exec('mkdir', ['-p', dirname(target)]);
    await writeFile(target, typeof content === 'string' ? await readFile(content) : content);
  }
  await rm(image, { force: true });
  // No inline_data (GRUB's save_env needs the file in data blocks of its own); -d fills it without mounting.
  await exec('mkfs.ext4', ['-q', '-F', '-O', '^inline_data', '-L', 'tandem', '-d', staging, image, `${sizeMiB}M`]);
  await rm(staging, { recursive: true, force: true });
}

const debugfsImage = (p: PartitionRef) => `${p.disk}?offset=${p.offset}`;

/** A file's bytes from an ext4 partition, or null when it does not exist. */
export async function ext4Read(part: PartitionRef, inside: string): Promise<Buffer | null> {
  const out = `${part.disk}.read-${process.pid}-${Math.random().toString(16).slice(2)}`;
  try {
    const { stderr } = await exec('debugfs', ['-R', `dump ${inside} ${out}`, debugfsImage(part)]);
    if (/File not found/i.test(stderr)) return null;
    return await readFile(out);
  } finally {
    await rm(out, { force: true });
  }
}

/** Replaces (or deletes, with null) one file on an ext4 partition: debugfs rm, then write. */
export async function ext4Write(part: PartitionRef, inside: string, content: Uint8Array | null): Promise<void> {
  const folder = dirname(inside);
  const name = inside.slice(folder.length + 1);
  const source = content === null ? null : await stageBytes(part, content);
  // debugfs reports a missing file on stderr with rc 0: the rm of an absent file is harmless.
  const commands = await stageBytes(part, Buffer.from([`cd ${folder}`, `rm ${name}`, ...(source === null ? [] : [`write ${source} ${name}`]), ''].join('\n')));
  try {
    await exec('debugfs', ['-w', '-f', commands, debugfsImage(part)]);
  } finally {
    await rm(commands, { force: true });
    if (source !== null) await rm(source, { force: true });
  }
}

async function stageBytes(part: PartitionRef, content: Uint8Array): Promise<string> {
  const path = `${part.disk}.stage-${process.pid}-${Math.random().toString(16).slice(2)}`;
  await writeFile(path, content);
  return path;
}
