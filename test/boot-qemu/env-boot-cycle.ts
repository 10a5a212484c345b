/**
 * The A/B cycle for bootloaders that keep Tandem's variables in an environment
 * block (GRUB's grubenv, U-Boot's fw_env file), driven with real boots: the
 * agent's backend edits a host copy of the env, the copy goes into the disk
 * image, the real bootloader boots and decides, the env comes back out. At every
 * boot, decideBoot (the agent's model of the scripts) must predict exactly the
 * slot the bootloader printed, the slot its "OS" reports, and the env it left.
 */
import type { ExecutionContext } from 'ava';
import { readFile, rm, writeFile } from 'node:fs/promises';
import { decideBoot } from '../../agent/boot-control/boot-decision.ts';
import { VAR } from '../../agent/boot-control/boot-vars.ts';
import type { BootVars } from '../../agent/boot-control/boot-vars.ts';
import type { BootControl, BootState } from '../../agent/boot-control/index.ts';
import { osSlot, tandemBootLine, tandemWarnings } from './qemu-run.ts';
import type { QemuRun } from './qemu-run.ts';

export interface EnvBootRig {
  /** The agent's backend, working on `hostEnv`. */
  control: BootControl;
  /** The host copy of the env file the backend edits. */
  hostEnv: string;
  /** The env file as the bootloader reads it; throws when it cannot (bad signature or CRC). */
  decode(bytes: Buffer): Map<string, string>;
  encode(vars: BootVars): Buffer;
  /** Assert that `after`, the env the bootloader saved, holds exactly `expected`. */
  checkSaved(t: ExecutionContext, after: Buffer, expected: BootVars, step: string): void;
  /** Copy `hostEnv` into the disk image, or delete the env there when `hostEnv` does not exist. */
  push(): Promise<void>;
  /** Copy the disk's env out to `hostEnv`, or delete `hostEnv` when the disk has none. */
  pull(): Promise<void>;
  /** One real boot, power-on to power-off. */
  boot(): Promise<QemuRun>;
  /** Further checks of the console of a boot that started `slot` (e.g. what the OS is handed). */
  checkConsole?(t: ExecutionContext, console: string, slot: string, step: string): void;
}

/** What one boot did, in one line, as the expected tables in the tests read. */
export type BootRecord = string;

const readOrNull = (path: string) =>
  readFile(path).catch((err: NodeJS.ErrnoException) => {
    if (err.code === 'ENOENT') return null;
    throw err;
  });

/**
 * One real boot, checked against decideBoot. Returns e.g.
 * `B tries=2 fb=- | B>B trial=2 good=10` (printed slot, printed tries and
 * fallback, then the state the agent reads back afterwards).
 */
export async function bootAndCheck(t: ExecutionContext, rig: EnvBootRig, step: string, times: number[]): Promise<BootRecord> {
  const before = await readOrNull(rig.hostEnv);
  let vars: Map<string, string> | null = null;
  if (before !== null) {
    try {
      vars = rig.decode(before);
    } catch {
      vars = null; // what the scripts see too: load_env / env import -c fail, defaults apply
    }
  }
  const predicted = decideBoot(vars);
  await rig.push();
  const run = await rig.boot();
  times.push(run.ms);
  await rig.pull();
  const after = await readOrNull(rig.hostEnv);

  const line = tandemBootLine(run.console);
  if (line === undefined) {
    t.fail(`${step}: no single TANDEM BOOT line on the console:\n${run.console.slice(-3000)}`);
    return 'no decision';
  }
  t.is(line.slot, predicted.boot, `${step}: the slot the bootloader chose`);
  t.is(osSlot(run.console), predicted.boot, `${step}: the slot actually started`);
  const envAfter = predicted.newVars ?? vars ?? new Map<string, string>();
  t.is(line.tries, envAfter.get(VAR.tries) ?? '', `${step}: printed tries`);
  t.is(line.fallbackFrom, envAfter.get(VAR.fallback) ?? '', `${step}: printed fallback_from`);
  rig.checkConsole?.(t, run.console, predicted.boot, step);
  const warnings = tandemWarnings(run.console);
  if (vars === null) t.is(warnings.length, 1, `${step}: one warning about the unreadable env (${warnings.join('; ')})`);
  else t.deepEqual(warnings, [], `${step}: no warnings`);

  if (predicted.newVars === null) {
    t.deepEqual(after, before, `${step}: decideBoot writes nothing, and the bootloader left the env as it was`);
  } else if (after === null) {
    t.fail(`${step}: the bootloader should have saved the env, but it is gone`);
  } else {
    rig.checkSaved(t, after, predicted.newVars, step);
  }

  const state = await rig.control.read().then(describeState, (err: { code?: string }) => err.code ?? 'error');
  return `${line.slot} tries=${line.tries || '-'} fb=${line.fallbackFrom || '-'} | ${state}`;
}

export function describeState(s: BootState): string {
  return `${s.booted ?? '-'}>${s.active} trial=${s.trial ? s.triesLeft : '-'} good=${+s.good.A}${+s.good.B}${s.fallbackFrom ? ` fb=${s.fallbackFrom}` : ''}`;
}

/**
 * The whole life of a device, on real boots: provisioning, a trial that never
 * gets confirmed (falls back after its tries), a trial confirmed good (stays),
 * a trial the agent rejects, then an env the bootloader cannot read.
 */
export async function runEnvCycle(t: ExecutionContext, rig: EnvBootRig): Promise<{ records: BootRecord[]; times: number[] }> {
  const times: number[] = [];
  const records: BootRecord[] = [];
  const boot = async (step: string) => records.push(`${step}: ${await bootAndCheck(t, rig, step, times)}`);

  await rig.control.markGood('A'); // provisioning: A installed and good
  await boot('provisioned');
  await rig.control.setTrial('B', 3); // update 1: B never confirmed
  await boot('trial 1/3');
  await boot('trial 2/3');
  await boot('trial 3/3');
  await boot('tries spent');
  await boot('after fallback');
  await rig.control.setTrial('B', 2); // update 2: B confirmed
  await boot('trial 1/2');
  await rig.control.markGood('B');
  await boot('confirmed');
  await rig.control.setTrial('A', 2); // update 3: A rejected by the agent
  await boot('trial A');
  await rig.control.markBad('A');
  await boot('rejected');
  // Envs the agent never writes: garbage in TANDEM_ACTIVE with only B good, a broken block, none at all.
  await writeFile(rig.hostEnv, rig.encode(new Map([[VAR.active, 'X'], [VAR.good.B, '1']])));
  await boot('garbage active');
  const bytes = rig.encode(new Map([[VAR.active, 'B'], [VAR.good.B, '1']]));
  bytes[2]! ^= 0x20; // GRUB: "# gRUB Environment Block"; U-Boot: a CRC byte
  await writeFile(rig.hostEnv, bytes);
  await boot('corrupt');
  await rm(rig.hostEnv);
  await boot('missing');
  return { records, times };
}

/** The records every env-based bootloader must produce for runEnvCycle. */
export const EXPECTED_ENV_CYCLE: readonly BootRecord[] = [
  'provisioned: A tries=0 fb=- | A>A trial=- good=10',
  'trial 1/3: B tries=2 fb=- | B>B trial=2 good=10',
  'trial 2/3: B tries=1 fb=- | B>B trial=1 good=10',
  'trial 3/3: B tries=0 fb=- | B>B trial=0 good=10',
  'tries spent: A tries=0 fb=B | A>A trial=- good=10 fb=B',
  'after fallback: A tries=0 fb=B | A>A trial=- good=10 fb=B',
  'trial 1/2: B tries=1 fb=- | B>B trial=1 good=10',
  'confirmed: B tries=0 fb=- | B>B trial=- good=11',
  'trial A: A tries=1 fb=- | A>A trial=1 good=01',
  'rejected: B tries=0 fb=- | B>B trial=- good=01',
  'garbage active: B tries=- fb=- | ->B trial=- good=01',
  'corrupt: A tries=- fb=- | ERR_BOOTENV_CORRUPT',
  'missing: A tries=- fb=- | ERR_BOOTENV_MISSING',
];

/**
 * Envs the agent never writes but a device may hold (hand edits, other tools,
 * old versions): booted once each, every one held to decideBoot like the cycle.
 */
export const ODD_ENVS: readonly { name: string; vars: Record<string, string> }[] = [
  { name: 'tries with a leading zero', vars: { TANDEM_ACTIVE: 'B', TANDEM_TRIAL: '1', TANDEM_TRIES: '03', TANDEM_A_GOOD: '1' } },
  { name: 'two-digit tries', vars: { TANDEM_ACTIVE: 'B', TANDEM_TRIAL: '1', TANDEM_TRIES: '10', TANDEM_A_GOOD: '1' } },
  { name: 'tries not a number', vars: { TANDEM_ACTIVE: 'A', TANDEM_TRIAL: '1', TANDEM_TRIES: 'x', TANDEM_B_GOOD: '1', TANDEM_BOOTED: 'A' } },
  { name: 'lowercase slot, only B good', vars: { TANDEM_ACTIVE: 'b', TANDEM_TRIAL: '1', TANDEM_TRIES: '3', TANDEM_B_GOOD: '1' } },
  { name: 'trial flag other than 1', vars: { TANDEM_ACTIVE: 'B', TANDEM_TRIAL: 'yes', TANDEM_TRIES: '3', TANDEM_BOOTED: 'B' } },
  { name: 'both good, no active slot', vars: { TANDEM_A_GOOD: '1', TANDEM_B_GOOD: '1' } },
  { name: 'stale fallback record through a trial boot', vars: { TANDEM_ACTIVE: 'A', TANDEM_TRIAL: '1', TANDEM_TRIES: '1', TANDEM_FALLBACK: 'B' } },
  { name: 'unrelated variables around ours, one with escapes', vars: { saved_entry: 'x', TANDEM_ACTIVE: 'B', TANDEM_TRIAL: '1', TANDEM_TRIES: '2', note: 'a\\b\nc' } },
];

export async function runOddEnvs(t: ExecutionContext, rig: EnvBootRig): Promise<BootRecord[]> {
  const times: number[] = [];
  const records: BootRecord[] = [];
  for (const { name, vars } of ODD_ENVS) {
    await writeFile(rig.hostEnv, rig.encode(new Map(Object.entries(vars))));
    records.push(`${name}: ${await bootAndCheck(t, rig, name, times)}`);
  }
  return records;
}

export const EXPECTED_ODD_ENVS: readonly BootRecord[] = [
  'tries with a leading zero: A tries=0 fb=B | A>A trial=- good=10 fb=B',
  'two-digit tries: A tries=0 fb=B | A>A trial=- good=10 fb=B',
  'tries not a number: B tries=0 fb=A | B>B trial=- good=01 fb=A',
  'lowercase slot, only B good: B tries=3 fb=- | ->B trial=- good=01',
  'trial flag other than 1: B tries=3 fb=- | B>B trial=- good=00',
  'both good, no active slot: A tries=- fb=- | ->A trial=- good=11',
  'stale fallback record through a trial boot: A tries=0 fb=B | A>A trial=0 good=00 fb=B',
  'unrelated variables around ours, one with escapes: B tries=1 fb=- | B>B trial=1 good=00',
];

export function timingSummary(label: string, times: number[]): string {
  const total = times.reduce((a, b) => a + b, 0);
  return `${label}: ${times.length} boots, ${(total / 1000).toFixed(1)} s, ${Math.min(...times)}–${Math.max(...times)} ms a boot`;
}
