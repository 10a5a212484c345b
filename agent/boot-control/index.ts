/**
 * The one place that picks a boot-control backend (STYLE.md 4): a new
 * bootloader is one file plus one case here.
 */
import { TandemError } from '../../shared/errors.ts';
import { backendError } from './boot-control.ts';
import type { BootControl } from './boot-control.ts';
import { createFileBootControl } from './file-backend.ts';
import type { FileBootControlConfig } from './file-backend.ts';
import { createGrubBootControl } from './grub-backend.ts';
import type { GrubBootControlConfig } from './grub-backend.ts';
import { createUBootBootControl } from './uboot-backend.ts';
import type { UBootBootControlConfig } from './uboot-backend.ts';
import { createSystemdBootControl } from './systemd-boot-backend.ts';
import type { SystemdBootControlConfig } from './systemd-boot-backend.ts';

export type BootControlConfig = FileBootControlConfig | GrubBootControlConfig | UBootBootControlConfig | SystemdBootControlConfig;

export type { BootControl, BootState, Slot } from './boot-control.ts';
export { MAX_TRIES, SLOTS, isSlot, otherSlot } from './boot-control.ts';
export { decideBoot } from './boot-decision.ts';
export type { BootDecision } from './boot-decision.ts';
export { BOOT_VAR_NAMES, VAR } from './boot-vars.ts';
export { simulateReboot } from './env-boot-control.ts';

export function createBootControl(config: BootControlConfig): BootControl {
  try {
    switch (config.kind) {
      case 'file':
        return createFileBootControl(config);
      case 'grub':
        return createGrubBootControl(config);
      case 'uboot':
        return createUBootBootControl(config);
      case 'systemd-boot':
        return createSystemdBootControl(config);
      default:
        throw new TandemError('ERR_BOOTENV_CONFIG', `Unknown boot-control kind ${JSON.stringify((config as { kind: unknown }).kind)}.`);
    }
  } catch (err) {
    throw backendError(String((config as { kind?: unknown }).kind), err);
  }
}
