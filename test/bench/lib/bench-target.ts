/**
 * Child process: one HTTP server under test on 127.0.0.1:0, chosen by argv[2]:
 * - `tandem <dataDir>`: the update server (startServer) on a prepared data dir,
 *   run as users run it: `npm start` runs an esbuild bundle (bin/build.js),
 *   not the sources under tsx, whose esbuild transform keeps function names
 *   with a `__name(fn, "…")` call at every named closure it creates, about
 *   1 % of a check-in's CPU in a profile. So the child bundles server/index.ts
 *   with bin/build.js's options and imports startServer from the bundle;
 *   TANDEM_FROM_SOURCE=1 (as for bin/launch.js) runs the sources instead.
 *   The `ready` reply says which (`build`);
 * - `bare-koa`: a koa app whose only middleware returns a constant JSON body
 *   (the check-in baseline: what koa and node:http cost with no work at all);
 * - `static <file> [readBytes]`: node:http + fs.createReadStream serving one
 *   file with a single Range (the download baseline: what a static file
 *   server costs), with the stream's default 64 KiB reads unless told.
 * It replies `ready` with its URL, and `stats` with its memory and CPU time,
 * so the parent can turn CPU time into utilisation over a measured window;
 * `profile` starts a CPU profile and, with `path`, stops it and writes it
 * there (only the measured window, not start-up, is in it).
 */
import { createReadStream, readFileSync, statSync } from 'node:fs';
import { mkdir, rm, writeFile } from 'node:fs/promises';
import { Session } from 'node:inspector/promises';
import { createServer, type Server } from 'node:http';
import type { AddressInfo } from 'node:net';
import { join } from 'node:path';
import { monitorEventLoopDelay, PerformanceObserver } from 'node:perf_hooks';
import { pathToFileURL } from 'node:url';
import { build } from 'esbuild';
import Koa from 'koa';
import { pino } from 'pino';
import type * as ServerSource from '../../../server/index.ts';
import { serveParent } from './bench-child.ts';
import { REPO } from './bench-kit.ts';

export interface TargetStats {
  rssBytes: number;
  /** Peak resident set since start (VmHWM), from /proc. */
  peakRssBytes: number;
  heapUsedBytes: number;
  /** What V8 holds for its heap, used or not. */
  heapTotalBytes: number;
  externalBytes: number;
  cpuUs: number;
  /** Since the previous `stats`: how late the event loop ran (p99, max), and garbage collection pauses. */
  loopDelayP99Ms: number;
  loopDelayMaxMs: number;
  gcPauses: number;
  gcMaxMs: number;
  gcTotalMs: number;
}

const loopDelay = monitorEventLoopDelay({ resolution: 5 });
loopDelay.enable();
const gc = { pauses: 0, maxMs: 0, totalMs: 0 };
new PerformanceObserver((list) => {
  for (const entry of list.getEntries()) {
    gc.pauses++;
    gc.totalMs += entry.duration;
    gc.maxMs = Math.max(gc.maxMs, entry.duration);
  }
}).observe({ entryTypes: ['gc'] });

function stats(): TargetStats {
  const mem = process.memoryUsage();
  const cpu = process.cpuUsage();
  const hwm = /VmHWM:\s+(\d+) kB/.exec(readFileSync('/proc/self/status', 'utf8'));
  const ms = (ns: number): number => Math.round(ns / 1e4) / 100;
  const out: TargetStats = {
    rssBytes: mem.rss, peakRssBytes: hwm ? Number(hwm[1]) * 1024 : NaN, heapUsedBytes: mem.heapUsed, heapTotalBytes: mem.heapTotal, externalBytes: mem.external, cpuUs: cpu.user + cpu.system,
    loopDelayP99Ms: ms(loopDelay.percentile(99)), loopDelayMaxMs: ms(loopDelay.max),
    gcPauses: gc.pauses, gcMaxMs: Math.round(gc.maxMs * 100) / 100, gcTotalMs: Math.round(gc.totalMs),
  };
  loopDelay.reset();
  Object.assign(gc, { pauses: 0, maxMs: 0, totalMs: 0 });
  return out;
}

function listen(server: Server): Promise<string> {
  return new Promise((resolve, reject) => {
    server.once('error', reject);
    server.listen(0, '127.0.0.1', () => resolve(`http://127.0.0.1:${(server.address() as AddressInfo).port}`));
  });
}

function bareKoa(): Server {
  const app = new Koa();
  const constant = { type: 'tandem-check-response', result: 'noUpdate', pollAfterSeconds: 3600 };
  app.use((ctx) => {
    ctx.body = constant;
  });
  return createServer(app.callback());
}

function staticFile(file: string, readBytes: number | undefined): Server {
  const size = statSync(file).size;
  return createServer((req, res) => {
    const m = /^bytes=(\d+)-(\d+)$/.exec(req.headers.range ?? '');
    const start = m ? Number(m[1]) : 0;
    const end = m ? Math.min(Number(m[2]), size - 1) : size - 1;
    res.writeHead(m ? 206 : 200, { 'content-type': 'application/octet-stream', 'content-length': end - start + 1, ...(m ? { 'content-range': `bytes ${start}-${end}/${size}` } : {}) });
    createReadStream(file, { start, end, ...(readBytes === undefined ? {} : { highWaterMark: readBytes }) }).pipe(res);
  });
}

type ServerModule = typeof ServerSource;

/** server/index.ts as bin/build.js bundles the commands; under node_modules, so the bundle finds the packages it leaves external. */
async function loadServer(): Promise<{ build: 'bundle' | 'source'; server: ServerModule }> {
  if (process.env.TANDEM_FROM_SOURCE === '1') return { build: 'source', server: await import('../../../server/index.ts') };
  const dir = join(REPO, 'node_modules', '.cache', 'tandem-bench');
  await mkdir(dir, { recursive: true });
  const outfile = join(dir, `server-${process.pid}.mjs`);
  await build({
    absWorkingDir: REPO, entryPoints: ['server/index.ts'], outfile,
    bundle: true, platform: 'node', format: 'esm', target: 'node20.18', packages: 'external', logLevel: 'warning',
  });
  try {
    return { build: 'bundle', server: (await import(pathToFileURL(outfile).href)) as ServerModule };
  } finally {
    await rm(outfile, { force: true });
  }
}

const [kind, arg, arg2] = process.argv.slice(2);
let url: string;
let close: () => Promise<void>;
let serverBuild: 'bundle' | 'source' | undefined;
if (kind === 'tandem') {
  const { build: how, server } = await loadServer();
  serverBuild = how;
  const running = await server.startServer({ listen: '127.0.0.1:0', dataDir: arg!, logger: pino({ level: 'warn' }) });
  url = running.url;
  close = () => running.close();
} else if (kind === 'bare-koa' || kind === 'static') {
  const server = kind === 'bare-koa' ? bareKoa() : staticFile(arg!, arg2 === undefined ? undefined : Number(arg2));
  server.keepAliveTimeout = 65_000;
  url = await listen(server);
  close = () => new Promise((resolve) => {
    server.close(() => resolve());
    server.closeAllConnections();
  });
} else {
  throw new Error(`unknown target ${String(kind)}`);
}

let session: Session | undefined;
async function profile(path: unknown): Promise<void> {
  if (typeof path !== 'string') {
    session = new Session();
    session.connect();
    await session.post('Profiler.enable');
    await session.post('Profiler.setSamplingInterval', { interval: 200 });
    await session.post('Profiler.start');
    return;
  }
  if (!session) throw new Error('no profile running');
  const { profile: result } = await session.post('Profiler.stop');
  session.disconnect();
  session = undefined;
  await writeFile(path, JSON.stringify(result));
}

serveParent({ url, ...(serverBuild === undefined ? {} : { build: serverBuild }) }, async (m) => {
  switch (m.type) {
    case 'profile':
      await profile(m.path);
      return {};
    case 'stats':
      // With --expose-gc, `gc: true` reports the live set too (after a full collection).
      if (m.gc === true && typeof globalThis.gc === 'function') globalThis.gc();
      return { ...stats() };
    default:
      throw new Error(`unknown request ${m.type}`);
  }
}, close);
