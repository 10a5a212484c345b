/**
 * Step 5, finalize: point the bootloader at the new, verified slot for a trial
 * of N boots. Only this step and the health step's verdict touch the boot
 * flags. setTrial is idempotent, so a restart in "finalizing" simply does it
 * again; the caller then persists "waiting for reboot" and runs the reboot
 * command, in that order, so a restart never loses the reboot.
 */
import type { BootControl, Slot } from '../boot-control/index.ts';
import { TandemError } from '../../shared/errors.ts';

export async function finalizeStep(control: BootControl, slot: Slot, tries: number, booted: Slot): Promise<void> {
  if (slot === booted) {
    throw new TandemError('ERR_TARGET_IS_SOURCE', `Slot ${slot} is the running slot: it is never put on trial from itself.`);
  }
  await control.setTrial(slot, tries);
}
