/**
 * Boot control in a U-Boot environment (the fw_setenv format), one copy or two
 * redundant ones, in files or at offsets of a block device — what a line of
 * fw_env.config describes. Always written in place: these live on raw MMC or
 * FAT, where rename is impossible or not crash-safe. With two copies
 * that is safe anyway: only the older copy is overwritten.
 *
 * No lock is taken: unlike fw_setenv (which flocks /var/lock/fw_printenv.lock)
 * the agent is meant to be the env's only writer while it runs.
 */
import { open } from 'node:fs/promises';
import { writeInPlaceDurable } from '../../shared/durable-write.ts';
import { TandemError, isTandemError } from '../../shared/errors.ts';
import { EnvBootControl } from './env-boot-control.ts';
import type { EnvStore } from './env-boot-control.ts';
import type { BootVars } from './boot-vars.ts';
import { UBOOT_ENV_DEFAULT_SIZE, parseUBootEnv, planUBootEnvWrite } from './uboot-env.ts';
import type { UBootEnv } from './uboot-env.ts';

export interface UBootEnvCopyConfig {
  /**
   * A file (uboot.env on the boot partition) or a block device (/dev/mmcblk0boot1).
   * Not an MTD flash device: those need an erase before a write, which this backend does not do.
   */
  path: string;
  /** Byte offset of the copy in `path` (default 0). */
  offset?: number;
}

export interface UBootBootControlConfig {
  kind: 'uboot';
  /** One copy, or two for a redundant environment: the lines of fw_env.config. */
  copies: UBootEnvCopyConfig[];
  /** Bytes per copy (default 0x4000). */
  size?: number;
}

export class UBootEnvStore implements EnvStore {
  readonly size: number;

  constructor(readonly copies: readonly UBootEnvCopyConfig[], size: number = UBOOT_ENV_DEFAULT_SIZE) {
    if (copies.length !== 1 && copies.length !== 2) {
      throw new TandemError('ERR_BOOTENV_CONFIG', `A U-Boot environment has 1 or 2 copies, not ${copies.length}.`);
    }
    this.size = size;
  }

  async load(): Promise<Map<string, string>> {
    return (await this.readEnv()).vars;
  }

  async save(vars: BootVars): Promise<void> {
    // Re-read, never cached: which copy is current decides which one we may overwrite, and fw_setenv may have run since.
    let previous: UBootEnv | undefined;
    try {
      previous = await this.readEnv();
    } catch (err) {
      if (!isTandemError(err, 'ERR_BOOTENV_MISSING') && !isTandemError(err, 'ERR_BOOTENV_CORRUPT')) throw err;
    }
    const writes = planUBootEnvWrite(vars, previous, { size: this.size, redundant: this.copies.length === 2 });
    // One after the other, each fsynced: the order is what keeps a valid copy through a power cut.
    for (const { copy, image } of writes) {
      const target = this.copies[copy];
      if (target === undefined) throw new TandemError('ERR_BOOTENV_CONFIG', `No U-Boot environment copy ${copy} configured.`);
      await writeInPlaceDurable(target.path, image, { offset: target.offset ?? 0 });
    }
  }

  private async readEnv(): Promise<UBootEnv> {
    const images = await Promise.all(this.copies.map((copy) => this.readCopy(copy)));
    if (images.every((image) => image === 'missing')) {
      throw new TandemError('ERR_BOOTENV_MISSING', `${this.copies.map((c) => c.path).join(' and ')}: no U-Boot environment.`);
    }
    return parseUBootEnv(images.map((image) => (image === 'missing' ? null : image)), { size: this.size });
  }

  /** The copy's bytes (short if the file is), or 'missing'. */
  private async readCopy(copy: UBootEnvCopyConfig): Promise<Buffer | 'missing'> {
    let fh;
    try {
      fh = await open(copy.path, 'r');
    } catch (err) {
      if ((err as NodeJS.ErrnoException).code === 'ENOENT') return 'missing';
      throw err;
    }
    try {
      const buf = Buffer.alloc(this.size);
      let got = 0;
      for (;;) {
        const { bytesRead } = await fh.read(buf, got, this.size - got, (copy.offset ?? 0) + got);
        if (bytesRead === 0) break;
        got += bytesRead;
        if (got === this.size) break;
      }
      return buf.subarray(0, got);
    } finally {
      await fh.close();
    }
  }
}

export function createUBootBootControl(config: UBootBootControlConfig): EnvBootControl {
  return new EnvBootControl('uboot', new UBootEnvStore(config.copies, config.size));
}
