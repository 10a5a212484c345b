/**
 * Check-in throughput and latency (issue 4): 1,000 distinct enrolled devices
 * polling POST /v1/check over loopback, against a bare koa route returning a
 * constant JSON body, measured in the same run with the same requests (the
 * bare route ignores the body). Target: at least 0.3x the bare route's
 * throughput, p99 under 50 ms.
 *
 * The server (and the baseline) runs in one child process and the load
 * generator in another (lib/bench-child.ts says why). The fleet is modelled
 * as a closed loop with a bounded number of requests in flight, `inFlight`
 * (default 32: what a fleet polling every hour with jitter, or a reverse
 * proxy's upstream pool, keeps open at once; 1,000 devices polling back to
 * back would be a DoS, not a fleet): request n speaks for device n mod 1,000.
 * Each target is measured `rounds` times, alternating, after a warm-up; the
 * line reports the median round of each, with p50 and p99 from the generator
 * and both processes' CPU use (a generator near 1.0 means it, not the
 * server, set the pace).
 *
 * Run: node --import tsx test/bench/server-checkin.ts [devices=1000] [seconds=4] [inFlight=32] [rounds=3]
 * With TANDEM_BENCH_PROFILE=DIR, the update server writes a CPU profile of its last round there.
 */
import { join } from 'node:path';
import { BenchChild } from './lib/bench-child.ts';
import { prepareFleet } from './lib/bench-fleet.ts';
import { emit, REPO, round } from './lib/bench-kit.ts';
import type { LoadPlan, LoadResult } from './lib/load-generator.ts';
import type { TargetStats } from './lib/bench-target.ts';

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
}

async function measureTarget(target: BenchChild, loader: BenchChild, plan: LoadPlan, profile?: string): Promise<Measured> {
  if (profile) await target.request('profile');
  const before = (await target.request('stats')) as unknown as TargetStats;
  const t0 = performance.now();
  const { result } = (await loader.request('run', { plan })) as unknown as { result: LoadResult };
  const wallMs = performance.now() - t0;
  const after = (await target.request('stats')) as unknown as TargetStats;
  if (profile) await target.request('profile', { path: profile });
  const cpuMs = (after.cpuUs - before.cpuUs) / 1000;
  return { load: result, serverCpu: round(cpuMs / wallMs, 2), cpuMsPerRequest: round(cpuMs / result.total, 3) };
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
  const plan = (url: string, path: string): LoadPlan => ({ mode: 'checkin', url, path, devices: DEVICES, version: '0.9.0', inFlight: IN_FLIGHT, warmupMs: 1000, durationMs: SECONDS * 1000 });

  const runs = { tandem: [] as Measured[], bare: [] as Measured[] };
  for (let r = 0; r < ROUNDS; r++) {
    runs.bare.push(await measureTarget(bare, loader, plan(bareUrl!, '/')));
    const profile = profileDir && r === ROUNDS - 1 ? join(profileDir, `server-checkin-${process.pid}.cpuprofile`) : undefined;
    runs.tandem.push(await measureTarget(tandem, loader, plan(tandemUrl!, '/v1/check'), profile));
  }
  const ours = median(runs.tandem);
  const base = median(runs.bare);
  emit({
    bench: 'server-checkin',
    devices: DEVICES,
    inFlight: IN_FLIGHT,
    baseline: 'bare koa route, constant JSON body, same requests',
    rps: Math.round(ours.load.rps),
    baselineRps: Math.round(base.load.rps),
    ratio: round(ours.load.rps / base.load.rps),
    p50Ms: ours.load.latencyMs.p50,
    p99Ms: ours.load.latencyMs.p99,
    maxMs: ours.load.latencyMs.max,
    baselineP50Ms: base.load.latencyMs.p50,
    baselineP99Ms: base.load.latencyMs.p99,
    serverCpu: ours.serverCpu,
    serverCpuMsPerRequest: ours.cpuMsPerRequest,
    baselineServerCpuMsPerRequest: base.cpuMsPerRequest,
    generatorCpu: ours.load.generatorCpu,
    baselineServerCpu: base.serverCpu,
    baselineGeneratorCpu: base.load.generatorCpu,
    offered: ours.load.sampled ? round(ours.load.sampled.updates / Math.max(1, ours.load.sampled.responses), 2) : null,
    rounds: ROUNDS,
    secondsPerRound: SECONDS,
    allRoundsRps: { tandem: runs.tandem.map((m) => Math.round(m.load.rps)), bare: runs.bare.map((m) => Math.round(m.load.rps)) },
    target: { ratio: 0.3, p99Ms: 50 },
  });
} finally {
  await Promise.all(children.map((c) => c.stop()));
  await fleet.remove();
}
