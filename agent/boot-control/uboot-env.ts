/**
 * The U-Boot environment as fw_printenv/fw_setenv (libubootenv) and U-Boot
 * itself store it (BOOTLOADERS.md §3). Pure: bytes in, bytes out.
 *
 *   single copy:     u32 crc32 (LE) | data[size − 4]
 *   redundant copy:  u32 crc32 (LE) | u8 flags | data[size − 5]   (two copies)
 *   data:            name=value\0 … name=value\0 \0 padding
 *
 * The CRC (zlib's) covers the whole data area with its padding, not the flags.
 * Strings are byte strings (latin1), so unrelated variables survive a rewrite
 * byte for byte.
 */
import { crc32 } from 'node:zlib';
import { TandemError } from '../../shared/errors.ts';

/** 16 KiB: what BOOTLOADERS.md's FAT-file env uses (`env export -c -s 0x4000`). */
export const UBOOT_ENV_DEFAULT_SIZE = 0x4000;

export interface UBootEnvLayout {
  /** Bytes per copy, header included (fw_env.config's ENVSIZE). */
  size?: number;
  /** Two copies with a flags byte each (CONFIG_SYS_REDUNDAND_ENVIRONMENT). */
  redundant?: boolean;
}

export interface UBootEnv {
  vars: Map<string, string>;
  /** The copy read (always 0 for a single copy). */
  current: 0 | 1;
  /** The current copy's flags byte (redundant only). */
  flags?: number;
}

/** One copy's image, padded with `pad` (0xff, mkenvimage's default and erased flash). */
export function serializeUBootEnv(
  vars: ReadonlyMap<string, string>,
  options: UBootEnvLayout & { flags?: number; pad?: number } = {},
): Buffer {
  const size = checkSize(options.size);
  const header = options.redundant ? 5 : 4;
  const image = Buffer.alloc(size, options.pad ?? 0xff);
  // Sorted by bytes, as libubootenv and U-Boot's `env export` write them, so our output is theirs.
  const entries = [...vars].sort(([a], [b]) => Buffer.compare(Buffer.from(a, 'latin1'), Buffer.from(b, 'latin1')));
  let at = header;
  for (const [name, value] of entries) {
    if (name === '' || name.includes('=') || /[\0\u0100-\uffff]/.test(name) || /[\0\u0100-\uffff]/.test(value)) {
      throw new TandemError('ERR_BOOTENV_INVALID', `U-Boot variable ${JSON.stringify(name)} has an invalid name or value.`, {
        details: { name },
      });
    }
    const entry = `${name}=${value}\0`;
    // +1 keeps room for the terminating empty string.
    if (at + entry.length + 1 > size) {
      throw new TandemError('ERR_BOOTENV_TOO_LARGE', `U-Boot environment does not fit in ${size} bytes.`, { details: { size } });
    }
    at += image.write(entry, at, 'latin1');
  }
  image[at] = 0;
  if (options.redundant) image[4] = (options.flags ?? 1) & 0xff;
  image.writeUInt32LE(crc32(image.subarray(header)), 0);
  return image;
}

/**
 * Read one copy (size bytes, redundant or not). Throws ERR_BOOTENV_CORRUPT on a
 * bad CRC, or data without its terminating empty string (libubootenv: EIO).
 * Entries without '=' are skipped, as libubootenv does.
 */
export function parseUBootEnvCopy(image: Uint8Array, options: UBootEnvLayout = {}): { vars: Map<string, string>; flags?: number } {
  const size = checkSize(options.size);
  if (image.length !== size) {
    throw new TandemError('ERR_BOOTENV_CORRUPT', `U-Boot environment copy is ${image.length} bytes, expected ${size}.`, {
      details: { size: image.length, expected: size },
    });
  }
  const buf = Buffer.from(image.buffer, image.byteOffset, image.length);
  const header = options.redundant ? 5 : 4;
  const data = buf.subarray(header);
  if (buf.readUInt32LE(0) !== crc32(data)) {
    throw new TandemError('ERR_BOOTENV_CORRUPT', 'U-Boot environment has a bad CRC.');
  }
  const vars = new Map<string, string>();
  let at = 0;
  while (data[at] !== 0) {
    const nul = data.indexOf(0, at);
    if (nul < 0) {
      throw new TandemError('ERR_BOOTENV_CORRUPT', 'U-Boot environment data is not terminated.');
    }
    const entry = data.toString('latin1', at, nul);
    const eq = entry.indexOf('=');
    if (eq > 0) vars.set(entry.slice(0, eq), entry.slice(eq + 1));
    at = nul + 1;
  }
  return options.redundant ? { vars, flags: buf[4] ?? 0 } : { vars };
}

/**
 * The environment from one copy (single) or two (redundant), null standing for
 * a copy that could not be read. Of two valid copies the one with the newer
 * flags wins, 0 counting as newer than 255 (libubootenv's and U-Boot's rule;
 * equal flags: copy 0). A bad copy is skipped; none valid → ERR_BOOTENV_CORRUPT.
 */
export function parseUBootEnv(copies: readonly (Uint8Array | null)[], options: { size?: number } = {}): UBootEnv {
  if (copies.length !== 1 && copies.length !== 2) {
    throw new TandemError('ERR_BOOTENV_CONFIG', `A U-Boot environment has 1 or 2 copies, not ${copies.length}.`);
  }
  const redundant = copies.length === 2;
  const valid: UBootEnv[] = [];
  const reasons: string[] = [];
  copies.forEach((image, i) => {
    try {
      if (image === null) throw new Error('unreadable');
      valid.push({ ...parseUBootEnvCopy(image, { size: options.size, redundant }), current: i === 0 ? 0 : 1 });
    } catch (err) {
      reasons.push(`copy ${i}: ${(err as Error).message}`);
    }
  });
  const [first, second] = valid;
  if (first === undefined) {
    throw new TandemError('ERR_BOOTENV_CORRUPT', `No valid U-Boot environment copy (${reasons.join('; ')}).`, {
      details: { reasons },
    });
  }
  return second !== undefined && isNewerFlag(second.flags ?? 0, first.flags ?? 0) ? second : first;
}

/** `b` newer than `a`: larger, except that 0 follows 255 (the counter wrapped). */
function isNewerFlag(b: number, a: number): boolean {
  if (a === 0xff && b === 0) return true;
  if (b === 0xff && a === 0) return false;
  return b > a;
}

/**
 * What to write for `vars`, in order: a single copy is overwritten; of two, the
 * one not read is, with flags one past the current copy's (wrapping), so a torn
 * write leaves the current copy valid and chosen. With nothing readable
 * (`previous` undefined) there is nothing to protect: both copies are written,
 * copy 1 first with flags 1, then copy 0 with flags 0, so both exist (libubootenv
 * refuses a config naming a missing file) and copy 1 is current.
 */
export function planUBootEnvWrite(
  vars: ReadonlyMap<string, string>,
  previous: Pick<UBootEnv, 'current' | 'flags'> | undefined,
  options: UBootEnvLayout & { pad?: number } = {},
): { copy: 0 | 1; image: Buffer }[] {
  if (!options.redundant) return [{ copy: 0, image: serializeUBootEnv(vars, options) }];
  if (previous === undefined) {
    return [
      { copy: 1, image: serializeUBootEnv(vars, { ...options, flags: 1 }) },
      { copy: 0, image: serializeUBootEnv(vars, { ...options, flags: 0 }) },
    ];
  }
  const flags = ((previous.flags ?? 0) + 1) & 0xff;
  return [{ copy: previous.current === 0 ? 1 : 0, image: serializeUBootEnv(vars, { ...options, flags }) }];
}

function checkSize(size: number = UBOOT_ENV_DEFAULT_SIZE): number {
  if (!Number.isInteger(size) || size < 8 || size > 0x4000000) {
    throw new TandemError('ERR_BOOTENV_CONFIG', `U-Boot environment size ${size} is out of range.`, { details: { size } });
  }
  return size;
}
