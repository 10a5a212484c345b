/**
 * The variables the agent and the bootloader scripts share (agent/boot/README.md),
 * how the agent reads a BootState out of them, and the agent-side edits behind
 * setTrial / markGood / markBad. Pure: the backends do the I/O.
 *
 * Vars are an ordered Map, not an object: GRUB replaces a variable in place and
 * appends new ones, and an object would reorder integer-like names.
 */
import { TandemError } from '../../shared/errors.ts';
import { MAX_TRIES, isSlot, otherSlot } from './boot-control.ts';
import type { BootState, Slot } from './boot-control.ts';

export type BootVars = ReadonlyMap<string, string>;

export const VAR = {
  /** A | B: the slot the bootloader starts. Written by the agent, and by the bootloader when it falls back. */
  active: 'TANDEM_ACTIVE',
  /** 1 while the active slot is on trial. */
  trial: 'TANDEM_TRIAL',
  /** 0..9: boots the trial has left; the bootloader decrements it before each trial boot. */
  tries: 'TANDEM_TRIES',
  /** 1 once the agent confirmed the slot healthy, 0 after a failure or a new install. */
  good: { A: 'TANDEM_A_GOOD', B: 'TANDEM_B_GOOD' },
  /** A | B: the slot the bootloader started last. Written by the bootloader only when it changes. */
  booted: 'TANDEM_BOOTED',
  /** A | B: the slot whose trial ran out; written by the bootloader, removed by the next trial. */
  fallback: 'TANDEM_FALLBACK',
} as const;

/** Every name the bootloader scripts load: their whitelist, so nothing else in a writable env can reach the bootloader. */
export const BOOT_VAR_NAMES: readonly string[] = [
  VAR.active,
  VAR.trial,
  VAR.tries,
  VAR.good.A,
  VAR.good.B,
  VAR.booted,
  VAR.fallback,
];

/** Tries as the scripts read them: one digit, anything else counts as none left (so garbage falls back, never loops). */
export function triesOf(vars: BootVars): number {
  const raw = vars.get(VAR.tries) ?? '';
  return /^[0-9]$/.test(raw) ? Number(raw) : 0;
}

/**
 * The slot the bootloader starts when TANDEM_ACTIVE is missing or garbage:
 * the last good one if exactly B is marked good, else A (also what it does
 * when the whole env is unreadable: then no slot is marked good).
 */
export function safeDefaultSlot(vars: BootVars): Slot {
  return vars.get(VAR.good.A) !== '1' && vars.get(VAR.good.B) === '1' ? 'B' : 'A';
}

export function activeSlotOf(vars: BootVars): Slot {
  const active = vars.get(VAR.active);
  return isSlot(active) ? active : safeDefaultSlot(vars);
}

export function bootStateFromVars(vars: BootVars): BootState {
  const trial = isSlot(vars.get(VAR.active)) && vars.get(VAR.trial) === '1';
  const state: BootState = {
    active: activeSlotOf(vars),
    trial,
    triesLeft: trial ? triesOf(vars) : 0,
    good: { A: vars.get(VAR.good.A) === '1', B: vars.get(VAR.good.B) === '1' },
  };
  const booted = vars.get(VAR.booted);
  if (isSlot(booted)) state.booted = booted;
  const fallback = vars.get(VAR.fallback);
  if (isSlot(fallback)) state.fallbackFrom = fallback;
  return state;
}

function checkSlot(slot: unknown): asserts slot is Slot {
  if (!isSlot(slot)) throw new TandemError('ERR_BOOTENV_INVALID', `Slot must be "A" or "B", not ${JSON.stringify(slot)}.`);
}

export function withTrial(vars: BootVars, slot: Slot, tries: number): Map<string, string> {
  checkSlot(slot);
  if (!Number.isInteger(tries) || tries < 1 || tries > MAX_TRIES) {
    throw new TandemError('ERR_BOOTENV_INVALID', `Tries must be an integer from 1 to ${MAX_TRIES}, not ${tries}.`, {
      details: { tries },
    });
  }
  const out = new Map(vars)
    .set(VAR.active, slot)
    .set(VAR.trial, '1')
    .set(VAR.tries, String(tries))
    .set(VAR.good[slot], '0');
  out.delete(VAR.fallback);
  return out;
}

export function withGood(vars: BootVars, slot: Slot): Map<string, string> {
  checkSlot(slot);
  // Pin the active slot first: with TANDEM_ACTIVE missing, a new good flag would change the safe default.
  const active = activeSlotOf(vars);
  const out = new Map(vars).set(VAR.active, active).set(VAR.good[slot], '1');
  if (active === slot) out.set(VAR.trial, '0').set(VAR.tries, '0');
  return out;
}

export function withBad(vars: BootVars, slot: Slot): Map<string, string> {
  checkSlot(slot);
  const active = activeSlotOf(vars);
  const out = new Map(vars).set(VAR.active, active).set(VAR.good[slot], '0');
  if (active === slot) out.set(VAR.active, otherSlot(slot)).set(VAR.trial, '0').set(VAR.tries, '0');
  return out;
}
