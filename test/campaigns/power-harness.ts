/**
 * Power loss at any instant, as a campaign (`npm run campaign:power`) and as a
 * test (power.test.ts). Devices on disk (test/agent/harness.ts) run a release
 * train — 1.0.0 → 1.1.0 → 1.2.0 (good; half the devices get deltas, the others
 * full payloads) → 1.3.0 (its health check fails: the rollback path) — by running the real agent
 * CLI (`tandem-agent check`, bundled once with esbuild) over and over against a
 * ProtocolServer on 127.0.0.1, and SIGKILL it at random instants:
 *
 * - uniform kills: a random instant within the run's expected duration;
 * - targeted kills: the run is watched (inotify on the state folder) and killed
 *   0–a few ms after its persisted state enters a phase chosen among the least
 *   hit ones, so short-lived phases (verifying, finalizing, rollingBack) get
 *   kills too, not only the long download.
 *
 * After a kill the device usually loses power (`powerCut`): a reboot is
 * simulated — nothing here can reboot — by applying the bootloader's decision
 * (decideBoot, what agent/boot's scripts do) to the boot env, then writing the
 * kernel command line (`tandem.slot=X`) and the running image's version file
 * the agent reads. Otherwise only the agent died and starts again (systemd's
 * Restart=). A power cut may also tear the last write (`tear`), the way it can
 * on a real disk given how each file is written:
 *
 * - files written by rename (state.json, prelude.bin, bootenv.json, through
 *   shared/durable-write.ts): the old file stays whole, and a partial temp file
 *   is left beside it;
 * - the slot, written in place: the region after the last durable checkpoint
 *   (the operations in flight) holds garbage — bytes of neither image.
 *
 * `tearInPlace` (off by default) also truncates state.json or bootenv.json
 * themselves at a random length: what a medium without atomic rename, or
 * storage corruption, leaves. It probes how the agent meets a torn state file.
 *
 * Invariants, checked after every run and every reboot, counted, never asserted
 * here (the test and the campaign decide):
 * - every slot the bootloader can reach on its own (the next boot, and after
 *   the trial's tries run out) holds a verified image, byte-exact (sha256) —
 *   else the device is `bricked`;
 * - a (simulated) boot never starts a slot whose bytes are not a release image
 *   (`unverifiedBoots`);
 * - the running slot is never written (`runningSlotWritten`);
 * - each update cycle ends committed on the new version, or cleanly back on a
 *   verified old one with the version barred and its failure reported to the
 *   server; never stuck (`stuck`: the agent refusing or failing run after run).
 */
import { spawn } from 'node:child_process';
import { createHash, randomBytes } from 'node:crypto';
import { existsSync, readFileSync, watch, type FSWatcher } from 'node:fs';
import { mkdir, mkdtemp, open, readdir, readFile, rm, stat, truncate, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { basename, dirname, join } from 'node:path';
import { fileURLToPath, pathToFileURL } from 'node:url';
import { build } from 'esbuild';
import { decideBoot } from '../../agent/boot-control/boot-decision.ts';
import { JsonEnvStore } from '../../agent/boot-control/file-backend.ts';
import { simulateReboot, type Slot } from '../../agent/boot-control/index.ts';
import type { AgentState, Phase } from '../../agent/state.ts';
import type { DeviceEvent } from '../../shared/schemas/protocol.ts';
import { compareVersions } from '../../shared/versions.ts';
import { evolveImage, makeDevice, makeFleetKeys, makeImage, makeRelease, ProtocolServer, type Device, type FleetKeys, type Release } from '../agent/harness.ts';

const ROOT = fileURLToPath(new URL('../../', import.meta.url));

/** Every phase a kill can find persisted (agent/state.ts PHASES). */
export const KILL_PHASES: readonly Phase[] = ['idle', 'checking', 'downloading', 'verifying', 'finalizing', 'waitingForReboot', 'healthChecking', 'rollingBack'];

export interface PowerOptions {
  /** Seeds every random choice (kill instants and modes, power cuts, tears, payload kinds); timing still varies run to run. */
  seed: number;
  /** Keep starting devices until this many kills landed. */
  kills: number;
  /** Size of each image; small, so hundreds of kills take minutes. */
  imageMiB?: number;
  /** Devices updated at once (each runs its own agent processes; most of a run is waiting, so 3 keep 2 cores busy). */
  parallel?: number;
  /** Probability that a kill is a power cut (reboot), not only the agent dying. */
  powerCut?: number;
  /** Probability that a power cut tears the last write. */
  tear?: number;
  /** Also truncate state.json / bootenv.json in place (see the header). */
  tearInPlace?: boolean;
  /** Serve payloads at this rate, so kills land while downloading too. */
  payloadBytesPerSecond?: number;
  /** Where devices live; tmpfs when there is one (fsync is free there, a SIGKILL loses nothing the kernel holds). */
  baseDir?: string;
  /** Runs of one device before it counts as stuck. */
  maxRunsPerDevice?: number;
  /** Progress lines (one per device). */
  log?: (line: string) => void;
  /** One line per agent run: where it started, the kill plan, how it ended. */
  trace?: (line: string) => void;
}

export interface Violation {
  device: string;
  kind: 'bricked' | 'unverifiedBoot' | 'runningSlotWritten' | 'stuck' | 'unreported' | 'badCommit' | 'agentCrash';
  detail: string;
}

export interface PowerSummary {
  seed: number;
  devices: number;
  cycles: number;
  runs: number;
  kills: number;
  killsByState: Record<string, number>;
  distinctStates: number;
  killModes: { uniform: number; targeted: number };
  powerCuts: number;
  agentOnlyKills: number;
  tears: { tempFile: number; slotGarbage: number; inPlace: number };
  reboots: number;
  bricked: number;
  unverifiedBoots: number;
  runningSlotWritten: number;
  updatesCompleted: number;
  updatesAbandonedCleanly: number;
  abandonedBy: Record<string, number>;
  /** Good releases given up on (bootloader fallback after power cuts used up the trial's tries). */
  goodReleasesAbandoned: number;
  /** Completed cycles by payload kind. */
  completedByKind: { full: number; delta: number };
  stuck: number;
  unreported: number;
  /** Exit codes of runs that were not killed, other than 0/1/2/4 (the agent failing a cycle and saying why). */
  agentErrors: Record<string, number>;
  /** Partial temp files left in the state and boot folders at the end (the agent does not remove them). */
  tempFilesLeft: number;
  violations: Violation[];
  elapsedSeconds: number;
}

/** mulberry32: small, fast, good enough to spread kills; the same seed gives the same choices. */
export function createRandom(seed: number): () => number {
  let a = seed >>> 0;
  return () => {
    a = (a + 0x6d2b79f5) >>> 0;
    let t = a;
    t = Math.imul(t ^ (t >>> 15), t | 1);
    t ^= t + Math.imul(t ^ (t >>> 7), t | 61);
    return ((t ^ (t >>> 14)) >>> 0) / 4294967296;
  };
}

/**
 * The agent CLI as one ES module (esbuild, what tsx uses anyway), so a start
 * costs a fraction of a second instead of a TypeScript compile. Returns the
 * argv prefix that runs it with `process.execPath`.
 */
export async function bundleAgent(outDir: string): Promise<string[]> {
  const out = join(outDir, 'tandem-agent.mjs');
  await build({
    entryPoints: [join(ROOT, 'bin/tandem-agent.ts')],
    bundle: true,
    platform: 'node',
    format: 'esm',
    target: 'node20',
    outfile: out,
    logLevel: 'warning',
    // Run-time requires (payloads/zstd.ts loads zstd-codec with createRequire(import.meta.url)) resolve from the repository.
    define: { 'import.meta.url': JSON.stringify(pathToFileURL(join(ROOT, 'package.json')).href) },
    banner: { js: `import { createRequire as __tandemRequire } from 'node:module'; const require = __tandemRequire(${JSON.stringify(join(ROOT, 'package.json'))});` },
  });
  return [out];
}

export function sha256Hex(bytes: Uint8Array): string {
  return createHash('sha256').update(bytes).digest('hex');
}

// ---- The release train ------------------------------------------------------------

export interface Train {
  releases: Release[];
  /** sha256 of each release image → version: what "a verified image" means here. */
  verified: Map<string, string>;
  /** The release whose health check fails after the reboot. */
  bad: string;
  imageSize: number;
}

export async function makeTrain(dir: string, keys: FleetKeys, imageMiB: number, random: () => number): Promise<Train> {
  const seedOf = () => 1 + Math.floor(random() * 0x7fffffff);
  const images = [makeImage(imageMiB, seedOf())];
  for (let i = 1; i < 4; i++) images.push(evolveImage(images[i - 1]!, seedOf(), i === 3 ? 0.2 : 0.3));
  const versions = ['1.0.0', '1.1.0', '1.2.0', '1.3.0'];
  // Each release in its own folder, made at once: payload generation is most of the set-up.
  const releases = await Promise.all(
    versions.map((version, i) => makeRelease(join(dir, 'releases', version), keys, version, images[i]!, i === 0 ? {} : { from: { version: versions[i - 1]!, image: images[i - 1]! } })),
  );
  return { releases, verified: new Map(releases.map((r) => [sha256Hex(r.image), r.version])), bad: '1.3.0', imageSize: images[0]!.length };
}

// ---- One device's life under power cuts ---------------------------------------------

export interface RunResult {
  code: number | null;
  killed: boolean;
  stderr: string;
  ms: number;
}

export type KillPlan = { mode: 'uniform'; afterMs: number } | { mode: 'targeted'; phase: Phase; delayMs: number };

/** One `tandem-agent check` run of the bundled CLI, killed as planned (or left alone). */
export function runAgent(launcher: string[], dev: Device, plan: KillPlan | undefined): Promise<RunResult> {
  return new Promise((resolve) => {
    const started = Date.now();
    const child = spawn(process.execPath, [...launcher, 'check', '--config', dev.configPath, '--quiet'], { stdio: ['ignore', 'ignore', 'pipe'] });
    let stderr = '';
    child.stderr.on('data', (c: Buffer) => (stderr = (stderr + c.toString()).slice(-4000)));
    let killed = false;
    const kill = () => {
      if (child.exitCode === null && child.signalCode === null) killed = child.kill('SIGKILL');
    };
    let timer: NodeJS.Timeout | undefined;
    let watcher: FSWatcher | undefined;
    let fired = false;
    if (plan?.mode === 'uniform') timer = setTimeout(kill, plan.afterMs);
    if (plan?.mode === 'targeted') {
      const statePath = join(dev.stateDir, 'state.json');
      // Synchronous read: the phase may last a fraction of a millisecond.
      watcher = watch(dev.stateDir, () => {
        if (fired) return;
        let phase: string | undefined;
        try {
          phase = (JSON.parse(readFileSync(statePath, 'utf8')) as AgentState).phase;
        } catch {
          return;
        }
        if (phase !== plan.phase) return;
        fired = true;
        if (plan.delayMs <= 0) kill();
        else timer = setTimeout(kill, plan.delayMs);
      });
    }
    child.on('close', (code) => {
      clearTimeout(timer);
      watcher?.close();
      resolve({ code, killed, stderr, ms: Date.now() - started });
    });
  });
}

async function readState(dev: Device): Promise<{ state?: AgentState; torn: boolean }> {
  const text = await readFile(join(dev.stateDir, 'state.json'), 'utf8').catch(() => undefined);
  if (text === undefined) return { torn: false };
  try {
    return { state: JSON.parse(text) as AgentState, torn: false };
  } catch {
    return { torn: true };
  }
}

/** The slots the bootloader starts from this env on its own, boot after boot, with no agent to intervene. */
export function reachableSlots(vars: Map<string, string> | null): Slot[] {
  const seen = new Set<Slot>();
  let env = vars;
  for (let i = 0; i < 12; i++) {
    const { boot, newVars } = decideBoot(env);
    seen.add(boot);
    if (newVars === null) break;
    env = newVars;
  }
  return [...seen];
}

interface Shared {
  options: Required<Omit<PowerOptions, 'log' | 'trace' | 'baseDir'>> & Pick<PowerOptions, 'log' | 'trace'>;
  random: () => number;
  launcher: string[];
  train: Train;
  server: ProtocolServer;
  keys: FleetKeys;
  dir: string;
  summary: PowerSummary;
  /** Clean-run durations by the phase a run starts in, to aim uniform kills over a whole run. */
  spans: Map<string, number>;
  eventsByDevice: Map<string, DeviceEvent[]>;
  kindByDevice: Map<string, 'full' | 'delta'>;
}

const EXPECTED_EXITS = [0, 1, 2, 4];
const TEMP_FILE = /^\..+\.tmp$/;

function count(map: Record<string, number>, key: string): void {
  map[key] = (map[key] ?? 0) + 1;
}

/** Phases a run starting in `phase` can persist, for aiming a targeted kill (rollingBack only on the bad release). */
function reachablePhases(phase: Phase, target: string | undefined, bad: string): Phase[] {
  const install: Phase[] = ['checking', 'downloading', 'verifying', 'finalizing', 'waitingForReboot'];
  const afterBoot: Phase[] = target === bad ? ['healthChecking', 'rollingBack'] : ['healthChecking', 'idle'];
  switch (phase) {
    case 'idle':
    case 'checking':
      return install;
    case 'downloading':
    case 'verifying':
    case 'finalizing':
      return install.slice(install.indexOf(phase));
    case 'waitingForReboot':
    case 'healthChecking':
      return afterBoot;
    case 'rollingBack':
      return ['rollingBack', 'idle'];
  }
}

class DeviceLife {
  running: Slot = 'A';
  runningSha = '';
  /** The version this device is after, from the first offer until the cycle ends. */
  target: string | undefined;
  kind: 'full' | 'delta' | undefined;
  bricked = false;
  failuresInARow = 0;
  kills = 0;
  lastStderr = '';
  /** Versions this device gave up on, to be found reported at the end. */
  readonly barred: string[] = [];

  constructor(
    readonly s: Shared,
    readonly name: string,
    readonly dev: Device,
    readonly deviceId: string,
    readonly cmdline: string,
    readonly versionFile: string,
  ) {}

  violation(kind: Violation['kind'], detail: string): void {
    this.s.summary.violations.push({ device: this.name, kind, detail });
  }

  async slotSha(slot: Slot): Promise<string> {
    const bytes = await readFile(slot === 'A' ? this.dev.slotA : this.dev.slotB);
    return sha256Hex(bytes.subarray(0, this.s.train.imageSize));
  }

  /** Power-on: the bootloader's decision, then what the kernel and the image tell the agent. */
  async boot(): Promise<void> {
    const { boot } = await simulateReboot(this.dev.control);
    this.s.summary.reboots++;
    this.running = boot;
    this.runningSha = await this.slotSha(boot);
    const version = this.s.train.verified.get(this.runningSha);
    if (version === undefined) {
      this.s.summary.unverifiedBoots++;
      this.violation('unverifiedBoot', `booted slot ${boot}, whose bytes are no release image`);
    }
    await writeFile(this.cmdline, `console=ttyS0 tandem.slot=${boot}\n`);
    await writeFile(this.versionFile, `${version ?? 'unknown'}\n`);
  }

  /** Every invariant that must hold at any instant: counted, with what was seen. */
  async checkInvariants(when: string): Promise<void> {
    const vars = await new JsonEnvStore(this.dev.bootEnv).load().catch(() => null);
    for (const slot of reachableSlots(vars)) {
      const version = this.s.train.verified.get(await this.slotSha(slot));
      if (version === undefined && !this.bricked) {
        this.bricked = true;
        this.s.summary.bricked++;
        this.violation('bricked', `${when}: the bootloader can boot slot ${slot}, which holds no verified image (env ${JSON.stringify(vars && Object.fromEntries(vars))}, state ${JSON.stringify((await readState(this.dev)).state?.phase)})`);
      }
    }
    if ((await this.slotSha(this.running)) !== this.runningSha) {
      this.s.summary.runningSlotWritten++;
      this.violation('runningSlotWritten', `${when}: the running slot ${this.running} was written`);
      this.runningSha = await this.slotSha(this.running);
    }
  }

  planKill(phase: Phase): KillPlan | undefined {
    const { summary, options, random, spans } = this.s;
    if (summary.kills >= options.kills || random() >= 0.8) return undefined;
    if (random() < 0.5) {
      const span = spans.get(phase) ?? 2500;
      return { mode: 'uniform', afterMs: Math.floor(random() * span * 1.05) };
    }
    // The least hit phases first: weight 1 / (1 + kills there).
    const choices = reachablePhases(phase, this.target, this.s.train.bad);
    // Downloading counts thrice: it is where most of a real update's time goes, and where a cut tears the slot.
    const weights = choices.map((p) => (p === 'downloading' ? 3 : 1) / (1 + (summary.killsByState[p] ?? 0)) ** 2);
    let pick = random() * weights.reduce((a, b) => a + b, 0);
    let target = choices[choices.length - 1]!;
    for (let i = 0; i < choices.length; i++) {
      pick -= weights[i]!;
      if (pick <= 0) {
        target = choices[i]!;
        break;
      }
    }
    const long = target === 'downloading' || target === 'healthChecking';
    // Half the long-phase kills land as the phase begins: with small images a download can be over in under 100 ms.
    const delayMs = long ? (random() < 0.5 ? 0 : Math.floor(random() * 600)) : random() < 0.6 ? 0 : Math.floor(random() * 4);
    return { mode: 'targeted', phase: target, delayMs };
  }

  /**
   * Leaves what a power cut can leave of the writes in flight (see the header):
   * while downloading, the slot region after the last durable checkpoint (never
   * fdatasynced) may hold garbage; otherwise, or as well, the newest file written
   * by rename may have left a partial temp file beside it.
   */
  async tear(state: AgentState | undefined): Promise<void> {
    const { random, summary, options } = this.s;
    const update = state?.update;
    if (update && state.phase === 'downloading' && update.toSlot !== this.running) {
      const payload = this.s.train.releases.flatMap((r) => [r.full, ...(r.delta ? [r.delta] : [])]).find((p) => p.sha256 === update.sha256);
      if (payload) {
        // The operations after the checkpoint were in flight: a random part of each of the next few is garbage.
        const ops = payload.manifest.operations.slice(update.checkpoint?.nextOp ?? 0);
        const extents = ops.slice(0, 1 + Math.floor(random() * Math.min(ops.length, 4))).flatMap((op) => op.dst);
        const fh = await open(update.toSlot === 'A' ? this.dev.slotA : this.dev.slotB, 'r+');
        try {
          for (const [offset, length] of extents) {
            const start = Math.floor(random() * length);
            const torn = Math.floor(random() * (length - start));
            if (torn > 0) await fh.write(randomBytes(torn), 0, torn, offset + start);
          }
        } finally {
          await fh.close();
        }
        summary.tears.slotGarbage++;
        return;
      }
    }
    let newest: string | undefined;
    let newestAt = -1;
    for (const path of [join(this.dev.stateDir, 'state.json'), join(this.dev.stateDir, 'prelude.bin'), this.dev.bootEnv]) {
      const at = await stat(path).then((st) => st.mtimeMs, () => -1);
      if (at > newestAt) [newest, newestAt] = [path, at];
    }
    if (newest === undefined) return;
    const bytes = await readFile(newest);
    if (options.tearInPlace && basename(newest) !== 'prelude.bin' && random() < 0.5) {
      await truncate(newest, Math.floor(random() * bytes.length));
      summary.tears.inPlace++;
      return;
    }
    // By rename: the old file stays whole; a partial temp file (named as durable-write.ts names them) stays beside it.
    const tmp = join(dirname(newest), `.${basename(newest)}.${40000 + Math.floor(random() * 20000)}.${randomBytes(4).toString('hex')}.tmp`);
    await writeFile(tmp, bytes.subarray(0, Math.floor(random() * bytes.length)));
    summary.tears.tempFile++;
  }

  /**
   * Over: committed on the target, or the target barred with the device on a
   * verified old version. Checked right after every run, killed or not: a run
   * ends at most one cycle and never starts another in the same breath
   * (agent.ts cycle(): a resumed update returns before any new check).
   */
  async cycleOver(state: AgentState): Promise<boolean> {
    const target = this.target;
    if (target === undefined || state.phase !== 'idle') return false;
    const { summary, train } = this.s;
    const boot = await this.dev.control.read();
    const runningVersion = train.verified.get(this.runningSha);
    const committed = state.lastOutcome?.result === 'committed' && state.lastOutcome.version === target;
    if (committed) {
      if (runningVersion !== target || boot.active !== this.running || !boot.good[this.running] || boot.trial) {
        this.violation('stuck', `${target} recorded as committed, but running ${this.running} (${runningVersion}) with boot ${JSON.stringify(boot)}`);
      }
      if (target === train.bad) this.violation('badCommit', `committed ${target}, whose health check fails`);
      summary.updatesCompleted++;
      summary.completedByKind[this.kind ?? 'full']++;
      return true;
    }
    if (!state.failedVersions.includes(target)) return false;
    const code = state.lastOutcome?.version === target ? (state.lastOutcome.code ?? state.lastOutcome.result) : 'unknown';
    if (runningVersion === undefined || runningVersion === target || boot.active !== this.running) {
      this.violation('stuck', `${target} barred (${code}) but the device is not cleanly back: running ${this.running} (${runningVersion}), boot ${JSON.stringify(boot)}`);
    }
    this.barred.push(target);
    summary.updatesAbandonedCleanly++;
    count(summary.abandonedBy, code);
    if (target !== train.bad) summary.goodReleasesAbandoned++;
    return true;
  }

  /** The train is over: the device runs a confirmed, verified image and every barred version reached the server as a failure. */
  async checkEnd(state: AgentState | undefined): Promise<void> {
    const boot = await this.dev.control.read();
    const version = this.s.train.verified.get(this.runningSha);
    if (state?.phase !== 'idle' || version === undefined || boot.active !== this.running || !boot.good[this.running] || boot.trial) {
      this.violation('stuck', `ends in phase ${state?.phase} running ${this.running} (${version}) with boot ${JSON.stringify(boot)}`);
    }
    const events = this.s.eventsByDevice.get(this.deviceId) ?? [];
    for (const target of this.barred) {
      if (!events.some((e) => e.version === target && (e.type === 'rolledBack' || e.type === 'error'))) {
        this.s.summary.unreported++;
        this.violation('unreported', `${target} was barred but no rolledBack/error event reached the server (outbox ${state?.outbox.length})`);
      }
    }
  }

  async live(): Promise<void> {
    const { summary, options, random, spans } = this.s;
    await this.boot();
    await this.checkInvariants('at first boot');
    for (let runs = 0; ; runs++) {
      if (runs >= options.maxRunsPerDevice) {
        summary.stuck++;
        this.violation('stuck', `no end after ${runs} runs: state ${JSON.stringify({ ...(await readState(this.dev)).state, outbox: undefined })}; last stderr: ${this.lastStderr.slice(-500)}`);
        return;
      }
      const before = await readState(this.dev);
      const startPhase: Phase = before.state?.phase ?? 'idle';
      const plan = this.planKill(startPhase);
      const run = await runAgent(this.s.launcher, this.dev, plan);
      summary.runs++;
      this.lastStderr = run.stderr;
      const after = await readState(this.dev);
      options.trace?.(`${this.name} from ${startPhase}: ${plan ? JSON.stringify(plan) : 'left alone'} → ${run.killed ? `killed in ${after.torn ? 'torn' : after.state?.phase}` : `exit ${run.code}`} after ${run.ms} ms`);
      const update = after.state?.update;
      if (update) {
        this.target = update.version;
        this.kind = update.kind;
      }
      if (after.state && (await this.cycleOver(after.state))) {
        summary.cycles++;
        this.target = undefined;
        this.kind = undefined;
      }

      if (run.killed) {
        summary.kills++;
        this.kills++;
        summary.killModes[plan!.mode]++;
        count(summary.killsByState, after.torn ? 'torn' : (after.state?.phase ?? 'idle'));
        this.failuresInARow = 0;
        await this.checkInvariants(`after a kill in ${after.state?.phase}`);
        if (random() < options.powerCut) {
          summary.powerCuts++;
          if (random() < options.tear) await this.tear(after.state);
          await this.dev.clearRebootRequest();
          await this.boot();
        } else {
          summary.agentOnlyKills++;
          // The reboot command may have run before the kill: then the device reboots anyway.
          if (await this.dev.rebootRequested()) {
            await this.dev.clearRebootRequest();
            await this.boot();
          }
        }
        await this.checkInvariants('after the reboot');
        continue;
      }

      spans.set(startPhase, Math.round(((spans.get(startPhase) ?? run.ms) + run.ms) / 2));
      if (!EXPECTED_EXITS.includes(run.code ?? -1)) {
        const code = /error (ERR_[A-Z_]+)/.exec(run.stderr)?.[1] ?? /"code":"(ERR_[A-Z_]+)"/.exec(run.stderr)?.[1] ?? `exit ${run.code}`;
        count(summary.agentErrors, code);
        if (run.code === null || run.code === 70) this.violation('agentCrash', `exit ${run.code}: ${run.stderr.slice(-600)}`);
        if (++this.failuresInARow >= 8) {
          summary.stuck++;
          this.violation('stuck', `the agent failed ${this.failuresInARow} runs in a row (${code}); state ${after.torn ? 'torn' : after.state?.phase}: ${run.stderr.slice(-600)}`);
          return;
        }
      } else this.failuresInARow = 0;
      if (await this.dev.rebootRequested()) {
        await this.dev.clearRebootRequest();
        await this.boot();
      }
      await this.checkInvariants(`after a run (exit ${run.code})`);
      // Nothing offered and nothing in flight: the train is over for this device.
      if (run.code === 2 && this.target === undefined && after.state?.phase === 'idle') {
        await this.checkEnd(after.state);
        return;
      }
    }
  }
}

async function countTempFiles(dirs: string[]): Promise<number> {
  let n = 0;
  for (const dir of dirs) n += (await readdir(dir).catch(() => [] as string[])).filter((f) => TEMP_FILE.test(f)).length;
  return n;
}

export async function runPowerCampaign(input: PowerOptions): Promise<PowerSummary> {
  const started = Date.now();
  const options = {
    seed: input.seed,
    kills: input.kills,
    imageMiB: input.imageMiB ?? 4,
    parallel: input.parallel ?? 3,
    powerCut: input.powerCut ?? 0.75,
    tear: input.tear ?? 0.5,
    tearInPlace: input.tearInPlace ?? false,
    payloadBytesPerSecond: input.payloadBytesPerSecond ?? 2 * 1024 * 1024,
    maxRunsPerDevice: input.maxRunsPerDevice ?? 150,
    log: input.log,
    trace: input.trace,
  };
  const random = createRandom(options.seed);
  const base = input.baseDir ?? (existsSync('/dev/shm') ? '/dev/shm' : tmpdir());
  const dir = await mkdtemp(join(base, 'tandem-power-'));
  const summary: PowerSummary = {
    seed: options.seed,
    devices: 0,
    cycles: 0,
    runs: 0,
    kills: 0,
    killsByState: {},
    distinctStates: 0,
    killModes: { uniform: 0, targeted: 0 },
    powerCuts: 0,
    agentOnlyKills: 0,
    tears: { tempFile: 0, slotGarbage: 0, inPlace: 0 },
    reboots: 0,
    bricked: 0,
    unverifiedBoots: 0,
    runningSlotWritten: 0,
    updatesCompleted: 0,
    updatesAbandonedCleanly: 0,
    abandonedBy: {},
    goodReleasesAbandoned: 0,
    completedByKind: { full: 0, delta: 0 },
    stuck: 0,
    unreported: 0,
    agentErrors: {},
    tempFilesLeft: 0,
    violations: [],
    elapsedSeconds: 0,
  };
  const keys = makeFleetKeys();
  const server = await new ProtocolServer({ keys }).start();
  try {
    const [launcher, train] = await Promise.all([bundleAgent(dir), makeTrain(dir, keys, options.imageMiB, random)]);
    options.log?.(`agent bundled, 4 releases and 7 payloads made in ${((Date.now() - started) / 1000).toFixed(1)} s`);
    server.payloadBytesPerSecond = options.payloadBytesPerSecond;
    const eventsByDevice = new Map<string, DeviceEvent[]>();
    const kindByDevice = new Map<string, 'full' | 'delta'>();
    server.intercept = (req, _res, body) => {
      if (req.method === 'POST' && req.url === '/v1/events') {
        try {
          const doc = JSON.parse(body.toString()) as { deviceId: string; events: DeviceEvent[] };
          eventsByDevice.set(doc.deviceId, [...(eventsByDevice.get(doc.deviceId) ?? []), ...doc.events]);
        } catch {
          // The server proper answers a bad body.
        }
      }
      return false;
    };
    // The train: the next release above the device's version it has not failed.
    server.offer = (req) => {
      const next = train.releases.find((r) => compareVersions(r.version, req.version) > 0 && !req.failedVersions.includes(r.version));
      if (!next) return undefined;
      const wantDelta = kindByDevice.get(req.deviceId) === 'delta';
      const payload = wantDelta && next.delta && next.delta.manifest.source?.version === req.version ? next.delta : next.full;
      return { version: next.version, payload };
    };
    const shared: Shared = { options, random, launcher, train, server, keys, dir, summary, spans: new Map(), eventsByDevice, kindByDevice };

    let n = 0;
    const worker = async (): Promise<void> => {
      while (summary.kills < options.kills) {
        const index = n++;
        const name = `device-${index}`;
        const deviceDir = join(dir, name);
        const cmdline = join(deviceDir, 'cmdline');
        const versionFile = join(deviceDir, 'os-version');
        // The bad release fails its health check; every check takes a moment, so kills land while it runs.
        const health = `sleep 0.3; test "$(cat '${versionFile}')" != '${train.bad}'`;
        const dev = await makeDevice(deviceDir, {
          server: server.url,
          keys,
          version: '1.0.0',
          image: train.releases[0]!.image,
          overrides: {
            versionFile,
            bootedSlotFrom: 'cmdline',
            cmdlinePath: cmdline,
            health: { deadlineSeconds: 4, intervalSeconds: 0.2, checks: [{ type: 'command', name: 'app', command: ['sh', '-c', health] }] },
            download: { connectTimeoutSeconds: 2, readTimeoutSeconds: 2, retries: 3, backoffBaseSeconds: 0.05, backoffMaxSeconds: 0.2, checkpointEveryBytes: 256 * 1024 },
          },
        });
        await mkdir(dev.stateDir, { recursive: true, mode: 0o700 });
        const deviceId = (JSON.parse(await readFile(dev.configPath, 'utf8')) as { deviceId: string }).deviceId;
        // Half the devices are offered deltas where one exists from their version, the others full payloads.
        kindByDevice.set(deviceId, index % 2 === 0 ? 'delta' : 'full');
        summary.devices++;
        const life = new DeviceLife(shared, name, dev, deviceId, cmdline, versionFile);
        await life.live();
        const left = await countTempFiles([dev.stateDir, deviceDir]);
        summary.tempFilesLeft += left;
        const state = (await readState(dev)).state;
        options.log?.(`${name}: ${kindByDevice.get(deviceId)}, ${life.kills} kills, running ${life.running} ${train.verified.get(life.runningSha) ?? '?'}, failed [${state?.failedVersions.join(' ') ?? ''}], ${left} temp files left; total ${summary.kills} kills`);
        await rm(deviceDir, { recursive: true, force: true });
      }
    };
    await Promise.all(Array.from({ length: options.parallel }, () => worker()));
  } finally {
    await server.close();
    await rm(dir, { recursive: true, force: true });
  }
  summary.distinctStates = Object.keys(summary.killsByState).length;
  summary.elapsedSeconds = Math.round((Date.now() - started) / 100) / 10;
  return summary;
}
