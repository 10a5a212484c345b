/**
 * The agent's HTTP client (agent/http-client.ts) and what agent/http.ts builds
 * on it, against a real node:http server on 127.0.0.1:0: keep-alive reuse,
 * the headers and body timeouts (silence only while the reader waits), the
 * body cap, aborts, refused and reset connections, and no socket left open
 * after close — counted on the server's side.
 */
import anyTest, { type TestFn } from 'ava';
import { execFile } from 'node:child_process';
import { getEventListeners } from 'node:events';
import { mkdtemp, readFile, rm } from 'node:fs/promises';
import http, { type IncomingMessage, type ServerResponse } from 'node:http';
import https from 'node:https';
import net, { type AddressInfo } from 'node:net';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { promisify } from 'node:util';
import { createHttpClient, type HttpClient } from '../../agent/http-client.ts';
import { callJson, createDispatcher } from '../../agent/http.ts';
import { openPayloadStream } from '../../agent/downloader.ts';
import type { TandemError } from '../../shared/errors.ts';

type Handler = (req: IncomingMessage, res: ServerResponse) => void;

interface Ctx {
  server: http.Server;
  url: string;
}

const test = anyTest as TestFn<Ctx>;

/** What the file's one server does, set by each (serial) test; module state, since ava hands each test a copy of the context. */
const server = {
  handler: ((_req, res) => res.end('ok')) as Handler,
  /** Connections accepted since a test reset it. */
  accepted: 0,
};

test.before(async (t) => {
  const s = http.createServer((req, res) => server.handler(req, res));
  s.on('connection', () => server.accepted++);
  await new Promise<void>((resolve) => s.listen(0, '127.0.0.1', resolve));
  t.context = { server: s, url: `http://127.0.0.1:${(s.address() as AddressInfo).port}` };
});

test.after.always(async (t) => {
  t.context.server.closeAllConnections();
  await new Promise((resolve) => t.context.server.close(resolve));
});

function openConnections(server: http.Server): Promise<number> {
  return new Promise((resolve, reject) => server.getConnections((err, n) => (err ? reject(err) : resolve(n))));
}

/** Waits until the server holds `n` connections (sockets close asynchronously); fails after 2 s. */
async function connectionsSettle(server: http.Server, n: number): Promise<number> {
  const deadline = Date.now() + 2000;
  let now = await openConnections(server);
  while (now !== n && Date.now() < deadline) {
    await new Promise((r) => setTimeout(r, 10));
    now = await openConnections(server);
  }
  return now;
}

function client(overrides: Partial<Parameters<typeof createHttpClient>[0]> = {}): HttpClient {
  return createHttpClient({ connectTimeoutMs: 2000, headersTimeoutMs: 2000, bodyTimeoutMs: 2000, ...overrides });
}

async function readAll(body: AsyncIterable<Buffer>): Promise<Buffer> {
  const chunks: Buffer[] = [];
  for await (const chunk of body) chunks.push(chunk);
  return Buffer.concat(chunks);
}

/** Headers and `first` bytes of a `total`-byte body, then whatever `then` does with the response. */
function partial(first: number, total: number, then: (res: ServerResponse) => void): Handler {
  return (_req, res) => {
    res.writeHead(200, { 'content-length': total });
    res.write(Buffer.alloc(first, 1), () => then(res));
  };
}

test.serial('keep-alive: sequential requests share one connection, and close() leaves none open', async (t) => {
  server.accepted = 0;
  server.handler = (req, res) => {
    let size = 0;
    req.on('data', (c: Buffer) => (size += c.length));
    req.on('end', () => res.end(JSON.stringify({ method: req.method, size })));
  };
  const c = client();
  for (let i = 0; i < 5; i++) {
    const res = await c.request({ method: i % 2 ? 'POST' : 'GET', url: `${t.context.url}/x`, ...(i % 2 ? { body: 'héllo' } : {}) });
    t.is(res.statusCode, 200);
    t.deepEqual(JSON.parse((await readAll(res.body)).toString()), { method: i % 2 ? 'POST' : 'GET', size: i % 2 ? 6 : 0 });
  }
  t.is(server.accepted, 1, 'one connection for five requests');
  t.is(await openConnections(t.context.server), 1, 'kept alive');
  await c.close();
  t.is(await connectionsSettle(t.context.server, 0), 0, 'closed with the client');
  await t.throwsAsync(c.request({ method: 'GET', url: t.context.url }), { code: 'UND_ERR_CLOSED' });
});

test.serial('keep-alive: an idle connection is dropped before the server\'s Keep-Alive timeout, so reuse never races its close', async (t) => {
  const { server: s } = t.context;
  const before = s.keepAliveTimeout;
  s.keepAliveTimeout = 2000; // announced as Keep-Alive: timeout=2; the client keeps the socket one second less
  server.handler = (_req, res) => res.end('ok');
  server.accepted = 0;
  const c = client();
  try {
    for (const wait of [0, 1300, 0]) {
      await new Promise((r) => setTimeout(r, wait));
      const res = await c.request({ method: 'GET', url: `${t.context.url}/k` });
      t.is((await readAll(res.body)).toString(), 'ok');
    }
    t.is(server.accepted, 2, 'a new connection after the idle second, reused right after');
  } finally {
    s.keepAliveTimeout = before;
    await c.close();
  }
});

test.serial('headers timeout: a server that never answers fails the request in bounded time, with its socket', async (t) => {
  server.handler = () => {};
  const c = createDispatcher({ connectTimeoutSeconds: 2, readTimeoutSeconds: 0.3 });
  const started = Date.now();
  const err = await t.throwsAsync<TandemError>(callJson({ method: 'GET', url: `${t.context.url}/slow`, maxBytes: 1000, dispatcher: c }), { code: 'ERR_NETWORK' });
  t.true(Date.now() - started < 2000);
  t.is(err?.details?.code, 'UND_ERR_HEADERS_TIMEOUT');
  t.regex(err?.message ?? '', /timed out/);
  t.is(await connectionsSettle(t.context.server, 0), 0);
  await c.close();
});

test.serial('body timeout: silence while the reader waits fails it; a reader slower than the timeout does not', async (t) => {
  const c = client({ bodyTimeoutMs: 300 });
  server.handler = partial(100, 1000, () => {});
  const res = await c.request({ method: 'GET', url: `${t.context.url}/silent` });
  const started = Date.now();
  await t.throwsAsync(readAll(res.body), { code: 'UND_ERR_BODY_TIMEOUT' });
  t.true(Date.now() - started >= 250 && Date.now() - started < 2000);
  t.is(await connectionsSettle(t.context.server, 0), 0, 'the socket is destroyed');

  // The whole body is already here: a reader busy for 3 timeouts before it reads is not a silent server.
  server.handler = (_req, res) => res.end(Buffer.alloc(5000, 2));
  const slow = await c.request({ method: 'GET', url: `${t.context.url}/fast` });
  await new Promise((r) => setTimeout(r, 900));
  t.is((await readAll(slow.body)).length, 5000);
  await c.close();
});

test.serial('body cap: a JSON answer beyond maxBytes is refused without reading it all, and its socket closed', async (t) => {
  let served = 0;
  let closed = false;
  server.handler = (_req, res) => {
    res.writeHead(200, { 'content-type': 'application/json' });
    const chunk = Buffer.alloc(16 * 1024, 0x20);
    const more = () => {
      while (!res.destroyed && res.write(chunk)) served += chunk.length;
      if (!res.destroyed) res.once('drain', more);
    };
    res.on('close', () => (closed = true));
    more();
  };
  const c = createDispatcher({ connectTimeoutSeconds: 2, readTimeoutSeconds: 2 });
  await t.throwsAsync<TandemError>(callJson({ method: 'GET', url: `${t.context.url}/endless`, maxBytes: 64 * 1024, dispatcher: c }), { code: 'ERR_RESPONSE_TOO_LARGE' });
  t.is(await connectionsSettle(t.context.server, 0), 0);
  t.true(closed);
  t.true(served < 8 * 1024 * 1024, `served ${served} bytes`);
  await c.close();
});

test.serial('JSON errors: the server code and Retry-After reach the TandemError', async (t) => {
  server.handler = (_req, res) => {
    res.writeHead(503, { 'content-type': 'application/json', 'retry-after': '7' });
    res.end(JSON.stringify({ error: { code: 'ERR_BUSY', message: 'busy' } }));
  };
  const c = createDispatcher({ connectTimeoutSeconds: 2, readTimeoutSeconds: 2 });
  const err = await t.throwsAsync<TandemError>(callJson({ method: 'POST', url: `${t.context.url}/v1/check`, body: { a: 1 }, maxBytes: 1000, dispatcher: c }), { code: 'ERR_HTTP_STATUS' });
  t.like(err?.details, { status: 503, serverCode: 'ERR_BUSY', retryAfterSeconds: 7 });
  await c.close();
});

test.serial('abort: before the answer and in the middle of the body, with the signal\'s reason; no listener left behind', async (t) => {
  const c = client();
  server.handler = () => {};
  const early = new AbortController();
  const pending = c.request({ method: 'GET', url: `${t.context.url}/never`, signal: early.signal });
  setTimeout(() => early.abort(new Error('stop early')), 50);
  await t.throwsAsync(pending, { message: 'stop early' });
  t.is(getEventListeners(early.signal, 'abort').length, 0);

  server.handler = partial(4096, 1 << 20, () => {});
  const mid = new AbortController();
  const res = await c.request({ method: 'GET', url: `${t.context.url}/mid`, signal: mid.signal });
  const iterator = res.body[Symbol.asyncIterator]();
  t.false((await iterator.next()).done);
  setTimeout(() => mid.abort(), 50);
  // On Node 20 the default reason is a DOMException, not an Error: catch it by hand.
  const reason = await iterator.next().then(() => undefined, (e: unknown) => e);
  t.is((reason as { name?: string } | undefined)?.name, 'AbortError');
  t.is(await connectionsSettle(t.context.server, 0), 0, 'the socket is destroyed');

  // A request that completes removes its listener from a long-lived signal.
  server.handler = (_req, r) => r.end('fine');
  const daemon = new AbortController();
  for (let i = 0; i < 3; i++) {
    const ok = await c.request({ method: 'GET', url: `${t.context.url}/ok`, signal: daemon.signal });
    t.is((await readAll(ok.body)).toString(), 'fine');
  }
  await new Promise((r) => setImmediate(r));
  t.is(getEventListeners(daemon.signal, 'abort').length, 0);
  const already = await c.request({ method: 'GET', url: t.context.url, signal: AbortSignal.abort() }).then(() => undefined, (e: unknown) => e);
  t.is((already as { name?: string } | undefined)?.name, 'AbortError');
  await c.close();
});

test.serial('connection refused is ERR_NETWORK', async (t) => {
  const probe = http.createServer();
  await new Promise<void>((resolve) => probe.listen(0, '127.0.0.1', resolve));
  const port = (probe.address() as AddressInfo).port;
  await new Promise((resolve) => probe.close(resolve));
  const c = createDispatcher({ connectTimeoutSeconds: 2, readTimeoutSeconds: 2 });
  const err = await t.throwsAsync<TandemError>(callJson({ method: 'GET', url: `http://127.0.0.1:${port}/`, maxBytes: 100, dispatcher: c }), { code: 'ERR_NETWORK' });
  t.is(err?.details?.code, 'ECONNREFUSED');
  await c.close();
});

test.serial('a connection reset in the middle of the body is ERR_NETWORK, for JSON and for the payload stream', async (t) => {
  server.handler = partial(5000, 20_000, (res) => res.socket?.resetAndDestroy());
  const c = createDispatcher({ connectTimeoutSeconds: 2, readTimeoutSeconds: 2 });
  const err = await t.throwsAsync<TandemError>(callJson({ method: 'GET', url: `${t.context.url}/json`, maxBytes: 100_000, dispatcher: c }), { code: 'ERR_NETWORK' });
  t.is(err?.details?.code, 'ECONNRESET');

  const stream = await openPayloadStream({ url: `${t.context.url}/payload`, size: 20_000, offset: 0, lowSpeedBytesPerSecond: 0, lowSpeedSeconds: 1, dispatcher: c });
  await t.throwsAsync(readAll(stream.body as AsyncIterable<Buffer>), { code: 'ERR_NETWORK' });
  t.is(stream.received(), 5000);
  t.is(await connectionsSettle(t.context.server, 0), 0);
  await c.close();
});

test.serial('the payload stream: close() in the middle destroys the socket; a whole body keeps it for reuse', async (t) => {
  server.accepted = 0;
  server.handler = partial(8192, 100_000, () => {});
  const c = createDispatcher({ connectTimeoutSeconds: 2, readTimeoutSeconds: 2 });
  const stream = await openPayloadStream({ url: `${t.context.url}/p`, size: 100_000, offset: 0, lowSpeedBytesPerSecond: 0, lowSpeedSeconds: 1, dispatcher: c });
  const iterator = stream.body[Symbol.asyncIterator]();
  t.false((await iterator.next()).done);
  stream.close();
  t.is(await connectionsSettle(t.context.server, 0), 0);

  const payload = Buffer.alloc(50_000, 3);
  server.handler = (req, res) => {
    const start = Number(/^bytes=(\d+)-$/.exec(req.headers.range ?? '')?.[1] ?? 0);
    res.writeHead(start ? 206 : 200, { etag: '"p"', 'content-length': payload.length - start, ...(start ? { 'content-range': `bytes ${start}-${payload.length - 1}/${payload.length}` } : {}) });
    res.end(payload.subarray(start));
  };
  server.accepted = 0;
  const whole = await openPayloadStream({ url: `${t.context.url}/p`, size: payload.length, offset: 0, lowSpeedBytesPerSecond: 0, lowSpeedSeconds: 1, dispatcher: c });
  t.is((await readAll(whole.body as AsyncIterable<Buffer>)).length, payload.length);
  whole.close();
  const resumed = await openPayloadStream({ url: `${t.context.url}/p`, size: payload.length, offset: 20_000, etag: '"p"', lowSpeedBytesPerSecond: 0, lowSpeedSeconds: 1, dispatcher: c });
  t.is(resumed.etag, '"p"');
  t.is((await readAll(resumed.body as AsyncIterable<Buffer>)).length, 30_000);
  t.is(server.accepted, 1, 'the second request reused the connection');
  await c.close();
  t.is(await connectionsSettle(t.context.server, 0), 0);
});

test.serial('https URLs go through TLS: a self-signed server fails verification as ERR_NETWORK', async (t) => {
  const dir = await mkdtemp(join(tmpdir(), 'tandem-https-'));
  try {
    try {
      await promisify(execFile)('openssl', ['req', '-x509', '-newkey', 'ec', '-pkeyopt', 'ec_paramgen_curve:P-256', '-nodes', '-subj', '/CN=127.0.0.1', '-days', '1', '-keyout', join(dir, 'key.pem'), '-out', join(dir, 'cert.pem')]);
    } catch {
      t.pass('openssl is not available here');
      return;
    }
    const tls = https.createServer({ key: await readFile(join(dir, 'key.pem')), cert: await readFile(join(dir, 'cert.pem')) }, (_req, res) => res.end('{}'));
    await new Promise<void>((resolve) => tls.listen(0, '127.0.0.1', resolve));
    const c = createDispatcher({ connectTimeoutSeconds: 2, readTimeoutSeconds: 2 });
    try {
      const err = await t.throwsAsync<TandemError>(callJson({ method: 'GET', url: `https://127.0.0.1:${(tls.address() as AddressInfo).port}/`, maxBytes: 100, dispatcher: c }), { code: 'ERR_NETWORK' });
      t.is(err?.details?.code, 'DEPTH_ZERO_SELF_SIGNED_CERT');
    } finally {
      await c.close();
      tls.closeAllConnections();
      await new Promise((resolve) => tls.close(resolve));
    }
  } finally {
    await rm(dir, { recursive: true, force: true });
  }
});

test.serial('connect timeout: a TLS handshake that never completes (connecting includes it) fails in bounded time', async (t) => {
  // Loopback connects at once, and here even unroutable addresses answer, so the handshake is what hangs.
  const sockets = new Set<net.Socket>();
  const silent = net.createServer((socket) => {
    sockets.add(socket);
    // Read (and drop) the ClientHello, so the client's FIN is seen.
    socket.resume();
    socket.on('close', () => sockets.delete(socket));
  });
  await new Promise<void>((resolve) => silent.listen(0, '127.0.0.1', resolve));
  const c = createDispatcher({ connectTimeoutSeconds: 0.3, readTimeoutSeconds: 5 });
  try {
    const started = Date.now();
    const err = await t.throwsAsync<TandemError>(callJson({ method: 'GET', url: `https://127.0.0.1:${(silent.address() as AddressInfo).port}/`, maxBytes: 100, dispatcher: c }), { code: 'ERR_NETWORK' });
    t.true(Date.now() - started < 3000);
    t.is(err?.details?.code, 'UND_ERR_CONNECT_TIMEOUT');
    const deadline = Date.now() + 2000;
    while (sockets.size > 0 && Date.now() < deadline) await new Promise((r) => setTimeout(r, 10));
    t.is(sockets.size, 0, 'the half-open connection is closed');
  } finally {
    await c.close();
    for (const socket of sockets) socket.destroy();
    await new Promise((resolve) => silent.close(resolve));
  }
});
