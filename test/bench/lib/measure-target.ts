/**
 * One measured run of the server benchmarks: the load generator child runs
 * `plan` against the target child, which reports its CPU time and memory
 * before and after (and, with `profilePath`, writes a CPU profile of just
 * this run).
 */
import type { BenchChild } from './bench-child.ts';
import type { TargetStats } from './bench-target.ts';
import type { LoadPlan, LoadResult } from './load-generator.ts';

export interface TargetRun {
  load: LoadResult;
  /** The target's stats after the run; their loop-delay and GC figures cover the run. */
  server: TargetStats;
  /** The target's CPU time over the run, warm-up included, and the run's wall time. */
  cpuMs: number;
  wallMs: number;
}

export async function measureTarget(target: BenchChild, loader: BenchChild, plan: LoadPlan, profilePath?: string): Promise<TargetRun> {
  if (profilePath) await target.request('profile');
  const before = (await target.request('stats')) as unknown as TargetStats;
  const t0 = performance.now();
  const { result } = (await loader.request('run', { plan })) as unknown as { result: LoadResult };
  const wallMs = performance.now() - t0;
  const server = (await target.request('stats')) as unknown as TargetStats;
  if (profilePath) await target.request('profile', { path: profilePath });
  return { load: result, server, cpuMs: (server.cpuUs - before.cpuUs) / 1000, wallMs };
}
