/**
 * Payload download throughput (issue 4): 50 parallel readers each fetching
 * 1 MiB `Range` requests of one payload from GET /v1/payloads/<sha256>,
 * against node:http + fs.createReadStream serving the same file, measured in
 * the same run with the same requests. Target: at least 0.9x.
 *
 * Two baselines: createReadStream as it comes (64 KiB reads), and with the
 * 256 KiB reads the payload route uses, which alone takes about 40 % less CPU
 * per byte here; the second ratio is the cost of everything else the route
 * does (koa, routing, headers, metrics).
 *
 * Each server runs in its own child process, the readers in another (see
 * lib/bench-child.ts); the file is in the page cache after the warm-up, so
 * this measures the HTTP path, not the disk. Each target is measured `rounds`
 * times, alternating; the line reports the median round of each, and each
 * server's CPU time per MiB sent, which depends less than throughput on what
 * else this machine is running (a generator near 1.0 CPU means it, not the
 * server, set the pace).
 *
 * Run: node --import tsx test/bench/server-download.ts [seconds=3] [readers=50] [rounds=5]
 * With TANDEM_BENCH_PROFILE=DIR, the update server writes a CPU profile of its last round there.
 */
import { loadavg } from 'node:os';
import { join } from 'node:path';
import { BenchChild } from './lib/bench-child.ts';
import { prepareFleet } from './lib/bench-fleet.ts';
import { emit, REPO, round } from './lib/bench-kit.ts';
import type { LoadPlan, LoadResult } from './lib/load-generator.ts';
import { measureTarget } from './lib/measure-target.ts';

const SECONDS = Number(process.argv[2] ?? 3);
const READERS = Number(process.argv[3] ?? 50);
const ROUNDS = Number(process.argv[4] ?? 5);
const CHUNK = 1024 * 1024;
const LIB = join(REPO, 'test', 'bench', 'lib');
const profileDir = process.env.TANDEM_BENCH_PROFILE;

interface Measured {
  load: LoadResult;
  mibPerSec: number;
  serverCpu: number;
  cpuMsPerMiB: number;
}

async function measure(target: BenchChild, loader: BenchChild, plan: LoadPlan, profile?: string): Promise<Measured> {
  const { load, cpuMs, wallMs } = await measureTarget(target, loader, plan, profile);
  const mibPerSec = load.bytes / 1024 / 1024 / load.seconds;
  // CPU over the whole run (warm-up included) per MiB over the whole run, estimated from the measured window's rate.
  return { load, mibPerSec, serverCpu: round(cpuMs / wallMs, 2), cpuMsPerMiB: round(cpuMs / (mibPerSec * (wallMs / 1000)), 3) };
}

const median = (runs: Measured[], key: (m: Measured) => number): number => [...runs].map(key).sort((a, b) => a - b)[Math.floor(runs.length / 2)]!;
const medianRun = (runs: Measured[]): Measured => [...runs].sort((a, b) => a.mibPerSec - b.mibPerSec)[Math.floor(runs.length / 2)]!;

const fleet = await prepareFleet({ devices: 0, imageMiB: 24, rolloutPercent: 100 });
const children: BenchChild[] = [];
try {
  const tandem = BenchChild.start('tandem-server', join(LIB, 'bench-target.ts'), ['tandem', fleet.dataDir]);
  const plain = BenchChild.start('node-http-static', join(LIB, 'bench-target.ts'), ['static', fleet.payload.path]);
  const plain256 = BenchChild.start('node-http-static-256k', join(LIB, 'bench-target.ts'), ['static', fleet.payload.path, String(256 * 1024)]);
  const loader = BenchChild.start('load-generator', join(LIB, 'load-generator.ts'));
  children.push(tandem, plain, plain256, loader);
  const [tandemUrl, plainUrl, plain256Url] = await Promise.all([tandem.ready, plain.ready, plain256.ready, loader.ready].map(async (r) => String((await r).url)));
  const plan = (url: string, path: string): LoadPlan => ({ mode: 'range', url, path, size: fleet.payload.size, chunkBytes: CHUNK, inFlight: READERS, warmupMs: 1000, durationMs: SECONDS * 1000 });

  const runs = { tandem: [] as Measured[], plain: [] as Measured[], plain256: [] as Measured[] };
  for (let r = 0; r < ROUNDS; r++) {
    runs.plain.push(await measure(plain, loader, plan(plainUrl!, '/')));
    runs.plain256.push(await measure(plain256, loader, plan(plain256Url!, '/')));
    const profile = profileDir && r === ROUNDS - 1 ? join(profileDir, `server-download-${process.pid}.cpuprofile`) : undefined;
    runs.tandem.push(await measure(tandem, loader, plan(tandemUrl!, `/v1/payloads/${fleet.payload.sha256}`), profile));
  }
  const ours = medianRun(runs.tandem);
  const base = medianRun(runs.plain);
  const base256 = medianRun(runs.plain256);
  const cpu = (runs: Measured[]): number => median(runs, (m) => m.cpuMsPerMiB);
  emit({
    bench: 'server-download',
    readers: READERS,
    rangeBytes: CHUNK,
    payloadBytes: fleet.payload.size,
    baseline: 'node:http + fs.createReadStream (default 64 KiB reads), same file and ranges',
    mibPerSec: round(ours.mibPerSec, 1),
    baselineMibPerSec: round(base.mibPerSec, 1),
    ratio: round(ours.mibPerSec / base.mibPerSec),
    baseline256kMibPerSec: round(base256.mibPerSec, 1),
    ratioVs256k: round(ours.mibPerSec / base256.mibPerSec),
    serverCpuMsPerMiB: cpu(runs.tandem),
    baselineCpuMsPerMiB: cpu(runs.plain),
    baseline256kCpuMsPerMiB: cpu(runs.plain256),
    p50Ms: ours.load.latencyMs.p50,
    p99Ms: ours.load.latencyMs.p99,
    baselineP50Ms: base.load.latencyMs.p50,
    baselineP99Ms: base.load.latencyMs.p99,
    serverCpu: ours.serverCpu,
    generatorCpu: ours.load.generatorCpu,
    baselineServerCpu: base.serverCpu,
    baselineGeneratorCpu: base.load.generatorCpu,
    rounds: ROUNDS,
    secondsPerRound: SECONDS,
    allRoundsMibPerSec: { tandem: runs.tandem.map((m) => round(m.mibPerSec, 1)), plain: runs.plain.map((m) => round(m.mibPerSec, 1)), plain256k: runs.plain256.map((m) => round(m.mibPerSec, 1)) },
    loadAverage: round(loadavg()[0]!, 2),
    target: { ratio: 0.9 },
  });
} finally {
  await Promise.all(children.map((c) => c.stop()));
  await fleet.remove();
}
