/**
 * Boot control: the agent's only handle on which slot the bootloader starts
 * (DESIGN.md "Boot control"). Modelled on update_engine's
 * boot_control_interface.h and RAUC's bootchooser: a few verbs with stated
 * contracts, one implementation per bootloader, one factory (`index.ts`).
 */
import { TandemError, isTandemError } from '../../shared/errors.ts';
import type { ErrorCode } from '../../shared/errors.ts';

export type Slot = 'A' | 'B';
export const SLOTS: readonly Slot[] = ['A', 'B'];

export function isSlot(value: unknown): value is Slot {
  return value === 'A' || value === 'B';
}

export function otherSlot(slot: Slot): Slot {
  return slot === 'A' ? 'B' : 'A';
}

/** The most tries a trial may get: the bootloader scripts decrement with a lookup table (GRUB has no arithmetic). */
export const MAX_TRIES = 9;

export interface BootState {
  /** The slot the bootloader will start next (after a missing or corrupt TANDEM_ACTIVE: the one it falls back to). */
  active: Slot;
  /** The slot the bootloader started last, as it recorded it; undefined until it has recorded one. */
  booted?: Slot;
  /** The active slot is on trial: each boot spends a try, and at zero the bootloader falls back. */
  trial: boolean;
  /** Boots the trial has left (0 when not on trial). */
  triesLeft: number;
  /** Slots the agent confirmed healthy. The bootloader never reads these to pick a slot; they record the agent's verdict. */
  good: Record<Slot, boolean>;
  /** Set by the bootloader when it ran out of tries on this slot and fell back; cleared by the next setTrial. */
  fallbackFrom?: Slot;
}

/**
 * Every method is atomic with respect to the bootloader: after a power cut
 * during a write, the bootloader sees the old state or the new one (or, on
 * media that cannot rename atomically, an unreadable env, on which it boots
 * the safe default: see boot-decision.ts). Failures are TandemErrors with an
 * ERR_BOOTENV_* code and a message that starts with `kind`.
 */
export interface BootControl {
  /** The backend's name ('file', 'grub', 'uboot', …): the prefix of its error messages. */
  readonly kind: string;
  /**
   * The state the bootloader will act on at the next boot. Throws
   * ERR_BOOTENV_MISSING or ERR_BOOTENV_CORRUPT when the env cannot be read (the
   * bootloader then boots slot A); any write below repairs it.
   */
  read(): Promise<BootState>;
  /**
   * Make `slot` active for a trial of `tries` boots (1..MAX_TRIES) and mark it
   * not good until confirmed. Call it only after the slot's content is written
   * and verified. Each boot spends a try; once none are left, the bootloader
   * falls back to the other slot by itself.
   */
  setTrial(slot: Slot, tries: number): Promise<void>;
  /**
   * Confirm `slot` healthy. If it is the active slot, its trial ends: it boots
   * from now on with no counter. Never changes which slot is active.
   */
  markGood(slot: Slot): Promise<void>;
  /**
   * Record `slot` as failed. If it is the active slot, the other slot becomes
   * active, with no trial, and boots next (the agent then reboots into it).
   */
  markBad(slot: Slot): Promise<void>;
}

/**
 * Boot-control errors as the dispatcher reports them (RAUC does the same):
 * the message starts with the backend's name, the code is an ERR_BOOTENV_*
 * one, the original error is the cause. Filesystem errors become ERR_BOOTENV_IO.
 */
export function backendError(kind: string, err: unknown): TandemError {
  let code: ErrorCode = 'ERR_BOOTENV_IO';
  let details: Record<string, unknown> = {};
  let message = err instanceof Error ? err.message : String(err);
  if (isTandemError(err) && err.code.startsWith('ERR_BOOTENV_')) {
    if (err.message.startsWith(`${kind}: `)) return err;
    code = err.code;
    details = err.details ?? {};
  } else if (isTandemError(err)) {
    message = `${err.code}: ${message}`;
  }
  return new TandemError(code, `${kind}: ${message}`, { cause: err, details: { ...details, backend: kind } });
}
