/**
 * Check-in throughput and latency (issue 4): 1,000 distinct enrolled devices
 * polling POST /v1/check over loopback, against a bare koa route returning a
 * constant JSON body, measured in the same run with the same requests (the
 * bare route ignores the body). Target: at least 0.3x the bare route's
 * throughput, p99 under 50 ms. Half the devices are in the rollout, so half
 * the answers carry an update offer with its manifest.
 *
 * The server (and the baseline) runs in one child process and the load
 * generator in another (lib/bench-child.ts says why). Two lines:
 * - `server-checkin`, capacity: a closed loop with `inFlight` requests
 *   outstanding (default 32, a reverse proxy's upstream pool; 1,000 devices
 *   each polling back to back would be a flood, not a fleet), request n
 *   speaking for device n mod 1,000. Each target is measured `rounds` times,
 *   alternating, after a warm-up; the line has the median round of each. At
 *   saturation, latency is mostly the wait behind the other 31 requests
 *   (Little's law: inFlight / throughput), so its p99 says more about the
 *   queue than the server.
 * - `server-checkin-latency`, a fleet: the same devices polling at random
 *   (Poisson) times at half the update server's measured capacity, latency
 *   taken from each poll's scheduled time; the same arrivals go to the bare
 *   route. A real fleet of 1,000 polling hourly sends 0.3 check-ins/s, so this
 *   is already thousands of times busier.
 * Both report the generator's and the server's CPU use (a generator near 1.0
 * means it, not the server, set the pace).
 *
 * The update server runs from an esbuild bundle, as `npm start` runs it (`serverBuild`; lib/bench-target.ts
 * says why; TANDEM_FROM_SOURCE=1 runs it from source under tsx).
 *
 * Run: node --import tsx test/bench/server-checkin.ts [devices=1000] [seconds=4] [inFlight=32] [rounds=3]
 * With TANDEM_BENCH_PROFILE=DIR, the update server writes a CPU profile of its last closed-loop round there.
 */
import { loadavg } from 'node:os';
import { join } from 'node:path';
import { BenchChild } from './lib/bench-child.ts';
import { prepareFleet } from './lib/bench-fleet.ts';
import { emit, REPO, round } from './lib/bench-kit.ts';
import type { LoadPlan, LoadResult } from './lib/load-generator.ts';
import type { TargetStats } from './lib/bench-target.ts';
import { measureTarget } from './lib/measure-target.ts';

const DEVICES = Number(process.argv[2] ?? 1000);
const SECONDS = Number(process.argv[3] ?? 4);
const IN_FLIGHT = Number(process.argv[4] ?? 32);
const ROUNDS = Number(process.argv[5] ?? 3);
const LIB = join(REPO, 'test', 'bench', 'lib');
const profileDir = process.env.TANDEM_BENCH_PROFILE;

interface Measured {
  load: LoadResult;
  serverCpu: number;
  cpuMsPerRequest: number;
  server: TargetStats;
}

async function measure(target: BenchChild, loader: BenchChild, plan: LoadPlan, profile?: string): Promise<Measured> {
  const run = await measureTarget(target, loader, plan, profile);
  return { load: run.load, server: run.server, serverCpu: round(run.cpuMs / run.wallMs, 2), cpuMsPerRequest: round(run.cpuMs / run.load.total, 3) };
}

const median = (runs: Measured[]): Measured => [...runs].sort((a, b) => a.load.rps - b.load.rps)[Math.floor(runs.length / 2)]!;

const fleet = await prepareFleet({ devices: DEVICES, imageMiB: 4, rolloutPercent: 50 });
const children: BenchChild[] = [];
try {
  const tandem = BenchChild.start('tandem-server', join(LIB, 'bench-target.ts'), ['tandem', fleet.dataDir]);
  const bare = BenchChild.start('bare-koa', join(LIB, 'bench-target.ts'), ['bare-koa']);
  const loader = BenchChild.start('load-generator', join(LIB, 'load-generator.ts'));
  children.push(tandem, bare, loader);
  const [tandemUrl, bareUrl] = await Promise.all([tandem.ready, bare.ready, loader.ready].map(async (r) => String((await r).url)));
  const serverBuild = (await tandem.ready).build;
  const plan = (url: string, path: string): LoadPlan => ({ mode: 'checkin', url, path, devices: DEVICES, version: '0.9.0', inFlight: IN_FLIGHT, warmupMs: 1000, durationMs: SECONDS * 1000 });

  const runs = { tandem: [] as Measured[], bare: [] as Measured[] };
  for (let r = 0; r < ROUNDS; r++) {
    runs.bare.push(await measure(bare, loader, plan(bareUrl!, '/')));
    const profile = profileDir && r === ROUNDS - 1 ? join(profileDir, `server-checkin-${process.pid}.cpuprofile`) : undefined;
    runs.tandem.push(await measure(tandem, loader, plan(tandemUrl!, '/v1/check'), profile));
  }
  const ours = median(runs.tandem);
  const base = median(runs.bare);
  emit({
    bench: 'server-checkin',
    devices: DEVICES,
    model: `closed loop, ${IN_FLIGHT} requests in flight`,
    inFlight: IN_FLIGHT,
    baseline: 'bare koa route, constant JSON body, same requests',
    serverBuild,
    rps: Math.round(ours.load.rps),
    baselineRps: Math.round(base.load.rps),
    ratio: round(ours.load.rps / base.load.rps),
    p50Ms: ours.load.latencyMs.p50,
    p99Ms: ours.load.latencyMs.p99,
    maxMs: ours.load.latencyMs.max,
    baselineP50Ms: base.load.latencyMs.p50,
    baselineP99Ms: base.load.latencyMs.p99,
    serverCpu: ours.serverCpu,
    serverLoopDelayMaxMs: ours.server.loopDelayMaxMs,
    serverGcMaxMs: ours.server.gcMaxMs,
    serverCpuMsPerRequest: ours.cpuMsPerRequest,
    baselineServerCpuMsPerRequest: base.cpuMsPerRequest,
    generatorCpu: ours.load.generatorCpu,
    baselineServerCpu: base.serverCpu,
    baselineGeneratorCpu: base.load.generatorCpu,
    offered: ours.load.sampled ? round(ours.load.sampled.updates / Math.max(1, ours.load.sampled.responses), 2) : null,
    rounds: ROUNDS,
    secondsPerRound: SECONDS,
    allRoundsRps: { tandem: runs.tandem.map((m) => Math.round(m.load.rps)), bare: runs.bare.map((m) => Math.round(m.load.rps)) },
    loadAverage: round(loadavg()[0]!, 2),
    target: { ratio: 0.3, p99Ms: 50 },
  });

  const rate = Math.round(ours.load.rps / 2);
  const fleetPlan = (url: string, path: string): LoadPlan => ({ ...plan(url, path), ratePerSec: rate, inFlight: 256 });
  const fleetBase = await measure(bare, loader, fleetPlan(bareUrl!, '/'));
  const fleetOurs = await measure(tandem, loader, fleetPlan(tandemUrl!, '/v1/check'));
  emit({
    bench: 'server-checkin-latency',
    devices: DEVICES,
    model: 'open loop, Poisson arrivals at half the measured capacity, latency from the scheduled time',
    ratePerSec: rate,
    baseline: 'bare koa route, same arrivals',
    rps: Math.round(fleetOurs.load.rps),
    p50Ms: fleetOurs.load.latencyMs.p50,
    p99Ms: fleetOurs.load.latencyMs.p99,
    p999Ms: fleetOurs.load.latencyMs.p999,
    maxMs: fleetOurs.load.latencyMs.max,
    baselineP50Ms: fleetBase.load.latencyMs.p50,
    baselineP99Ms: fleetBase.load.latencyMs.p99,
    serverCpu: fleetOurs.serverCpu,
    generatorCpu: fleetOurs.load.generatorCpu,
    serverLoopDelayMaxMs: fleetOurs.server.loopDelayMaxMs,
    serverGcMaxMs: fleetOurs.server.gcMaxMs,
    secondsPerRound: SECONDS,
    loadAverage: round(loadavg()[0]!, 2),
    target: { p99Ms: 50 },
  });
} finally {
  await Promise.all(children.map((c) => c.stop()));
  await fleet.remove();
}
