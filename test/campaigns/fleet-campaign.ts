/**
 * The fleet campaign (issue: "10,000 simulated devices speaking the real
 * protocol to the real server"), as a library: fleet.ts prints it,
 * fleet.test.ts asserts its invariants on a smaller fleet.
 *
 * Processes: the server under test alone in a child (bench-target.ts, which
 * reports its CPU time and peak RSS), the simulated devices in `workers`
 * children (fleet-worker.ts), and in this process the release manager (the
 * admin API) and a few real agents (fleet-real-agents.ts).
 *
 * Time: the server runs its real, default polling policy (pollIntervalSeconds
 * 3600, ±20 %) and the agents theirs (±10 % more); devices sleep those
 * durations on a compressed clock (fleet-device.ts SimClock), one policy hour
 * lasting `hourSeconds` of wall time at most. The clock slows down when
 * requests take long enough to matter on the policy's scale (the pace,
 * below), so policy figures stay right on a busy machine or a saturated
 * server, and the run only takes longer. Figures are given in both.
 *
 * TANDEM_FLEET_PROFILE=DIR writes a CPU profile of the server during the
 * 100 % stage of the first release there.
 *
 * The story:
 * 1. setup (a server in this process, closed before the measured one starts
 *    on the same data): releases 1.0.0 (every device runs it, at 100 %),
 *    1.1.0 and 1.2.0 (at 0 %, with their deltas), an enrollment token;
 * 2. every device enrolls over HTTP and gets its own credential;
 * 3. after half an hour of check-ins only (the server's CPU per check-in is
 *    measured there), 1.1.0 is staged 1 % → 10 % → 100 %; a stage ends when every device has
 *    polled since it began (the longest poll interval the policy allows) and
 *    no device is still installing; then every device must check in on 1.1.0;
 * 4. 1.2.0, whose health checks fail on `failBp` of the devices, is staged
 *    the same way with `failureThresholdBp`/`minAttempts` set; it must halt
 *    itself, after which the devices still installing finish and everyone
 *    polls once more;
 * 5. the devices stop, and the server's per-release stats, adoption,
 *    per-device check-in counts and metrics are compared with the
 *    simulation's ledger: they must be equal.
 */
import { readFile } from 'node:fs/promises';
import { availableParallelism, loadavg } from 'node:os';
import { join } from 'node:path';
import { setTimeout as sleep } from 'node:timers/promises';
import { request } from 'undici';
import { AdminClient } from '../../server/admin-client.ts';
import { DEFAULT_CONFIG } from '../../server/config.ts';
import type { ReleaseStats } from '../../server/store/store.ts';
import { decodePublicKeyFile } from '../../shared/keys.ts';
import type { ReleaseView } from '../../shared/schemas/admin.ts';
import { BenchChild, latencySummary } from '../bench/lib/bench-child.ts';
import { REPO, round, tempDir } from '../bench/lib/bench-kit.ts';
import type { TargetStats } from '../bench/lib/bench-target.ts';
import { makeImage, startTestServer } from '../server/helpers.ts';
import { emptyRelease, healthFails, mergeTallies, SimClock, type FleetPlan, type FleetTally } from './fleet-device.ts';
import { agentDefaults, RealAgents } from './fleet-real-agents.ts';

export interface FleetOptions {
  /** Simulated devices. */
  devices: number;
  /** Real agents alongside. */
  agents: number;
  /** Child processes running the simulated devices. */
  workers: number;
  /** Wall seconds one policy hour lasts. */
  hourSeconds: number;
  /** Devices whose health checks fail on release 2, in basis points. */
  failBp: number;
  /** Release 2's auto-halt: failure threshold (basis points) and minimum attempts. */
  thresholdBp: number;
  minAttempts: number;
  stages: string[];
  imageMiB: number;
  /** Policy hours of check-ins only before the first release starts (the server's cost per check-in is measured there). */
  quietHours: number;
  /** The most policy seconds a request may take at the 90th percentile before the clock slows (see the pace). */
  maxLagSeconds: number;
  log: (line: string) => void;
}

export const DEFAULT_FLEET: Omit<FleetOptions, 'log'> = {
  devices: 10_000,
  agents: 3,
  workers: 2,
  hourSeconds: 20,
  failBp: 2000,
  thresholdBp: 1000,
  minAttempts: 20,
  stages: ['1%', '10%', '100%'],
  imageMiB: 2,
  maxLagSeconds: 60,
  quietHours: 0.5,
};

export interface Invariant {
  name: string;
  ok: boolean;
  detail: string;
}

export interface FleetResult {
  summary: Record<string, unknown>;
  table: { head: string[]; rows: (string | number)[][] };
  invariants: Invariant[];
}

const PRODUCT = 'acme';
const BOARD = 'rpi4';
const CHANNEL = 'stable';
const V0 = '1.0.0';
const V1 = '1.1.0';
const V2 = '1.2.0';
const STAT_FIELDS = ['offered', 'downloading', 'installed', 'rebooting', 'committed', 'rolledBack', 'errors', 'attempts', 'failures'] as const;

interface Prepared {
  dataDir: string;
  enrollToken: string;
  rootPublicKey: Buffer;
  image0: Buffer;
  payloads: Record<string, { kind: string; size: number; sourceVersion: string | null }[]>;
}

/** The data directory, made by a server in this process that is closed before the measured one starts. */
async function prepare(dir: string, o: FleetOptions): Promise<Prepared> {
  const dataDir = join(dir, 'data');
  const ts = await startTestServer({ deltaSources: 2 }, dataDir);
  try {
    const image0 = await makeImage(join(dir, `${V0}.img`), { mib: o.imageMiB, seed: V0 });
    await ts.admin.publishImage(join(dir, `${V0}.img`), { channel: CHANNEL, version: V0, board: BOARD, product: PRODUCT });
    await ts.admin.setRollout(CHANNEL, V0, { percentage: '100%' });
    for (const [version, changed] of [[V1, 48], [V2, 96]] as const) {
      await makeImage(join(dir, `${version}.img`), { mib: o.imageMiB, seed: version, changed });
      const pub = await ts.admin.publishImage(join(dir, `${version}.img`), { channel: CHANNEL, version, board: BOARD, product: PRODUCT });
      if (pub.job) {
        const job = await ts.admin.waitForJob(pub.job.id, { timeoutMs: 300_000 });
        if (job.state !== 'done') throw new Error(`delta job for ${version}: ${job.state} ${job.error ?? ''}`);
      }
    }
    const { token } = await ts.admin.createEnrollmentToken({ product: PRODUCT, channel: CHANNEL, board: BOARD, name: 'fleet' });
    const rootPublicKey = decodePublicKeyFile(await readFile(ts.server.keys.rootPublicKeyPath, 'utf8')).publicKey;
    const payloads: Prepared['payloads'] = {};
    for (const r of await ts.admin.releases({ channel: CHANNEL })) payloads[r.version] = r.payloads.map((p) => ({ kind: p.kind, size: p.size, sourceVersion: p.sourceVersion }));
    return { dataDir, enrollToken: token, rootPublicKey, image0, payloads };
  } finally {
    await ts.stop();
  }
}

const deviceId = (i: number, n: number): string => `fleet-${String(i).padStart(String(n - 1).length, '0')}`;

/**
 * How long the process's main thread (its event loop) has waited for a CPU
 * while runnable, in ms (/proc/PID/schedstat, second field): on a shared
 * machine, the part of a latency that is other processes' doing.
 */
async function runQueueWaitMs(pid: number): Promise<number> {
  const text = await readFile(`/proc/${pid}/schedstat`, 'utf8').catch(() => '');
  const waited = Number(text.split(' ')[1]);
  return Number.isFinite(waited) ? waited / 1e6 : NaN;
}

/** Prometheus text → { 'name{labels}': value }. */
function parseMetrics(text: string): Record<string, number> {
  const out: Record<string, number> = {};
  for (const line of text.split('\n')) {
    const m = /^([a-z_]+(?:\{[^}]*\})?) (\S+)$/.exec(line);
    if (m) out[m[1]!] = Number(m[2]);
  }
  return out;
}

export async function runFleetCampaign(o: FleetOptions): Promise<FleetResult> {
  const started = Date.now();
  const dir = await tempDir('tandem-fleet-');
  const children: BenchChild[] = [];
  let real: RealAgents | undefined;
  const stopMonitor = new AbortController();
  try {
    o.log(`preparing releases ${V0}, ${V1}, ${V2} (${o.imageMiB} MiB images) in ${dir.path}`);
    const prep = await prepare(dir.path, o);

    const target = BenchChild.start('tandem-server', join(REPO, 'test', 'bench', 'lib', 'bench-target.ts'), ['tandem', prep.dataDir]);
    children.push(target);
    const url = String((await target.ready).url);
    const admin = new AdminClient(url, (await readFile(join(prep.dataDir, 'admin-token'), 'utf8')).trim());
    const statsAtStart = (await target.request('stats')) as unknown as TargetStats;

    const maxRate = 3600 / o.hourSeconds;
    const minRate = maxRate / 40;
    const defaults = await agentDefaults(join(dir.path, 'agents'), url, prep.rootPublicKey);
    const serverPoll = { intervalSeconds: DEFAULT_CONFIG.pollIntervalSeconds, jitter: DEFAULT_CONFIG.pollJitter };
    // The longest wait between two check-ins the two jitters allow: after it, every device has polled.
    const maxGap = Math.min(defaults.poll.maxSeconds, serverPoll.intervalSeconds * (1 + serverPoll.jitter)) * (1 + defaults.poll.jitter);
    const soak = maxGap + 120;
    const plan: FleetPlan = {
      url, product: PRODUCT, board: BOARD, channel: CHANNEL, factoryVersion: V0, failingVersion: V2, failBp: o.failBp,
      poll: defaults.poll, healthDeadlineSeconds: defaults.healthDeadlineSeconds, rootPublicKey: prep.rootPublicKey.toString('base64'),
      fullEvery: 100, rangeEvery: 10, resendEvery: 50,
    };

    real = await RealAgents.create({
      dir: join(dir.path, 'agents'), url, rootPublicKey: prep.rootPublicKey, image: prep.image0, version: V0, product: PRODUCT, board: BOARD,
      enrollToken: prep.enrollToken, count: o.agents, failingVersion: V2, failBp: o.failBp,
    }, defaults.poll);
    const workerCount = Math.max(1, Math.min(o.workers, o.devices));
    const workers = Array.from({ length: workerCount }, (_, w) => BenchChild.start(`fleet-worker-${w}`, join(REPO, 'test', 'campaigns', 'fleet-worker.ts')));
    children.push(...workers);
    await Promise.all(workers.map((w) => w.ready));
    const ids = Array.from({ length: o.devices }, (_, i) => deviceId(i, o.devices));
    const share = Math.ceil(o.devices / workerCount);
    const enrollStart = performance.now();
    o.log(`enrolling ${o.devices} devices over HTTP (${workerCount} workers) and ${real.ids.length} real agents (${real.ids.join(', ')})`);
    await Promise.all(workers.map((w, i) => w.request('enroll', { plan, ids: ids.slice(i * share, (i + 1) * share), token: prep.enrollToken })));
    const enrollSeconds = (performance.now() - enrollStart) / 1000;
    o.log(`enrolled in ${round(enrollSeconds, 1)} s (${Math.round(o.devices / enrollSeconds)}/s)`);
    const statsAfterEnroll = (await target.request('stats')) as unknown as TargetStats;
    const totalDevices = o.devices + real.ids.length;

    const workerProgress = () => Promise.all(workers.map(async (w) => (await w.request('progress')) as unknown as { tally: FleetTally; cpuUs: number }));
    const progress = async (): Promise<FleetTally> => mergeTallies([...(await workerProgress()).map((p) => p.tally), real!.ledger.tally]);

    // Every 10 s: the rate, who uses the CPU, how far the fleet is; the server's loop delay and GC peaks (each stats call starts a new window).
    const serverPeaks = { loopDelayP99Ms: statsAfterEnroll.loopDelayP99Ms, loopDelayMaxMs: statsAfterEnroll.loopDelayMaxMs, gcMaxMs: statsAfterEnroll.gcMaxMs };
    const serverStats = async (): Promise<TargetStats> => {
      const s = (await target.request('stats')) as unknown as TargetStats;
      serverPeaks.loopDelayP99Ms = Math.max(serverPeaks.loopDelayP99Ms, s.loopDelayP99Ms);
      serverPeaks.loopDelayMaxMs = Math.max(serverPeaks.loopDelayMaxMs, s.loopDelayMaxMs);
      serverPeaks.gcMaxMs = Math.max(serverPeaks.gcMaxMs, s.gcMaxMs);
      return s;
    };
    const clock = new SimClock(maxRate, real.signal);
    const monitor = async (): Promise<void> => {
      let last = { at: Date.now(), serverCpuUs: statsAfterEnroll.cpuUs, workerCpuUs: 0, checks: 0, serverWaitMs: await runQueueWaitMs(target.pid) };
      for (;;) {
        try {
          await sleep(10_000, undefined, { signal: stopMonitor.signal });
        } catch {
          return;
        }
        const sampled = await Promise.all([serverStats(), workerProgress()]).catch(() => undefined);
        if (sampled === undefined) return;
        const [s, parts] = sampled;
        const t = mergeTallies([...parts.map((p) => p.tally), real!.ledger.tally]);
        const now = { at: Date.now(), serverCpuUs: s.cpuUs, workerCpuUs: parts.reduce((sum, p) => sum + p.cpuUs, 0), checks: t.checks, serverWaitMs: await runQueueWaitMs(target.pid) };
        const wall = (now.at - last.at) / 1000;
        const pct = (us: number): number => Math.round(us / 1e4 / wall);
        o.log(`${round(clock.now() / 3600, 2)} h (x${Math.round(clock.rate)}): ${Math.round((now.checks - last.checks) / wall)} check-ins/s; CPU server ${pct(now.serverCpuUs - last.serverCpuUs)} %, devices ${last.workerCpuUs === 0 ? '-' : pct(now.workerCpuUs - last.workerCpuUs)} %; `
          + `server loop delay p99 ${s.loopDelayP99Ms} ms, waiting for a CPU ${Math.round((now.serverWaitMs - last.serverWaitMs) / 10 / wall)} %; installing ${t.inFlight}; load ${round(loadavg()[0]!, 1)}`);
        last = now;
      }
    };
    /**
     * The pace: a device's request should take a negligible time on the policy's scale, as it does in a real
     * fleet (milliseconds against an hour). When the server or this machine falls behind, latencies grow and
     * the clock slows until a request's p90 latency is at most `maxLagSeconds` of policy time; it speeds up
     * again, to `maxRate` at most, when they shrink. Policy figures stay right; only the wall time grows.
     */
    const paceLog = { minRate: maxRate, changes: 0 };
    const pace = async (): Promise<void> => {
      for (;;) {
        try {
          await sleep(500, undefined, { signal: stopMonitor.signal });
        } catch {
          return;
        }
        const windows = (await Promise.all(workers.map((w) => w.request('pace'))).catch(() => undefined)) as
          | { checks: number; checkP90Ms: number; events: number; eventP90Ms: number }[] | undefined;
        if (windows === undefined) return;
        const lagMs = Math.max(1, ...windows.flatMap((w) => [w.checks >= 5 ? w.checkP90Ms : 0, w.events >= 5 ? w.eventP90Ms : 0]));
        const wanted = (o.maxLagSeconds * 1000) / lagMs;
        const next = wanted < clock.rate ? Math.max(minRate, wanted) : Math.min(maxRate, clock.rate * 1.2, wanted);
        if (Math.abs(next - clock.rate) / clock.rate < 0.05) continue;
        const anchor = clock.setRate(next);
        paceLog.minRate = Math.min(paceLog.minRate, next);
        paceLog.changes++;
        await Promise.all(workers.map((w) => w.request('pace', { anchor }))).catch(() => undefined);
      }
    };
    const waitFor = async (what: string, done: (t: FleetTally) => boolean, timeoutPolicySeconds: number): Promise<FleetTally> => {
      const deadline = clock.now() + timeoutPolicySeconds;
      for (;;) {
        const t = await progress();
        if (done(t)) return t;
        if (clock.now() > deadline) throw new Error(`timed out waiting for ${what}: inFlight ${t.inFlight}, awaiting check-in ${t.awaitingCheckIn}, releases ${JSON.stringify(t.releases)}, failures ${JSON.stringify(t.failures)}`);
        await sleep(200);
      }
    };

    o.log(`${totalDevices} devices polling; one policy hour = ${o.hourSeconds} s at most (x${round(maxRate, 1)}), a stage soaks ${round(soak / 3600, 2)} policy hours`);
    const campaignStart = Date.now();
    const loadAtStart = loadavg()[0]!;
    const serverWaitAtStart = await runQueueWaitMs(target.pid);
    const anchor = clock.setRate(maxRate);
    await Promise.all(workers.map((w) => w.request('start', { anchor, quietUntil: o.quietHours * 3600 })));
    real.start(clock);
    const monitoring = Promise.all([monitor(), pace()]);

    // ---- A quiet start: check-ins only, nothing to offer; what a check-in alone costs the server. ----
    const quietStart = { cpuUs: (await serverStats()).cpuUs, checks: (await progress()).checks, wall: Date.now() };
    await waitFor('a quiet start', () => clock.now() >= o.quietHours * 3600, o.quietHours * 3600 * 2);
    const quiet = { cpuUs: (await serverStats()).cpuUs - quietStart.cpuUs, checks: (await progress()).checks - quietStart.checks };
    const quietWall = (Date.now() - quietStart.wall) / 1000;

    // ---- Release 1: 1 % → 10 % → 100 %, then every device checks in on it. ----
    const r1Stages: { percentage: string; offered: number; policyHours: number; wallSeconds: number; serverCpuPercent: number }[] = [];
    let start100: { policy: number; wall: number } | undefined;
    for (const percentage of o.stages) {
      const profile = percentage === '100%' ? process.env.TANDEM_FLEET_PROFILE : undefined;
      if (profile) await target.request('profile');
      const cpuBefore = (await serverStats()).cpuUs;
      await admin.setRollout(CHANNEL, V1, { percentage });
      const at = { policy: clock.now(), wall: Date.now() };
      if (percentage === '100%') start100 = at;
      o.log(`${V1} at ${percentage}`);
      await waitFor(`${V1} at ${percentage}`, (t) => clock.now() - at.policy >= soak && t.inFlight === 0, soak * 3);
      if (profile) {
        const path = join(profile, `fleet-server-${process.pid}.cpuprofile`);
        await target.request('profile', { path });
        o.log(`server CPU profile of the 100 % stage: ${path}`);
      }
      const serverCpuPercent = round(((await serverStats()).cpuUs - cpuBefore) / 1e4 / ((Date.now() - at.wall) / 1000), 0);
      const view = await admin.rollout(CHANNEL, V1);
      r1Stages.push({ percentage, offered: view.stats.offered, policyHours: round((clock.now() - at.policy) / 3600, 2), wallSeconds: round((Date.now() - at.wall) / 1000, 1), serverCpuPercent });
    }
    if (start100 === undefined) throw new Error('the stages must end at 100%');
    const adopted = await waitFor(`every device checking in on ${V1}`, (t) => (t.releases[V1]?.adopted ?? 0) === totalDevices && t.awaitingCheckIn === 0, soak * 2);
    const r1 = adopted.releases[V1]!;
    o.log(`${V1}: all ${totalDevices} devices committed ${round((r1.lastCommitAt - start100.policy) / 3600, 2)} policy hours after 100 %`);

    // ---- Release 2: fails on failBp of the devices; must halt itself. ----
    let halted: ReleaseView | undefined;
    const r2Stages: { percentage: string; offered: number; policyHours: number }[] = [];
    for (const [i, percentage] of o.stages.entries()) {
      const view0 = await admin.setRollout(CHANNEL, V2, i === 0 ? { percentage, failureThresholdBp: o.thresholdBp, minAttempts: o.minAttempts } : { percentage });
      if (view0.rollout.state === 'halted') {
        halted = view0;
        break;
      }
      const at = clock.now();
      o.log(`${V2} at ${percentage} (auto-halt above ${o.thresholdBp / 100} % failed, at least ${o.minAttempts} attempts)`);
      for (;;) {
        const view = await admin.rollout(CHANNEL, V2);
        if (view.rollout.state === 'halted') {
          halted = view;
          break;
        }
        const t = await progress();
        if (clock.now() - at >= soak && t.inFlight === 0) break;
        if (clock.now() - at > soak * 3) throw new Error(`${V2} at ${percentage}: devices still installing after ${round(soak * 3 / 3600, 1)} policy hours`);
        await sleep(200);
      }
      r2Stages.push({ percentage, offered: (halted ?? (await admin.rollout(CHANNEL, V2))).stats.offered, policyHours: round((clock.now() - at) / 3600, 2) });
      if (halted) break;
    }
    const haltObserved = clock.now();
    o.log(halted ? `${V2} halted: ${halted.rollout.haltReason}` : `${V2} did not halt`);
    // Devices already installing finish; every device polls once more after the halt; those that committed check in on it.
    await waitFor('the fleet to settle after the halt', (t) => clock.now() - haltObserved >= soak && t.inFlight === 0 && t.awaitingCheckIn === 0, soak * 3);
    const campaignWall = (Date.now() - campaignStart) / 1000;
    const campaignPolicy = clock.now();
    const serverWaitSeconds = ((await runQueueWaitMs(target.pid)) - serverWaitAtStart) / 1000;

    // ---- Stop, then compare. ----
    stopMonitor.abort();
    await monitoring;
    await real.stop();
    const finals = (await Promise.all(workers.map((w) => w.request('finish')))) as unknown as {
      tally: FleetTally; cpuUs: number; latencies: number[]; eventLatencies: number[]; quietLatencies: number[]; healthRuleBroken: string[]; offerTimes: [number, number][]; outcomeTimes: [number, number][];
      loopDelayP99Ms: number; loopDelayMaxMs: number; verifier: { full: number; fast: number };
    }[];
    const statsAtEnd = await serverStats();
    const tally = mergeTallies([...finals.map((f) => f.tally), real.ledger.tally]);
    const [status] = await admin.status({ channel: CHANNEL });
    const serverDevices: { version: string | null; checkCount: number }[] = [];
    for (let after: string | undefined; ;) {
      const page = await admin.devices({ channel: CHANNEL, limit: 1000, ...(after === undefined ? {} : { after }) });
      serverDevices.push(...page);
      if (page.length < 1000) break;
      after = page.at(-1)!.id;
    }
    const metrics = parseMetrics(await (await request(`${url}/metrics`)).body.text());
    const autoHalts = (await admin.audit(1000)).filter((a) => a.action === 'rollout.auto-halt');

    const invariants: Invariant[] = [];
    const check = (name: string, ok: boolean, detail: string): void => void invariants.push({ name, ok, detail });

    // Exact accounting: per release, every stat the server keeps against the ledger.
    const mismatches: string[] = [];
    let compared = 0;
    const same = (what: string, server: number, sim: number): void => {
      compared++;
      if (server !== sim) mismatches.push(`${what}: server ${server}, simulation ${sim}`);
    };
    const releaseViews = new Map((status?.releases ?? []).map((r) => [r.version, r]));
    for (const version of [V0, V1, V2]) {
      const stats = releaseViews.get(version)?.stats as ReleaseStats | undefined;
      const sim = tally.releases[version] ?? emptyRelease();
      for (const field of STAT_FIELDS) same(`${version} ${field}`, stats?.[field] ?? -1, sim[field]);
    }
    const serverAdoption: Record<string, number> = {};
    for (const a of status?.adoption ?? []) serverAdoption[a.version ?? 'none'] = a.devices;
    for (const version of new Set([...Object.keys(serverAdoption), ...Object.keys(tally.running)])) {
      same(`devices running ${version}`, serverAdoption[version] ?? 0, tally.running[version] ?? 0);
    }
    same('devices enrolled', serverDevices.length, totalDevices);
    same('check-ins (sum of devices\' checkCount)', serverDevices.reduce((s, d) => s + d.checkCount, 0), tally.checks);
    same('tandem_checks_total{result="update"}', metrics['tandem_checks_total{result="update"}'] ?? 0, tally.updates);
    same('tandem_checks_total{result="noUpdate"}', metrics['tandem_checks_total{result="noUpdate"}'] ?? 0, tally.noUpdates);
    same('event batches: server accepted (first sends)', tally.serverAccepted, Object.values(tally.events).reduce((s, n) => s + n, 0));
    same('event batches sent again: accepted again', tally.resentAcceptedAgain, 0);
    check('server stats equal the simulation\'s count exactly', mismatches.length === 0, mismatches.length === 0 ? `${compared} figures equal` : mismatches.join('; '));

    // The metrics' events counter, separately: it is not what the rollout decisions read.
    const metricMismatches: string[] = [];
    for (const type of new Set([...Object.keys(tally.events), ...Object.keys(metrics).filter((k) => k.startsWith('tandem_events_total{')).map((k) => /type="([^"]+)"/.exec(k)![1]!)])) {
      const server = metrics[`tandem_events_total{type="${type}"}`] ?? 0;
      const sim = tally.events[type] ?? 0;
      if (server !== sim) metricMismatches.push(`tandem_events_total{type="${type}"}: ${server}, events accepted ${sim}`);
    }
    check('tandem_events_total counts each accepted event once', metricMismatches.length === 0,
      metricMismatches.length === 0 ? 'equal' : `${metricMismatches.join('; ')} (${tally.resentEvents} events were sent again after their 2xx and answered as duplicates)`);

    const httpFailures = Object.entries(tally.failures);
    check('no 5xx, no failed request', httpFailures.length === 0, httpFailures.length === 0 ? 'none' : JSON.stringify(tally.failures));
    const serverErrors = Object.entries(metrics).filter(([k]) => k.startsWith('tandem_http_errors_total'));
    check('server counted no error responses', serverErrors.length === 0, serverErrors.length === 0 ? 'none' : JSON.stringify(Object.fromEntries(serverErrors)));
    check('every check response verified', Object.keys(tally.refused).length === 0, JSON.stringify(tally.refused));
    check('sampled payload fetches matched the offer', tally.payloadMismatches === 0, `${tally.payloadFull} whole (sha256), ${tally.payloadRange} Range, ${tally.payloadMismatches} mismatched`);
    const healthRuleBroken = [...finals.flatMap((f) => f.healthRuleBroken),
      ...real.ledger.outcomesOf(V2).filter((x) => x.failed !== healthFails(x.id, o.failBp)).map((x) => x.id)];
    check(`exactly the devices whose health checks fail rolled ${V2} back`, healthRuleBroken.length === 0,
      healthRuleBroken.length === 0 ? `${tally.releases[V2]?.rolledBack ?? 0} of ${tally.releases[V2]?.attempts ?? 0}` : healthRuleBroken.slice(0, 10).join(', '));
    check('real agents ran without a failed cycle', real.errors.length === 0, real.errors.length === 0 ? JSON.stringify(real.results) : real.errors.slice(0, 5).join('; '));

    // Release 1 reached every device.
    const v1View = releaseViews.get(V1);
    check(`${V1} adopted by every device`, (serverAdoption[V1] ?? 0) + (tally.releases[V2]?.adopted ?? 0) === totalDevices && r1.committed === totalDevices,
      `${r1.committed} of ${totalDevices} committed; rollout ${v1View?.rollout.state}`);

    // Release 2 halted itself at the threshold.
    const reason = halted?.rollout.haltReason ?? '';
    const m = /auto-halted: (\d+) of (\d+) devices failed/.exec(reason);
    const [haltFailed, haltAttempts] = m ? [Number(m[1]), Number(m[2])] : [NaN, NaN];
    const haltAt = halted ? Date.parse(halted.rollout.updatedAt) : NaN;
    const offerTimes = [...finals.flatMap((f) => f.offerTimes), ...real.ledger.offerTimes];
    const outcomeTimes = [...finals.flatMap((f) => f.outcomeTimes), ...real.ledger.outcomeTimes].sort((a, b) => a[0] - b[0]);
    // The first point, in the order the simulation saw its outcomes acknowledged, where the rule says halt.
    let firstHaltPoint: { attempts: number; failures: number } | undefined;
    for (let i = 0, f = 0; i < outcomeTimes.length; i++) {
      f += outcomeTimes[i]![1];
      if (i + 1 >= o.minAttempts && f * 10_000 > o.thresholdBp * (i + 1)) {
        firstHaltPoint = { attempts: i + 1, failures: f };
        break;
      }
    }
    const offersSentAfterHalt = offerTimes.filter(([sentAt]) => sentAt > haltAt + 1).length;
    const offeredBeforeHalt = offerTimes.filter(([sentAt]) => sentAt <= haltAt + 1).length;
    const r2 = tally.releases[V2];
    check(`${V2} halted itself`, halted !== undefined && halted.rollout.updatedBy === 'system' && autoHalts.length === 1, halted ? `${reason} (by ${halted.rollout.updatedBy}; ${autoHalts.length} auto-halt audit entries)` : 'never halted');
    check(`${V2} halted at the threshold`, m !== null && haltAttempts >= o.minAttempts && haltFailed * 10_000 > o.thresholdBp * haltAttempts
      && firstHaltPoint !== undefined && Math.abs(haltAttempts - firstHaltPoint.attempts) <= 3,
    `server: ${haltFailed} of ${haltAttempts}; the rule first holds at ${firstHaltPoint ? `${firstHaltPoint.failures} of ${firstHaltPoint.attempts}` : 'never'} in the order the simulation saw outcomes acknowledged`);
    check(`no ${V2} offer after the halt`, halted !== undefined && offersSentAfterHalt === 0, `${offersSentAfterHalt} offers to check-ins sent after the halt`);
    check(`${V1} did not halt`, v1View?.rollout.state === 'complete', `${v1View?.rollout.state}`);

    // ---- Figures ----
    const latency = latencySummary(finals.flatMap((f) => f.latencies));
    const cpuSeconds = (statsAtEnd.cpuUs - statsAfterEnroll.cpuUs) / 1e6;
    const enrollCpuSeconds = (statsAfterEnroll.cpuUs - statsAtStart.cpuUs) / 1e6;
    const meanPoll = tally.pollGaps.count ? tally.pollGaps.sum / tally.pollGaps.count : NaN;
    const requests = tally.checks + tally.eventPosts + tally.resentBatches + tally.payloadFull + tally.payloadRange;
    const cpuMsPerRequest = (cpuSeconds * 1000) / requests;
    const millionRate = 1_000_000 / meanPoll;
    const checkinCpuMs = quiet.checks > 0 ? quiet.cpuUs / 1000 / quiet.checks : NaN;
    const eventLatency = latencySummary(finals.flatMap((f) => f.eventLatencies));
    const quietLatency = latencySummary(finals.flatMap((f) => f.quietLatencies));
    // Policy seconds (what the polling policy makes of it) and wall seconds (what this compressed run took).
    const to100 = {
      commit: { policy: r1.lastCommitAt - start100.policy, wall: (r1.lastCommitWall - start100.wall) / 1000 },
      checkIn: { policy: r1.lastAdoptAt - start100.policy, wall: (r1.lastAdoptWall - start100.wall) / 1000 },
    };
    const effectiveRate = campaignPolicy / campaignWall;
    const elapsedSeconds = round((Date.now() - started) / 1000, 1);
    const workerCpuSeconds = finals.reduce((s, f) => s + f.cpuUs, 0) / 1e6;
    const summary = {
      devices: o.devices,
      realAgents: real.ids.length,
      workers: workerCount,
      clock: {
        fastestPolicyHourWallSeconds: o.hourSeconds, maxRate: round(maxRate, 1), slowestRate: round(paceLog.minRate, 1), rateChanges: paceLog.changes,
        effectiveRate: round(effectiveRate, 1), policyHours: round(campaignPolicy / 3600, 2), maxLagPolicySeconds: o.maxLagSeconds,
      },
      policy: { serverPollSeconds: serverPoll.intervalSeconds, serverJitter: serverPoll.jitter, agentJitter: defaults.poll.jitter, maxGapSeconds: round(maxGap) },
      elapsedSeconds,
      setupSeconds: round((campaignStart - started) / 1000, 1),
      campaignWallSeconds: round(campaignWall, 1),
      enroll: { devices: o.devices, seconds: round(enrollSeconds, 2), perSecond: Math.round(o.devices / enrollSeconds), serverCpuSeconds: round(enrollCpuSeconds, 2) },
      server: {
        cpuSeconds: round(cpuSeconds, 1),
        cpuPercent: round((cpuSeconds / campaignWall) * 100, 1),
        cpuMsPerRequest: round(cpuMsPerRequest, 3),
        // Runnable but waiting for a CPU other processes held (its event loop thread): the machine's share of the latencies.
        runQueueWaitSeconds: round(serverWaitSeconds, 1),
        runQueueWaitPercent: round((serverWaitSeconds / campaignWall) * 100, 1),
        peakRssMiB: round(statsAtEnd.peakRssBytes / 2 ** 20, 1),
        rssAtEndMiB: round(statsAtEnd.rssBytes / 2 ** 20, 1),
        ...serverPeaks,
      },
      checkins: {
        total: tally.checks,
        perSecond: Math.round(tally.checks / campaignWall),
        p50Ms: latency.p50,
        p99Ms: latency.p99,
        maxMs: latency.max,
        // The quiet start alone: check-ins at the full rate, nothing offered.
        steady: { count: quietLatency.count, perSecond: Math.round(quiet.checks / quietWall), p50Ms: quietLatency.p50, p99Ms: quietLatency.p99, maxMs: quietLatency.max },
        updates: tally.updates,
        meanPollPolicySeconds: round(meanPoll, 1),
        minPollPolicySeconds: round(tally.pollGaps.min, 1),
        maxPollPolicySeconds: round(tally.pollGaps.max, 1),
      },
      events: { p50Ms: eventLatency.p50, p99Ms: eventLatency.p99, maxMs: eventLatency.max, posts: tally.eventPosts, accepted: tally.serverAccepted, byType: tally.events, resentBatches: tally.resentBatches, resentEvents: tally.resentEvents },
      payloads: { wholeFetches: tally.payloadFull, rangeFetches: tally.payloadRange, bytes: tally.payloadBytes, sizes: prep.payloads },
      release1: {
        version: V1,
        stages: r1Stages,
        offered: r1.offered,
        committed: r1.committed,
        timeTo100Percent: {
          policyHours: round(to100.commit.policy / 3600, 2),
          simSeconds: round(to100.commit.wall, 1),
          allCheckedInPolicyHours: round(to100.checkIn.policy / 3600, 2),
          allCheckedInSimSeconds: round(to100.checkIn.wall, 1),
        },
      },
      release2: {
        version: V2,
        failBp: o.failBp,
        thresholdBp: o.thresholdBp,
        minAttempts: o.minAttempts,
        stages: r2Stages,
        halted: halted !== undefined,
        haltReason: reason,
        haltAt: { failed: haltFailed, attempts: haltAttempts, ruleFirstHolds: firstHaltPoint ?? null },
        offeredBeforeHalt,
        offersAfterHalt: offersSentAfterHalt,
        offered: r2?.offered ?? 0,
        committed: r2?.committed ?? 0,
        rolledBack: r2?.rolledBack ?? 0,
      },
      accounting: { exact: mismatches.length === 0, figuresCompared: compared, mismatches, metricsEventsCounter: metricMismatches },
      http5xx: Object.entries(tally.failures).filter(([k]) => / 5\d\d$/.test(k)).reduce((s, [, n]) => s + n, 0),
      million: {
        meanPollSeconds: round(meanPoll, 1),
        checkinsPerSecond: Math.round(millionRate),
        nominalCheckinsPerSecond: Math.round(1_000_000 / serverPoll.intervalSeconds),
        serverCpuMsPerCheckin: round(checkinCpuMs, 3),
        serverCoresForCheckins: round((millionRate * checkinCpuMs) / 1000, 2),
        checkinsMeasured: quiet.checks,
      },
      fleetSide: {
        workerCpuSeconds: round(workerCpuSeconds, 1),
        workerLoopDelayP99Ms: Math.max(...finals.map((f) => f.loopDelayP99Ms)),
        responsesVerifiedByAgentCode: finals.reduce((s, f) => s + f.verifier.full, 0),
        responsesVerifiedMemoized: finals.reduce((s, f) => s + f.verifier.fast, 0),
        realAgentCycles: real.results,
      },
      // The machine is shared: latencies and CPU figures mean more next to how busy it was.
      loadAverage: { cores: availableParallelism(), atStart: round(loadAtStart, 2), atEnd: round(loadavg()[0]!, 2) },
      invariants: Object.fromEntries(invariants.map((i) => [i.name, i.ok])),
    };
    const table = {
      head: ['measure', 'value'],
      rows: [
        ['devices', `${o.devices} simulated (${workerCount} processes) + ${real.ids.length} real agents`],
        ['policy', `poll ${serverPoll.intervalSeconds} s ±${serverPoll.jitter * 100} % (server) ±${defaults.poll.jitter * 100} % (agent)`],
        ['clock', `x${round(effectiveRate, 1)} on average (fastest x${round(maxRate, 1)}: 1 h in ${o.hourSeconds} s; slowest x${round(paceLog.minRate, 1)})`],
        ['elapsed', `${elapsedSeconds} s; campaign ${round(campaignWall, 1)} s = ${round(campaignPolicy / 3600, 2)} policy hours; load average ${round(loadAtStart, 1)} → ${round(loadavg()[0]!, 1)} on ${availableParallelism()} cores`],
        ['enrollment', `${o.devices} over HTTP in ${round(enrollSeconds, 1)} s (${Math.round(o.devices / enrollSeconds)}/s)`],
        ['server CPU', `${round(cpuSeconds, 1)} s = ${round((cpuSeconds / campaignWall) * 100, 1)} % of one core (${round(cpuMsPerRequest, 3)} ms per request); its event loop waited ${round(serverWaitSeconds, 1)} s (${round((serverWaitSeconds / campaignWall) * 100, 1)} %) for a CPU held by other processes (the fleet's included)`],
        ['server RSS', `peak ${round(statsAtEnd.peakRssBytes / 2 ** 20, 1)} MiB, at end ${round(statsAtEnd.rssBytes / 2 ** 20, 1)} MiB`],
        ['check-ins', `${tally.checks} (${Math.round(tally.checks / campaignWall)}/s wall), p50 ${latency.p50} ms, p99 ${latency.p99} ms, max ${latency.max} ms`],
        ['check-ins, quiet start', `${quietLatency.count} at ${Math.round(quiet.checks / quietWall)}/s, nothing offered: p50 ${quietLatency.p50} ms, p99 ${quietLatency.p99} ms; server ${round(checkinCpuMs, 2)} ms CPU each`],
        ['event batches', `${tally.eventPosts} (+${tally.resentBatches} sent again), p50 ${eventLatency.p50} ms, p99 ${eventLatency.p99} ms, max ${eventLatency.max} ms`],
        ['poll interval', `mean ${round(meanPoll, 0)} s, min ${round(tally.pollGaps.min, 0)} s, max ${round(tally.pollGaps.max, 0)} s (policy)`],
        [`${V1} stages`, r1Stages.map((s) => `${s.percentage}: ${s.offered} offered so far, ${s.policyHours} h (${s.wallSeconds} s, server CPU ${s.serverCpuPercent} %)`).join(' → ')],
        [`${V1} time to 100 %`, `all committed ${round(to100.commit.policy / 3600, 2)} policy hours after 100 % (${round(to100.commit.wall, 1)} s of this run); all checked in on it ${round(to100.checkIn.policy / 3600, 2)} h (${round(to100.checkIn.wall, 1)} s)`],
        [`${V2} halt`, halted ? `${reason}` : 'DID NOT HALT'],
        [`${V2} reach`, `${offeredBeforeHalt} offered before the halt, ${offersSentAfterHalt} after; ${r2?.committed ?? 0} committed, ${r2?.rolledBack ?? 0} rolled back`],
        ['accounting', mismatches.length === 0 ? `exact: ${compared} figures equal` : `MISMATCH: ${mismatches.join('; ')}`],
        ['events counter', metricMismatches.length === 0 ? 'equal' : metricMismatches.join('; ')],
        ['5xx / failed requests', httpFailures.length === 0 ? '0' : JSON.stringify(tally.failures)],
        ['1,000,000 devices', `${Math.round(millionRate)} check-ins/s (1e6 / mean poll ${round(meanPoll, 0)} s); at ${round(checkinCpuMs, 2)} ms of server CPU per check-in (measured with check-ins only) ~${round((millionRate * checkinCpuMs) / 1000, 2)} cores`],
        ...invariants.filter((i) => !i.ok).map((i) => [`FAILED: ${i.name}`, i.detail]),
      ],
    };
    return { summary, table, invariants };
  } finally {
    stopMonitor.abort();
    await real?.stop().catch(() => undefined);
    await Promise.all(children.map((c) => c.stop().catch(() => undefined)));
    if (!process.env.TANDEM_FLEET_KEEP) await dir.remove();
  }
}
