/**
 * Boot control in GRUB's environment block (grubenv), read by agent/boot/grub.cfg
 * with load_env. Variables the agent does not own are kept, in place.
 */
import { writeFileDurable, writeInPlaceDurable } from '../../shared/durable-write.ts';
import { EnvBootControl, readEnvFile } from './env-boot-control.ts';
import type { EnvStore } from './env-boot-control.ts';
import type { BootVars } from './boot-vars.ts';
import { GRUB_ENV_SIZE, parseGrubEnv, serializeGrubEnv } from './grub-env.ts';

export interface GrubBootControlConfig {
  kind: 'grub';
  /** Usually /boot/grub/grubenv, or grubenv beside grub.cfg on the ESP. */
  path: string;
  /** Block size (default 1024, what `grub-editenv create` makes). A file of another size reads as corrupt and the next write re-creates it at this size. */
  size?: number;
  /**
   * Overwrite the block in place instead of renaming a new file over it. Set it
   * when grubenv lives on FAT (an ESP), where rename is not crash-safe; on ext4
   * the default rename is atomic, and GRUB re-reads the file's sectors at each boot.
   */
  inPlace?: boolean;
}

export class GrubEnvStore implements EnvStore {
  constructor(
    readonly path: string,
    readonly size: number = GRUB_ENV_SIZE,
    readonly inPlace = false,
  ) {}

  async load(): Promise<Map<string, string>> {
    return parseGrubEnv(await readEnvFile(this.path), this.size);
  }

  save(vars: BootVars): Promise<void> {
    const block = serializeGrubEnv(vars, this.size);
    return this.inPlace ? writeInPlaceDurable(this.path, block) : writeFileDurable(this.path, block);
  }
}

export function createGrubBootControl(config: GrubBootControlConfig): EnvBootControl {
  return new EnvBootControl('grub', new GrubEnvStore(config.path, config.size, config.inPlace));
}
