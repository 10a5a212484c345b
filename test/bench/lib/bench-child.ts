/**
 * The parent's side of the server benchmarks' child processes. A benchmark
 * that runs its load generator in the same process as the server measures
 * the generator's queueing as server latency, so the server under test (or
 * its baseline) runs in one child and the load generator in another, each
 * with its own event loop and, on this two-core machine, its own core. The
 * parent only starts them, relays a plan and prints the JSON lines.
 *
 * Children talk over the IPC channel: one request, one reply with the same
 * `id`. A child's stdout goes to our stderr, so nothing it prints can be
 * mistaken for a benchmark line.
 */
import { fork, type ChildProcess } from 'node:child_process';
import { once } from 'node:events';

export interface ChildMessage {
  id?: number;
  type: string;
  error?: string;
  [key: string]: unknown;
}

export class BenchChild {
  private nextId = 1;
  private readonly pending = new Map<number, { resolve: (m: ChildMessage) => void; reject: (e: Error) => void }>();
  private exited: Error | undefined;
  /** The child's unsolicited `ready` message (sent once it listens, with e.g. its URL). */
  readonly ready: Promise<ChildMessage>;

  private constructor(readonly name: string, readonly process: ChildProcess) {
    this.ready = new Promise((resolve, reject) => {
      process.on('message', (m: ChildMessage) => {
        if (m.type === 'ready' && m.id === undefined) resolve(m);
      });
      process.once('exit', (code, signal) => reject(new Error(`${name} exited (${signal ?? code}) before it was ready`)));
    });
    this.ready.catch(() => undefined);
    process.on('message', (m: ChildMessage) => {
      if (m.id === undefined) return;
      const waiter = this.pending.get(m.id);
      this.pending.delete(m.id);
      if (m.error !== undefined) waiter?.reject(new Error(`${name}: ${m.error}`));
      else waiter?.resolve(m);
    });
    process.on('exit', (code, signal) => {
      this.exited = new Error(`${name} exited (${signal ?? code})`);
      for (const w of this.pending.values()) w.reject(this.exited);
      this.pending.clear();
    });
  }

  /** Forks `script` under tsx; `nodeArgs` go before it (e.g. --cpu-prof, --expose-gc). */
  static start(name: string, script: string, args: string[] = [], nodeArgs: string[] = []): BenchChild {
    const child = fork(script, args, { execArgv: ['--import', 'tsx', ...nodeArgs], stdio: ['ignore', 2, 2, 'ipc'] });
    return new BenchChild(name, child);
  }

  get pid(): number {
    return this.process.pid!;
  }

  request(type: string, body: Record<string, unknown> = {}): Promise<ChildMessage> {
    if (this.exited) return Promise.reject(this.exited);
    const id = this.nextId++;
    return new Promise((resolve, reject) => {
      this.pending.set(id, { resolve, reject });
      this.process.send({ ...body, type, id });
    });
  }

  /** Asks the child to finish (it writes its CPU profile, if any, on a clean exit); kills it after `graceMs`. */
  async stop(graceMs = 10_000): Promise<void> {
    if (this.exited || this.process.exitCode !== null) return;
    const exit = once(this.process, 'exit');
    this.process.send({ type: 'stop' });
    const timer = setTimeout(() => this.process.kill('SIGKILL'), graceMs);
    await exit;
    clearTimeout(timer);
  }
}

/**
 * The child's side, called once it is ready: says `ready` with `hello`, then
 * answers each request with `handler`'s result (or its error), and exits on
 * `stop` after `onStop`, or when the parent goes away.
 */
export function serveParent(hello: Record<string, unknown>, handler: (m: ChildMessage) => Promise<Record<string, unknown>>, onStop: () => Promise<void> = async () => {}): void {
  const send = (m: ChildMessage): void => void process.send?.(m);
  let stopping = false;
  const stop = async (): Promise<void> => {
    if (stopping) return;
    stopping = true;
    await onStop().catch((err: unknown) => process.stderr.write(`stop failed: ${String(err)}\n`));
    process.disconnect?.();
    // A normal exit, so --cpu-prof writes its profile.
    process.exitCode = 0;
  };
  process.on('message', (m: ChildMessage) => {
    if (m.type === 'stop') {
      void stop();
      return;
    }
    handler(m).then(
      (reply) => send({ ...reply, type: m.type, id: m.id! }),
      (err: unknown) => send({ type: m.type, id: m.id!, error: err instanceof Error ? err.stack ?? err.message : String(err) }),
    );
  });
  process.on('disconnect', () => void stop());
  send({ ...hello, type: 'ready' });
}

/** Percentiles of a latency sample (sorted in place), in milliseconds with 0.01 ms resolution. */
export function latencySummary(samples: Float64Array | number[]): { count: number; p50: number; p90: number; p99: number; p999: number; max: number; mean: number } {
  const sorted = samples instanceof Float64Array ? samples.sort() : Float64Array.from(samples).sort();
  const at = (q: number): number => (sorted.length === 0 ? 0 : sorted[Math.min(sorted.length - 1, Math.floor(sorted.length * q))]!);
  let sum = 0;
  for (const v of sorted) sum += v;
  const r = (v: number): number => Math.round(v * 100) / 100;
  return { count: sorted.length, p50: r(at(0.5)), p90: r(at(0.9)), p99: r(at(0.99)), p999: r(at(0.999)), max: r(sorted.at(-1) ?? 0), mean: r(sorted.length ? sum / sorted.length : 0) };
}
