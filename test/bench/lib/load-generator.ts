/**
 * Child process: an HTTP load generator (undici Pool, one request per
 * connection at a time), in one of two shapes:
 * - closed loop (default): `inFlight` workers each send a request, wait for
 *   the whole response, and send the next, so at most `inFlight` requests are
 *   outstanding: the most the server can do with that many clients, whose
 *   latency is then the server's, not a queue inside the generator;
 * - open loop (`ratePerSec`): requests leave at random (Poisson) times at
 *   that mean rate whatever the server does, as a fleet's independent polls
 *   do; `inFlight` only bounds the connections (more requests wait in the
 *   pool), and latency runs from the scheduled time, so a server that stalls
 *   is charged for every request it held up (no coordinated omission).
 * Latency runs to the last body byte, taken in this process, whose event
 * loop does nothing else.
 *
 * Plans:
 * - `checkin`: POST /v1/check, request n speaks for device n mod `devices`
 *   with that device's credential and a fresh nonce; with `oncePerDevice`,
 *   each device checks in exactly once and the run ends.
 * - `range`: GET `path` with `Range: bytes=a-b`, `chunkBytes` long at
 *   pseudo-random 4 KiB-aligned offsets within `size`.
 * Every response must have the expected status; a sample of check-in bodies
 * is parsed to count offers.
 */
import { setTimeout as sleep } from 'node:timers/promises';
import { Pool, type Dispatcher } from 'undici';
import { deviceCredential, deviceId } from './bench-fleet.ts';
import { latencySummary, serveParent } from './bench-child.ts';

interface PlanBase {
  url: string;
  inFlight: number;
  warmupMs: number;
  durationMs: number;
  /** Open loop at this mean rate (see above); closed loop when absent. */
  ratePerSec?: number;
}
export type LoadPlan =
  | (PlanBase & { mode: 'checkin'; path: string; devices: number; version: string; oncePerDevice?: boolean })
  | (PlanBase & { mode: 'range'; path: string; size: number; chunkBytes: number });

export interface LoadResult {
  /** Requests completed inside the measured window (after the warm-up). */
  requests: number;
  /** Requests completed in the whole run, warm-up included: what the server's CPU time over the run divides by. */
  total: number;
  bytes: number;
  seconds: number;
  rps: number;
  latencyMs: ReturnType<typeof latencySummary>;
  /** CPU time of this process over the whole run, as a fraction of one core: near 1 means the generator, not the server, was the limit. */
  generatorCpu: number;
  /** Of the parsed sample of check-in responses, how many offered an update. */
  sampled?: { responses: number; updates: number };
}

interface Exchange {
  status: number;
  bytes: number;
  body: Buffer[] | null;
}

/** One request through the pool with a bare handler: the least client work per byte, so the server stays the bottleneck. */
function exchange(pool: Pool, options: Dispatcher.DispatchOptions, keepBody: boolean): Promise<Exchange> {
  return new Promise((resolve, reject) => {
    const out: Exchange = { status: 0, bytes: 0, body: keepBody ? [] : null };
    pool.dispatch(options, {
      onRequestStart() {},
      onResponseStart(_controller, statusCode) {
        out.status = statusCode;
      },
      onResponseData(_controller, chunk: Buffer) {
        out.bytes += chunk.length;
        out.body?.push(chunk);
      },
      onResponseEnd() {
        resolve(out);
      },
      onResponseError(_controller, err: Error) {
        reject(err);
      },
    });
  });
}

function checkBody(i: number, devices: number, version: string): { headers: Record<string, string>; body: string } {
  const n = i % devices;
  const nonce = `n${i.toString(36).padStart(15, '0')}`;
  return {
    headers: { 'content-type': 'application/json', authorization: `Bearer ${deviceCredential(n)}` },
    body: JSON.stringify({ deviceId: deviceId(n), product: 'acme', board: 'rpi4', channel: 'stable', version, slot: 'A', failedVersions: [], nonce }),
  };
}

export async function runLoad(plan: LoadPlan): Promise<LoadResult> {
  const pool = new Pool(plan.url, { connections: plan.inFlight, pipelining: 1, keepAliveTimeout: 60_000 });
  const latencies: number[] = [];
  const sampled = { responses: 0, updates: 0 };
  let next = 0;
  let bytes = 0;
  let counted = 0;
  let total = 0;
  const cpu0 = process.cpuUsage();
  const t0 = performance.now();
  const once = plan.mode === 'checkin' && plan.oncePerDevice === true;
  const windowStart = once ? t0 : t0 + plan.warmupMs;
  const windowEnd = once ? Infinity : windowStart + plan.durationMs;
  let endedAt = t0;

  const one = async (i: number, scheduled?: number): Promise<void> => {
    let options: Dispatcher.DispatchOptions;
    let expected: number;
    // 97 is prime to the fleet size, so the sample spans the devices.
    const keepBody = plan.mode === 'checkin' && i % 97 === 0;
    if (plan.mode === 'checkin') {
      const { headers, body } = checkBody(i, plan.devices, plan.version);
      options = { method: 'POST', path: plan.path, headers, body };
      expected = 200;
    } else {
      const span = Math.max(1, plan.size - plan.chunkBytes);
      const start = ((i * 7919) % Math.ceil(span / 4096)) * 4096;
      const end = Math.min(plan.size, start + plan.chunkBytes) - 1;
      options = { method: 'GET', path: plan.path, headers: { range: `bytes=${start}-${end}` } };
      expected = 206;
    }
    const started = scheduled ?? performance.now();
    const res = await exchange(pool, options, keepBody);
    const ended = performance.now();
    if (res.status !== expected) {
      const text = res.body ? Buffer.concat(res.body).toString().slice(0, 300) : '';
      throw new Error(`${options.method} ${options.path} -> HTTP ${res.status} (expected ${expected}) ${text}`);
    }
    total++;
    if (res.body) {
      const parsed = JSON.parse(Buffer.concat(res.body).toString()) as { body?: { result?: string } };
      sampled.responses++;
      if (parsed.body?.result === 'update') sampled.updates++;
    }
    if (started >= windowStart && (scheduled !== undefined ? started < windowEnd : ended <= windowEnd)) {
      latencies.push(ended - started);
      bytes += res.bytes;
      counted++;
      endedAt = Math.max(endedAt, ended);
    }
  };

  if (plan.ratePerSec !== undefined && !once) {
    const pending = new Set<Promise<void>>();
    let failure: unknown;
    let due = t0;
    while (due < windowEnd && failure === undefined) {
      const wait = due - performance.now();
      if (wait > 0) await sleep(wait);
      // Timers fire late by up to a millisecond or so: send everything that came due meanwhile, at its own time.
      while (due <= performance.now() && due < windowEnd) {
        const sent = one(next++, due).catch((err: unknown) => {
          failure ??= err;
        });
        pending.add(sent);
        void sent.finally(() => pending.delete(sent));
        due += (-Math.log(1 - Math.random()) * 1000) / plan.ratePerSec;
      }
    }
    await Promise.all(pending);
    if (failure !== undefined) throw failure;
  } else {
    await Promise.all(Array.from({ length: plan.inFlight }, async () => {
      for (;;) {
        if (once ? next >= (plan as { devices: number }).devices : performance.now() >= windowEnd) return;
        await one(next++);
      }
    }));
  }
  const cpu = process.cpuUsage(cpu0);
  const wallMs = performance.now() - t0;
  await pool.close();
  const seconds = once ? (endedAt - windowStart) / 1000 : plan.durationMs / 1000;
  return {
    requests: counted,
    total,
    bytes,
    seconds,
    rps: counted / seconds,
    latencyMs: latencySummary(latencies),
    generatorCpu: Math.round(((cpu.user + cpu.system) / 1000 / wallMs) * 100) / 100,
    ...(plan.mode === 'checkin' ? { sampled } : {}),
  };
}

serveParent({}, async (m) => {
  if (m.type !== 'run') throw new Error(`unknown request ${m.type}`);
  return { result: await runLoad(m.plan as LoadPlan) };
});
