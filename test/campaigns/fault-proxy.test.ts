/**
 * The fault proxy on its own, in front of a small upstream on 127.0.0.1 that
 * serves one file with Range (harness serveFile, what any static server does)
 * and echoes POSTs: each fault does what it says, nothing else, and the log
 * and byte counts tell the truth.
 */
import anyTest, { type TestFn } from 'ava';
import { randomBytes } from 'node:crypto';
import { mkdtemp, rm, writeFile } from 'node:fs/promises';
import { createServer, type Server } from 'node:http';
import type { AddressInfo } from 'node:net';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { Agent, request } from 'undici';
import { serveFile } from '../agent/harness.ts';
import { FaultProxy, type FaultRule } from './fault-proxy.ts';

interface Ctx {
  dir: string;
  body: Buffer;
  upstream: Server;
  upstreamUrl: string;
  /** Requests the upstream saw, by path. */
  seen: string[];
}
const test = anyTest as TestFn<Ctx>;

const SHA = 'a'.repeat(64);
const PAYLOAD = `/v1/payloads/${SHA}`;

test.before(async (t) => {
  const dir = await mkdtemp(join(tmpdir(), 'tandem-fault-proxy-'));
  const body = randomBytes(256 * 1024);
  await writeFile(join(dir, 'payload'), body);
  const seen: string[] = [];
  const upstream = createServer((req, res) => {
    seen.push(req.url ?? '');
    if (req.url === PAYLOAD) {
      void serveFile(req, res, join(dir, 'payload'), `"${SHA}"`);
      return;
    }
    if (req.url === '/v1/payloads/cut') {
      // A server that dies halfway through its answer.
      res.writeHead(200, { 'content-length': body.length });
      res.write(body.subarray(0, 1000), () => setTimeout(() => res.socket?.destroy(), 20));
      return;
    }
    if (req.method === 'POST') {
      const chunks: Buffer[] = [];
      req.on('data', (c: Buffer) => chunks.push(c));
      req.on('end', () => res.writeHead(200, { 'content-type': 'application/json' }).end(JSON.stringify({ echo: Buffer.concat(chunks).toString() })));
      return;
    }
    res.writeHead(404).end();
  });
  await new Promise<void>((resolve) => upstream.listen(0, '127.0.0.1', resolve));
  t.context = { dir, body, upstream, upstreamUrl: `http://127.0.0.1:${(upstream.address() as AddressInfo).port}`, seen };
});

test.after.always(async (t) => {
  await new Promise<void>((resolve) => t.context.upstream?.close(() => resolve()));
  if (t.context.dir) await rm(t.context.dir, { recursive: true, force: true });
});

async function withProxy(t: { context: Ctx }, rules: FaultRule[], run: (proxy: FaultProxy) => Promise<void>, options: { upstream?: string; upstreamDown?: 'bad-gateway' | 'reset' } = {}): Promise<void> {
  const proxy = await new FaultProxy({ upstream: options.upstream ?? t.context.upstreamUrl, ...(options.upstreamDown ? { upstreamDown: options.upstreamDown } : {}) }).start();
  proxy.plan(rules);
  try {
    await run(proxy);
  } finally {
    await proxy.close();
  }
}

/** GETs through the proxy; the body as far as it came, and the error that ended it, if any. */
async function get(url: string, headers: Record<string, string> = {}, dispatcher?: Agent): Promise<{ status: number; headers: Record<string, string | string[] | undefined>; body: Buffer; error?: Error }> {
  let res: Awaited<ReturnType<typeof request>>;
  try {
    res = await request(url, { headers, ...(dispatcher ? { dispatcher } : {}) });
  } catch (error) {
    // A reset can overtake the head: the kernel drops what the client had not read yet when the RST arrives.
    return { status: 0, headers: {}, body: Buffer.alloc(0), error: error as Error };
  }
  const chunks: Buffer[] = [];
  try {
    for await (const c of res.body) chunks.push(c as Buffer);
    return { status: res.statusCode, headers: res.headers, body: Buffer.concat(chunks) };
  } catch (error) {
    return { status: res.statusCode, headers: res.headers, body: Buffer.concat(chunks), error: error as Error };
  }
}

test('forwards requests unharmed and counts body bytes per route', async (t) => {
  await withProxy(t, [], async (proxy) => {
    const whole = await get(proxy.url + PAYLOAD);
    t.is(whole.status, 200);
    t.true(whole.body.equals(t.context.body));
    const part = await get(proxy.url + PAYLOAD, { range: 'bytes=1000-', 'if-range': `"${SHA}"` });
    t.is(part.status, 206);
    t.is(part.headers['content-range'], `bytes 1000-${t.context.body.length - 1}/${t.context.body.length}`);
    t.true(part.body.equals(t.context.body.subarray(1000)));
    const echo = await request(`${proxy.url}/v1/check`, { method: 'POST', body: '{"x":1}' });
    t.deepEqual(await echo.body.json(), { echo: '{"x":1}' });
    t.deepEqual(proxy.stats('payload'), { requests: 2, bytes: 2 * t.context.body.length - 1000 });
    t.is(proxy.stats('check').requests, 1);
    const [first, second] = proxy.since(0, 'payload');
    t.like(first, { outcome: 'complete', status: 200, upstreamStatus: 200, bytes: t.context.body.length });
    t.like(second, { outcome: 'complete', status: 206, range: 'bytes=1000-', ifRange: `"${SHA}"` });
  });
});

test('reset after N bytes: the client sees the connection die with at most N bytes', async (t) => {
  await withProxy(t, [{ route: 'payload', fault: { kind: 'reset', afterBytes: 50_000 } }], async (proxy) => {
    const res = await get(proxy.url + PAYLOAD);
    t.truthy(res.error);
    t.true(res.body.length <= 50_000);
    t.true(res.body.equals(t.context.body.subarray(0, res.body.length)));
    t.like(proxy.log[0], { outcome: 'reset', fault: 'reset', bytes: 50_000 });
    // Only the first matching request: the next one goes through.
    t.true((await get(proxy.url + PAYLOAD)).body.equals(t.context.body));
  });
});

test('truncate: a clean, well-formed but short body (chunked), or a short declared length', async (t) => {
  await withProxy(t, [{ route: 'payload', times: 1, fault: { kind: 'truncate', atBytes: 70_000 } }, { route: 'payload', skip: 1, fault: { kind: 'truncate', atBytes: 1234, framing: 'length' } }], async (proxy) => {
    const chunked = await get(proxy.url + PAYLOAD);
    t.is(chunked.error, undefined);
    t.is(chunked.headers['content-length'], undefined);
    t.true(chunked.body.equals(t.context.body.subarray(0, 70_000)));
    const declared = await get(proxy.url + PAYLOAD);
    t.is(declared.error, undefined);
    t.is(declared.headers['content-length'], '1234');
    t.true(declared.body.equals(t.context.body.subarray(0, 1234)));
    t.deepEqual(proxy.log.map((r) => r.outcome), ['truncated', 'truncated']);
  });
});

test('flip: exactly one byte differs, at the offset asked', async (t) => {
  await withProxy(t, [{ route: 'payload', fault: { kind: 'flip', offset: 100_001, mask: 0x80 } }], async (proxy) => {
    const res = await get(proxy.url + PAYLOAD);
    t.is(res.body.length, t.context.body.length);
    const diff: number[] = [];
    for (let i = 0; i < res.body.length; i++) if (res.body[i] !== t.context.body[i]) diff.push(i);
    t.deepEqual(diff, [100_001]);
    t.is(res.body[100_001], t.context.body[100_001]! ^ 0x80);
  });
});

test('contentRange: the header is rewritten, the body is not', async (t) => {
  const rule: FaultRule = { route: 'payload', fault: { kind: 'contentRange', rewrite: (v) => (v ?? '').replace(/^bytes (\d+)-/, (_, s: string) => `bytes ${Number(s) + 4096}-`) } };
  await withProxy(t, [rule], async (proxy) => {
    const res = await get(proxy.url + PAYLOAD, { range: 'bytes=10-' });
    t.is(res.status, 206);
    t.is(res.headers['content-range'], `bytes 4106-${t.context.body.length - 1}/${t.context.body.length}`);
    t.true(res.body.equals(t.context.body.subarray(10)));
  });
});

test.serial('status storm: skip and times pick the requests; a 503 carries Retry-After; the upstream is not asked', async (t) => {
  const before = t.context.seen.length;
  await withProxy(t, [{ route: 'payload', skip: 1, times: 2, fault: { kind: 'status', status: 503, retryAfterSeconds: 2 } }], async (proxy) => {
    const statuses: number[] = [];
    for (let i = 0; i < 4; i++) {
      const res = await get(proxy.url + PAYLOAD);
      statuses.push(res.status);
      if (res.status === 503) t.is(res.headers['retry-after'], '2');
    }
    t.deepEqual(statuses, [200, 503, 503, 200]);
    t.is(t.context.seen.length - before, 2);
    t.deepEqual(proxy.log.map((r) => r.outcome), ['complete', 'injected', 'injected', 'complete']);
    // Other routes are not matched by a payload rule.
    const echo = await request(`${proxy.url}/v1/check`, { method: 'POST', body: '{}' });
    t.is(echo.statusCode, 200);
    await echo.body.dump();
  });
});

test('stall for a while: the body arrives whole, late', async (t) => {
  await withProxy(t, [{ route: 'payload', fault: { kind: 'stall', afterBytes: 10_000, ms: 300 } }], async (proxy) => {
    const started = performance.now();
    const res = await get(proxy.url + PAYLOAD);
    t.true(performance.now() - started >= 290);
    t.true(res.body.equals(t.context.body));
    t.is(proxy.log[0]!.outcome, 'complete');
  });
});

test('stall forever: only the client giving up ends it, and the log says when', async (t) => {
  const dispatcher = new Agent({ bodyTimeout: 300 });
  try {
    await withProxy(t, [{ route: 'payload', fault: { kind: 'stall', afterBytes: 10_000 } }], async (proxy) => {
      const res = await get(proxy.url + PAYLOAD, {}, dispatcher);
      t.is((res.error as { code?: string } | undefined)?.code, 'UND_ERR_BODY_TIMEOUT');
      t.is(res.body.length, 10_000);
      await waitFor(() => proxy.log[0]!.outcome !== 'open');
      const entry = proxy.log[0]!;
      t.is(entry.outcome, 'client-closed');
      const waited = entry.endedAt! - entry.faultAt!;
      t.true(waited >= 250 && waited < 2000, `client hung up after ${waited} ms`);
    });
  } finally {
    await dispatcher.close();
  }
});

test('drip: after the threshold the bytes come at the rate asked', async (t) => {
  await withProxy(t, [{ route: 'payload', fault: { kind: 'drip', afterBytes: 5000, bytesPerSecond: 50 } }], async (proxy) => {
    const res = await request(proxy.url + PAYLOAD);
    let got = 0;
    let dripStart = 0;
    for await (const c of res.body) {
      got += (c as Buffer).length;
      if (got >= 5000 && dripStart === 0) dripStart = performance.now();
      if (got >= 5020) break; // leaving the loop destroys the body: the client hangs up
    }
    const took = performance.now() - dripStart;
    t.true(took >= 300 && took < 2000, `20 bytes at 50 B/s took ${took} ms`);
    await waitFor(() => proxy.log[0]!.outcome !== 'open');
    t.is(proxy.log[0]!.outcome, 'client-closed');
    t.true(proxy.log[0]!.bytes < 5100);
  });
});

test.serial('hooks: beforeUpstream runs before the upstream sees the request, midBody once N bytes went out', async (t) => {
  const calls: string[] = [];
  const rules: FaultRule[] = [
    { route: 'payload', fault: { kind: 'beforeUpstream', run: () => void calls.push(`before:${t.context.seen.length}`) } },
    { route: 'payload', skip: 1, fault: { kind: 'midBody', afterBytes: 100_000, run: async () => void calls.push('mid') } },
  ];
  await withProxy(t, rules, async (proxy) => {
    const seen = t.context.seen.length;
    t.true((await get(proxy.url + PAYLOAD)).body.equals(t.context.body));
    t.deepEqual(calls, [`before:${seen}`]);
    t.true((await get(proxy.url + PAYLOAD)).body.equals(t.context.body));
    t.deepEqual(calls, [`before:${seen}`, 'mid']);
  });
});

test('upstream down: 502 by default, a reset when asked; a cut upstream response resets the client', async (t) => {
  const dead = createServer();
  await new Promise<void>((resolve) => dead.listen(0, '127.0.0.1', resolve));
  const deadUrl = `http://127.0.0.1:${(dead.address() as AddressInfo).port}`;
  await new Promise<void>((resolve) => dead.close(() => resolve()));
  await withProxy(t, [], async (proxy) => {
    const res = await get(proxy.url + PAYLOAD);
    t.is(res.status, 502);
    t.is(proxy.log[0]!.outcome, 'upstream-failed');
  }, { upstream: deadUrl });
  await withProxy(t, [], async (proxy) => {
    const res = await get(proxy.url + PAYLOAD);
    t.is(res.status, 0, 'no answer at all');
    t.regex(String((res.error as { code?: string } | undefined)?.code), /ECONNRESET|UND_ERR_SOCKET/);
  }, { upstream: deadUrl, upstreamDown: 'reset' });
  await withProxy(t, [], async (proxy) => {
    const res = await get(`${proxy.url}/v1/payloads/cut`);
    t.truthy(res.error);
    t.is(res.body.length, 1000);
    await waitFor(() => proxy.log[0]!.outcome !== 'open');
    t.is(proxy.log[0]!.outcome, 'upstream-failed');
  });
});

async function waitFor(condition: () => boolean, ms = 2000): Promise<void> {
  const deadline = Date.now() + ms;
  while (!condition()) {
    if (Date.now() > deadline) throw new Error('condition not met in time');
    await new Promise((r) => setTimeout(r, 10));
  }
}
