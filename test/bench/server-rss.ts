/**
 * Server memory (issue 4): resident set of the update server after 100,000
 * enrolled devices have each checked in once over real HTTP (POST /v1/check,
 * loopback, 64 in flight). The devices are enrolled in bulk in a setup phase
 * (lib/bench-fleet.ts) by a server that is then stopped, so the measured
 * server starts fresh on the populated database. Half of them are in the
 * rollout and get an update offer.
 *
 * Baselines from the same run: the same server on the same database before
 * any check-in (the ratio: what serving the fleet added), and a bare koa
 * process (what any koa server costs). Also the peak (VmHWM) and the live
 * JS heap after a full collection, which tells retained memory from garbage
 * not yet collected.
 *
 * Run: node --import tsx test/bench/server-rss.ts [devices=100000] [inFlight=64]
 */
import { loadavg } from 'node:os';
import { join } from 'node:path';
import { BenchChild } from './lib/bench-child.ts';
import { prepareFleet } from './lib/bench-fleet.ts';
import { emit, REPO, round } from './lib/bench-kit.ts';
import type { LoadPlan, LoadResult } from './lib/load-generator.ts';
import type { TargetStats } from './lib/bench-target.ts';

const DEVICES = Number(process.argv[2] ?? 100_000);
const IN_FLIGHT = Number(process.argv[3] ?? 64);
const LIB = join(REPO, 'test', 'bench', 'lib');
const mib = (bytes: number): number => round(bytes / 1024 / 1024, 1);

const setupStarted = performance.now();
const fleet = await prepareFleet({ devices: DEVICES, imageMiB: 4, rolloutPercent: 50 });
const setupSeconds = (performance.now() - setupStarted) / 1000;
const children: BenchChild[] = [];
try {
  const tandem = BenchChild.start('tandem-server', join(LIB, 'bench-target.ts'), ['tandem', fleet.dataDir], ['--expose-gc']);
  const bare = BenchChild.start('bare-koa', join(LIB, 'bench-target.ts'), ['bare-koa'], ['--expose-gc']);
  const loader = BenchChild.start('load-generator', join(LIB, 'load-generator.ts'));
  children.push(tandem, bare, loader);
  const [tandemUrl] = await Promise.all([tandem.ready, bare.ready, loader.ready].map(async (r) => String((await r).url)));

  const atStart = (await tandem.request('stats')) as unknown as TargetStats;
  const bareStats = (await bare.request('stats')) as unknown as TargetStats;
  const plan: LoadPlan = { mode: 'checkin', url: tandemUrl!, path: '/v1/check', devices: DEVICES, version: '0.9.0', oncePerDevice: true, inFlight: IN_FLIGHT, warmupMs: 0, durationMs: 0 };
  const { result } = (await loader.request('run', { plan })) as unknown as { result: LoadResult };
  const after = (await tandem.request('stats')) as unknown as TargetStats;
  const afterGc = (await tandem.request('stats', { gc: true })) as unknown as TargetStats;
  if (result.requests !== DEVICES) throw new Error(`${result.requests} of ${DEVICES} devices checked in`);
  emit({
    bench: 'server-rss',
    devices: DEVICES,
    checkIns: result.requests,
    rssMiB: mib(after.rssBytes),
    baseline: 'the same server on the same database before any check-in',
    baselineRssMiB: mib(atStart.rssBytes),
    ratio: round(after.rssBytes / atStart.rssBytes),
    peakRssMiB: mib(after.peakRssBytes),
    rssAfterGcMiB: mib(afterGc.rssBytes),
    heapUsedAfterGcMiB: mib(afterGc.heapUsedBytes),
    heapTotalAfterGcMiB: mib(afterGc.heapTotalBytes),
    baselineHeapTotalMiB: mib(atStart.heapTotalBytes),
    bareKoaRssMiB: mib(bareStats.rssBytes),
    checkInSeconds: round(result.seconds, 1),
    checkInsPerSec: Math.round(result.rps),
    p50Ms: result.latencyMs.p50,
    p99Ms: result.latencyMs.p99,
    inFlight: IN_FLIGHT,
    setupSeconds: round(setupSeconds, 1),
    offered: result.sampled ? round(result.sampled.updates / Math.max(1, result.sampled.responses), 2) : null,
    loadAverage: round(loadavg()[0]!, 2),
  });
} finally {
  await Promise.all(children.map((c) => c.stop()));
  await fleet.remove();
}
