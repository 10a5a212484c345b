/**
 * What the bootloader does on every power-on, as one pure function. The GRUB
 * and U-Boot scripts in agent/boot/ implement exactly this, step for step and
 * in the same order of writes; tests simulate a reboot by applying it to the
 * env the way the bootloader would (nothing here can really reboot).
 *
 *   TANDEM_ACTIVE missing/garbage, or env unreadable → boot the safe default, write nothing
 *   active on trial (TANDEM_TRIAL=1), tries 1..9      → tries − 1, boot it
 *   active on trial, no tries left (or garbage)       → fall back: the other slot becomes
 *                                                       active, trial ends, the failed slot
 *                                                       is not good, TANDEM_FALLBACK names it
 *   otherwise                                         → boot the active slot
 *
 * TANDEM_BOOTED records the slot started. Outside a trial it is written only
 * when it changes, so a device booting its good slot never writes its env.
 */
import { isSlot, otherSlot } from './boot-control.ts';
import type { Slot } from './boot-control.ts';
import { VAR, safeDefaultSlot, triesOf } from './boot-vars.ts';
import type { BootVars } from './boot-vars.ts';

export interface BootDecision {
  boot: Slot;
  /**
   * The whole env after this boot (unrelated variables kept, changed ones
   * replaced in place, new ones appended in the order the scripts save them),
   * or null when the bootloader writes nothing.
   */
  newVars: Map<string, string> | null;
}

/** `vars` null: the env could not be read (missing file, bad signature or CRC); the scripts cannot write it then either. */
export function decideBoot(vars: BootVars | null): BootDecision {
  const env: BootVars = vars ?? new Map();
  const active = env.get(VAR.active);
  if (!isSlot(active)) return { boot: safeDefaultSlot(env), newVars: null };

  const changes: [string, string][] = [];
  let boot: Slot = active;
  if (env.get(VAR.trial) === '1') {
    const tries = triesOf(env);
    if (tries > 0) {
      changes.push([VAR.tries, String(tries - 1)]);
    } else {
      boot = otherSlot(active);
      changes.push([VAR.active, boot], [VAR.trial, '0'], [VAR.tries, '0'], [VAR.good[active], '0'], [VAR.fallback, active]);
    }
    changes.push([VAR.booted, boot]);
  } else if (env.get(VAR.booted) !== boot) {
    changes.push([VAR.booted, boot]);
  }
  if (changes.length === 0) return { boot, newVars: null };
  const newVars = new Map(env);
  for (const [name, value] of changes) newVars.set(name, value);
  return { boot, newVars };
}
