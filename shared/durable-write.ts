/**
 * The one way Tandem makes a file survive power loss (STYLE.md 10). After a cut
 * at any instant a reader finds the old content or the new, never half of it —
 * on filesystems that rename atomically (ext4, xfs, …). FAT cannot, so boot
 * environments on an ESP or a raw device use `writeInPlaceDurable`, and the
 * bootloader's defaults must be safe against the torn write it can leave.
 */
import { randomBytes } from 'node:crypto';
import { open, rename, unlink } from 'node:fs/promises';
import type { FileHandle } from 'node:fs/promises';
import { basename, dirname, join } from 'node:path';

export interface DurableWriteOptions {
  /** File mode of a newly created file (default 0o644). */
  mode?: number;
}

/** The temp files writeFileDurable leaves in `dir` when the process dies between open and rename. */
export function isDurableWriteTemp(name: string): boolean {
  return /^\..+\.\d+\.[0-9a-f]{8}\.tmp$/.test(name);
}

/** Write a temp file beside `path`, fsync it, rename it over `path`, fsync the folder. */
export async function writeFileDurable(path: string, data: Uint8Array | string, options: DurableWriteOptions = {}): Promise<void> {
  const dir = dirname(path);
  // Same folder, so rename never crosses a filesystem; random suffix, so two writers never share a temp file.
  const tmp = join(dir, `.${basename(path)}.${process.pid}.${randomBytes(4).toString('hex')}.tmp`);
  const fh = await open(tmp, 'wx', options.mode ?? 0o644);
  try {
    await writeAll(fh, typeof data === 'string' ? Buffer.from(data, 'utf8') : data, 0);
    await fh.sync();
  } catch (err) {
    await fh.close().catch(() => undefined);
    await unlink(tmp).catch(() => undefined);
    throw err;
  }
  await fh.close();
  try {
    await rename(tmp, path);
  } catch (err) {
    await unlink(tmp).catch(() => undefined);
    throw err;
  }
  // The rename lives in the folder's metadata: without this fsync a power cut can bring the old file back.
  await syncDir(dir);
}

export interface InPlaceWriteOptions extends DurableWriteOptions {
  /** Byte offset of the block in the file or device (a raw-flash U-Boot env lives at an offset). */
  offset?: number;
}

/**
 * Overwrite `data.length` bytes at `offset` in place and fsync, for media where
 * rename is not crash-safe (FAT) or impossible (a block device). The file is
 * never truncated first — grub-editenv's `O_TRUNC` rewrite is what leaves an
 * empty grubenv after a power cut. A missing file is created (and its folder
 * fsynced); a cut before the fsync leaves it short, which a reader must treat
 * like a missing file anyway.
 */
export async function writeInPlaceDurable(path: string, data: Uint8Array, options: InPlaceWriteOptions = {}): Promise<void> {
  let fh: FileHandle;
  let created = false;
  try {
    fh = await open(path, 'r+');
  } catch (err) {
    if ((err as NodeJS.ErrnoException).code !== 'ENOENT') throw err;
    fh = await open(path, 'wx', options.mode ?? 0o644);
    created = true;
  }
  try {
    await writeAll(fh, data, options.offset ?? 0);
    await fh.sync();
  } finally {
    await fh.close();
  }
  if (created) await syncDir(dirname(path));
}

async function writeAll(fh: FileHandle, data: Uint8Array, offset: number): Promise<void> {
  let done = 0;
  while (done < data.length) {
    const { bytesWritten } = await fh.write(data, done, data.length - done, offset + done);
    done += bytesWritten;
  }
}

export async function syncDir(dir: string): Promise<void> {
  const fh = await open(dir, 'r');
  try {
    await fh.sync();
  } finally {
    await fh.close();
  }
}
