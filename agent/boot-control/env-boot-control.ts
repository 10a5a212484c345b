/**
 * The BootControl verbs for every bootloader that keeps its state in a
 * key=value environment (JSON file, grubenv, U-Boot env). A backend only
 * supplies an EnvStore; the rules live once, in boot-vars.ts.
 */
import { readFile } from 'node:fs/promises';
import { TandemError, isTandemError } from '../../shared/errors.ts';
import { backendError } from './boot-control.ts';
import type { BootControl, BootState, Slot } from './boot-control.ts';
import { decideBoot } from './boot-decision.ts';
import type { BootDecision } from './boot-decision.ts';
import { bootStateFromVars, withBad, withGood, withTrial } from './boot-vars.ts';
import type { BootVars } from './boot-vars.ts';

export interface EnvStore {
  /**
   * All variables, in stored order. Throws ERR_BOOTENV_MISSING when there is
   * no env, ERR_BOOTENV_CORRUPT when the bootloader could not read it either.
   */
  load(): Promise<Map<string, string>>;
  /** Replace the env with `vars` (all of them, unrelated ones included) as durably as the medium allows. */
  save(vars: BootVars): Promise<void>;
}

export class EnvBootControl implements BootControl {
  // One read-modify-write at a time, so two verbs never interleave and lose an edit.
  private queue: Promise<unknown> = Promise.resolve();

  constructor(
    readonly kind: string,
    readonly store: EnvStore,
  ) {}

  read(): Promise<BootState> {
    return this.run(async () => bootStateFromVars(await this.store.load()));
  }

  setTrial(slot: Slot, tries: number): Promise<void> {
    return this.edit((vars) => withTrial(vars, slot, tries));
  }

  markGood(slot: Slot): Promise<void> {
    return this.edit((vars) => withGood(vars, slot));
  }

  markBad(slot: Slot): Promise<void> {
    return this.edit((vars) => withBad(vars, slot));
  }

  /** Load (an unreadable env counts as empty: the state the bootloader is in), change, save. */
  private edit(change: (vars: BootVars) => BootVars): Promise<void> {
    return this.run(async () => {
      const next = change((await loadOrNull(this.store)) ?? new Map());
      await this.store.save(next);
    });
  }

  private run<T>(task: () => Promise<T>): Promise<T> {
    const result = this.queue.then(task).catch((err: unknown) => {
      throw backendError(this.kind, err);
    });
    this.queue = result.catch(() => undefined);
    return result;
  }
}

async function loadOrNull(store: EnvStore): Promise<Map<string, string> | null> {
  try {
    return await store.load();
  } catch (err) {
    if (isTandemError(err, 'ERR_BOOTENV_MISSING') || isTandemError(err, 'ERR_BOOTENV_CORRUPT')) return null;
    throw err;
  }
}

/**
 * A reboot, simulated: the env goes through decideBoot the way the GRUB or
 * U-Boot script would treat it, and whatever the script would save is saved.
 * Only a real bootloader in QEMU can do better (a later test).
 */
export async function simulateReboot(control: BootControl): Promise<BootDecision> {
  if (!(control instanceof EnvBootControl)) {
    throw backendError(control.kind, new Error('simulateReboot needs an environment-based backend.'));
  }
  const decision = decideBoot(await loadOrNull(control.store));
  if (decision.newVars !== null) await control.store.save(decision.newVars);
  return decision;
}

/** readFile with a missing file as ERR_BOOTENV_MISSING; other failures stay filesystem errors (ERR_BOOTENV_IO). */
export async function readEnvFile(path: string): Promise<Buffer> {
  try {
    return await readFile(path);
  } catch (err) {
    if ((err as NodeJS.ErrnoException).code === 'ENOENT') {
      throw new TandemError('ERR_BOOTENV_MISSING', `${path} does not exist.`, { cause: err, details: { path } });
    }
    throw err;
  }
}
