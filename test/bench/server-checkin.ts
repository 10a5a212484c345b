/**
 * Check-in throughput and p99 latency with 1,000 concurrent devices (undici pool, loopback),
 * against a bare koa route returning a constant JSON body measured in the same run;
 * then payload download throughput with 50 parallel Range readers against node:http +
 * fs.createReadStream serving the same file. Prints one JSON line per figure.
 * Run: node --import tsx test/bench/server-checkin.ts [devices] [seconds]
 */
import { createReadStream } from 'node:fs';
import { stat } from 'node:fs/promises';
import { createServer, type Server } from 'node:http';
import type { AddressInfo } from 'node:net';
import { join } from 'node:path';
import Koa from 'koa';
import { Pool } from 'undici';
import type { SqliteStore } from '../../server/store/sqlite-store.ts';
import { hashSecret } from '../../server/http/auth.ts';
import { makeImage, nonce, removeDir, startTestServer } from '../server/helpers.ts';

const DEVICES = Number(process.argv[2] ?? 1000);
const SECONDS = Number(process.argv[3] ?? 5);

async function load(url: string, concurrency: number, seconds: number, make: (i: number) => { method: 'GET' | 'POST'; path: string; headers?: Record<string, string>; body?: string }): Promise<{ rps: number; p99: number; bytes: number }> {
  const pool = new Pool(url, { connections: Math.min(concurrency, 256), pipelining: 1 });
  const latencies: number[] = [];
  let bytes = 0;
  const deadline = performance.now() + seconds * 1000;
  await Promise.all(Array.from({ length: concurrency }, async (_, worker) => {
    for (let i = 0; performance.now() < deadline; i++) {
      const t0 = performance.now();
      const res = await pool.request(make(worker));
      for await (const chunk of res.body) bytes += (chunk as Buffer).length;
      if (res.statusCode >= 300) throw new Error(`HTTP ${res.statusCode}`);
      latencies.push(performance.now() - t0);
    }
  }));
  await pool.close();
  latencies.sort((a, b) => a - b);
  return { rps: latencies.length / seconds, p99: latencies[Math.floor(latencies.length * 0.99)] ?? 0, bytes };
}

function listen(server: Server): Promise<string> {
  return new Promise((resolve) => server.listen(0, '127.0.0.1', () => resolve(`http://127.0.0.1:${(server.address() as AddressInfo).port}`)));
}

const ts = await startTestServer({ pollIntervalSeconds: 3600 });
try {
  const image = join(ts.dir, 'bench.img');
  await makeImage(image, { mib: 16 });
  const pub = await ts.admin.publishImage(image, { channel: 'stable', version: '1.0.0', board: 'rpi4', product: 'acme' });
  await ts.admin.setRollout('stable', '1.0.0', { percentage: '50%' });
  const db = (ts.server.context.store as SqliteStore).db;
  const now = new Date().toISOString();
  db.prepare("INSERT INTO enrollment_tokens (id, name, token_hash, product, channel, created_at, created_by) VALUES ('bench', 'bench', 'bench', 'acme', 'stable', ?, 'bench')").run(now);
  const insert = db.prepare("INSERT INTO devices (id, product, board, channel, credential_hash, enrolled_at, enrollment_token_id) VALUES (?, 'acme', 'rpi4', 'stable', ?, ?, 'bench')");
  db.transaction(() => { for (let i = 0; i < DEVICES; i++) insert.run(`bench-${i}`, hashSecret(`tdc_bench_credential_${i}`), now); })();

  const bare = new Koa();
  const constant = { type: 'tandem-check-response', result: 'noUpdate', pollAfterSeconds: 3600 };
  bare.use((ctx) => { ctx.body = constant; });
  const bareServer = createServer(bare.callback());
  const bareUrl = await listen(bareServer);

  const base = await load(bareUrl, DEVICES, SECONDS, () => ({ method: 'GET', path: '/' }));
  const check = await load(ts.server.url, DEVICES, SECONDS, (i) => ({
    method: 'POST',
    path: '/v1/check',
    headers: { 'content-type': 'application/json', authorization: `Bearer tdc_bench_credential_${i}` },
    body: JSON.stringify({ deviceId: `bench-${i}`, product: 'acme', board: 'rpi4', channel: 'stable', version: '0.9.0', slot: 'A', failedVersions: [], nonce: nonce() }),
  }));
  console.log(JSON.stringify({ bench: 'server-checkin', devices: DEVICES, baseline: 'bare koa constant JSON', rps: Math.round(check.rps), baselineRps: Math.round(base.rps), ratio: +(check.rps / base.rps).toFixed(3), p99Ms: +check.p99.toFixed(1), baselineP99Ms: +base.p99.toFixed(1), target: { ratio: 0.3, p99Ms: 50 } }));
  bareServer.close();

  const file = join(ts.dir, 'payloads', pub.payload.sha256);
  const size = (await stat(file)).size;
  const staticServer = createServer((req, res) => {
    const m = /bytes=(\d+)-(\d+)/.exec(req.headers.range ?? '');
    const start = m ? Number(m[1]) : 0;
    const end = m ? Number(m[2]) : size - 1;
    res.writeHead(m ? 206 : 200, { 'content-length': end - start + 1 });
    createReadStream(file, { start, end, highWaterMark: 256 * 1024 }).pipe(res);
  });
  const staticUrl = await listen(staticServer);
  const chunk = 1024 * 1024;
  const ranged = (i: number) => {
    const start = (i * 7919 * 4096) % Math.max(1, size - chunk);
    return { method: 'GET' as const, path: '', headers: { range: `bytes=${start}-${start + chunk - 1}` } };
  };
  const plain = await load(staticUrl, 50, SECONDS, (i) => ({ ...ranged(i), path: '/' }));
  const served = await load(ts.server.url, 50, SECONDS, (i) => ({ ...ranged(i), path: `/v1/payloads/${pub.payload.sha256}` }));
  const mbps = (r: { bytes: number }) => r.bytes / SECONDS / 1024 / 1024;
  console.log(JSON.stringify({ bench: 'server-download', readers: 50, baseline: 'node:http + fs.createReadStream', mibPerSec: +mbps(served).toFixed(1), baselineMibPerSec: +mbps(plain).toFixed(1), ratio: +(mbps(served) / mbps(plain)).toFixed(3), target: { ratio: 0.9 } }));
  staticServer.close();
  console.log(JSON.stringify({ bench: 'server-rss', devices: DEVICES, rssMiB: Math.round(process.memoryUsage().rss / 1024 / 1024), note: 'client and server share this process' }));
} finally {
  await ts.stop();
  await removeDir(ts.dir);
}
