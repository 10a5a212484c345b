/**
 * A loopback reverse proxy that breaks HTTP on purpose (the network fault
 * campaign, test/campaigns/network.ts). It listens on 127.0.0.1:0, forwards
 * every request to one upstream (the real update server) and, where a rule of
 * its fault plan matches, damages the exchange the way links, middleboxes and
 * servers do: a connection reset after N body bytes, a stall (for a while or
 * until the client gives up), a drip-feed at B bytes/s, a body cut short but
 * closed cleanly, a flipped byte, a wrong `Content-Range`, a 500/503 answer
 * instead of the upstream's (with `Retry-After` for a 503), or a hook run
 * before the request goes upstream or once N body bytes went out (replace a
 * file, restart the server).
 *
 * Rules match a route (`payload`, `check`, `events`, … from the path) and
 * count the requests they match: `skip` lets the first ones through, `times`
 * says how many after that get the fault ("only the 2nd payload request",
 * "the next 4 payload requests"). The first applicable rule wins. Every
 * request is logged (range asked, status and Content-Range sent, body bytes
 * written, when the fault hit, when the client hung up), and body bytes are
 * counted per route, so a campaign can tell how much a device downloaded
 * again and how fast it noticed a stall.
 *
 * Only loopback: the upstream is an http:// URL on this machine, and the
 * proxy itself binds 127.0.0.1.
 */
import { once } from 'node:events';
import { createServer, request as httpRequest, type IncomingHttpHeaders, type IncomingMessage, type OutgoingHttpHeaders, type Server, type ServerResponse } from 'node:http';
import type { AddressInfo, Socket } from 'node:net';

export type Fault =
  /** Tear the client connection down (TCP RST) once `afterBytes` body bytes went out. */
  | { kind: 'reset'; afterBytes: number }
  /** Send nothing more for `ms` once `afterBytes` went out; without `ms`, until the client hangs up. */
  | { kind: 'stall'; afterBytes: number; ms?: number }
  /** Once `afterBytes` went out, send the rest at `bytesPerSecond`. */
  | { kind: 'drip'; afterBytes: number; bytesPerSecond: number }
  /**
   * End the body after `atBytes`, cleanly: `chunked` drops Content-Length and
   * ends with the terminating chunk (a well-formed message that is too short);
   * `length` declares `atBytes` as Content-Length (the headers admit it).
   */
  | { kind: 'truncate'; atBytes: number; framing?: 'chunked' | 'length' }
  /** XOR the body byte at `offset` (of this response's body) with `mask` (default 0x01). */
  | { kind: 'flip'; offset: number; mask?: number }
  /** Replace the Content-Range header (given the upstream's, undefined when none). */
  | { kind: 'contentRange'; rewrite: (upstream: string | undefined) => string }
  /** Answer `status` without asking upstream; a `retryAfterSeconds` adds Retry-After. */
  | { kind: 'status'; status: number; retryAfterSeconds?: number }
  /** Run `run` (awaited) before the request goes upstream, then forward it unharmed. */
  | { kind: 'beforeUpstream'; run: () => void | Promise<void> }
  /** Run `run` (awaited) once `afterBytes` body bytes went out, then carry on forwarding. */
  /** Runs `run` once `afterBytes` went out; with `cut`, the connection then dies as a crashed server's would (whatever the upstream had already sent). */
  | { kind: 'midBody'; afterBytes: number; run: () => void | Promise<void>; cut?: boolean };

export interface FaultRule {
  /** Route as `routeOf` names it (default: any). */
  route?: string;
  /** HTTP method (default: any). */
  method?: string;
  /** Matching requests let through before the fault applies (default 0): skip 1 = from the 2nd one. */
  skip?: number;
  /** Matching requests that get the fault after the skipped ones (default 1; Infinity for all). */
  times?: number;
  fault: Fault;
}

export type RequestOutcome =
  | 'open'
  /** The whole upstream body went out. */
  | 'complete'
  /** The proxy reset the connection (a `reset` fault). */
  | 'reset'
  /** The proxy ended the body early (a `truncate` fault). */
  | 'truncated'
  /** The client hung up before the body was done. */
  | 'client-closed'
  /** The upstream failed (refused the connection, or cut its response). */
  | 'upstream-failed'
  /** The proxy answered by itself (a `status` fault). */
  | 'injected';

export interface ProxiedRequest {
  id: number;
  method: string;
  path: string;
  route: string;
  range?: string;
  ifRange?: string;
  /** The fault applied, if any. */
  fault?: Fault['kind'];
  /** Status the upstream answered (undefined when it was not asked or failed). */
  upstreamStatus?: number;
  /** Status sent to the client. */
  status?: number;
  contentRange?: string;
  contentLength?: string;
  retryAfter?: string;
  /** Body bytes handed to the client's socket. */
  bytes: number;
  /** Milliseconds since the proxy started (performance.now based). */
  startedAt: number;
  /** When the fault hit (its byte threshold was reached, or the answer was injected). */
  faultAt?: number;
  endedAt?: number;
  outcome: RequestOutcome;
  /** The upstream's error, when it failed. */
  error?: string;
}

export interface RouteStats {
  requests: number;
  bytes: number;
}

export interface FaultProxyOptions {
  /** http://127.0.0.1:PORT of the real server. */
  upstream: string;
  /** Names a route from a request path (default: payload, check, events, enroll, admin, other). */
  routeOf?: (path: string) => string;
  /** When the upstream cannot be reached: answer 502 (a proxy's answer, default) or reset the client (a dead host). */
  upstreamDown?: 'bad-gateway' | 'reset';
}

export function defaultRouteOf(path: string): string {
  const pathname = path.split('?')[0] ?? path;
  if (pathname.startsWith('/v1/payloads/')) return 'payload';
  if (pathname === '/v1/check') return 'check';
  if (pathname === '/v1/events') return 'events';
  if (pathname === '/v1/devices/enroll') return 'enroll';
  if (pathname.startsWith('/v1/admin/')) return 'admin';
  return 'other';
}

/** RFC 9110 §7.6.1 connection-specific headers: never forwarded. */
const HOP_BY_HOP = new Set(['connection', 'keep-alive', 'proxy-connection', 'proxy-authenticate', 'proxy-authorization', 'te', 'trailer', 'transfer-encoding', 'upgrade']);

function forwardable(headers: IncomingHttpHeaders): OutgoingHttpHeaders {
  const out: OutgoingHttpHeaders = {};
  for (const [name, value] of Object.entries(headers)) {
    if (value !== undefined && !HOP_BY_HOP.has(name)) out[name] = value;
  }
  return out;
}

function one(value: string | string[] | undefined): string | undefined {
  return Array.isArray(value) ? value[0] : value;
}

interface ActiveRule {
  rule: FaultRule;
  seen: number;
  applied: number;
}

/** The byte count a fault waits for before it acts, if it is that kind of fault. */
function thresholdOf(fault: Fault | undefined): number | undefined {
  if (!fault) return undefined;
  switch (fault.kind) {
    case 'reset':
    case 'stall':
    case 'drip':
    case 'midBody':
      return fault.afterBytes;
    case 'truncate':
      return fault.atBytes;
    default:
      return undefined;
  }
}

export class FaultProxy {
  url = '';
  readonly log: ProxiedRequest[] = [];
  private readonly routes = new Map<string, RouteStats>();
  private rules: ActiveRule[] = [];
  private server: Server | undefined;
  private readonly sockets = new Set<Socket>();
  private readonly upstream: URL;
  private readonly routeOf: (path: string) => string;
  private readonly origin = performance.now();
  private nextId = 1;
  private closing = false;
  private readonly closed: Promise<void>;
  private signalClosed: () => void = () => {};

  constructor(readonly options: FaultProxyOptions) {
    this.upstream = new URL(options.upstream);
    if (this.upstream.protocol !== 'http:') throw new Error(`fault proxy: upstream must be http://, not ${options.upstream}`);
    this.routeOf = options.routeOf ?? defaultRouteOf;
    this.closed = new Promise((resolve) => (this.signalClosed = resolve));
  }

  async start(): Promise<this> {
    const server = createServer((req, res) => {
      void this.handle(req, res).catch((err: unknown) => {
        // A proxy bug must show, not hang the client: answer or cut.
        if (!res.headersSent) res.writeHead(599, { 'content-type': 'text/plain' }).end(`fault proxy: ${String(err)}`);
        else res.destroy();
      });
    });
    server.on('connection', (s: Socket) => {
      this.sockets.add(s);
      s.on('close', () => this.sockets.delete(s));
    });
    this.server = server;
    await new Promise<void>((resolve, reject) => {
      server.once('error', reject);
      server.listen(0, '127.0.0.1', () => {
        server.off('error', reject);
        resolve();
      });
    });
    this.url = `http://127.0.0.1:${(server.address() as AddressInfo).port}`;
    return this;
  }

  async close(): Promise<void> {
    this.closing = true;
    this.signalClosed();
    for (const s of this.sockets) s.destroy();
    await new Promise<void>((resolve) => (this.server ? this.server.close(() => resolve()) : resolve()));
  }

  /** Replaces the fault plan; each rule's counters start from zero. */
  plan(rules: readonly FaultRule[]): void {
    this.rules = rules.map((rule) => ({ rule, seen: 0, applied: 0 }));
  }

  /** The fault clears: everything is forwarded unharmed from now on. */
  clear(): void {
    this.rules = [];
  }

  /** A cursor into the log: `since(mark)` is what happened after it. */
  mark(): number {
    return this.log.length;
  }

  since(mark: number, route?: string): ProxiedRequest[] {
    return this.log.slice(mark).filter((r) => route === undefined || r.route === route);
  }

  /** Requests and body bytes sent to clients, per route, since the proxy started. */
  stats(route: string): RouteStats {
    return { ...(this.routes.get(route) ?? { requests: 0, bytes: 0 }) };
  }

  /** Milliseconds since the proxy started, the clock of the log. */
  now(): number {
    return performance.now() - this.origin;
  }

  private pick(method: string, route: string): Fault | undefined {
    let chosen: Fault | undefined;
    for (const active of this.rules) {
      const { rule } = active;
      if ((rule.route !== undefined && rule.route !== route) || (rule.method !== undefined && rule.method !== method)) continue;
      active.seen++;
      // Every matching rule counts the request; the first one due applies.
      if (chosen === undefined && active.seen > (rule.skip ?? 0) && active.applied < (rule.times ?? 1)) {
        active.applied++;
        chosen = rule.fault;
      }
    }
    return chosen;
  }

  /** Records how a request ended, once: the first word is the true one (a reset is not also a hang-up). */
  private settle(entry: ProxiedRequest, outcome: RequestOutcome): void {
    if (entry.outcome !== 'open') return;
    entry.outcome = outcome;
    entry.endedAt = this.now();
  }

  private count(entry: ProxiedRequest, bytes: number): void {
    entry.bytes += bytes;
    this.routes.get(entry.route)!.bytes += bytes;
  }

  private async handle(req: IncomingMessage, res: ServerResponse): Promise<void> {
    const method = req.method ?? 'GET';
    const path = req.url ?? '/';
    const route = this.routeOf(path);
    const entry: ProxiedRequest = {
      id: this.nextId++,
      method,
      path,
      route,
      ...(req.headers.range !== undefined ? { range: req.headers.range } : {}),
      ...(req.headers['if-range'] !== undefined ? { ifRange: one(req.headers['if-range']) } : {}),
      bytes: 0,
      startedAt: this.now(),
      outcome: 'open',
    };
    this.log.push(entry);
    const stats = this.routes.get(route) ?? { requests: 0, bytes: 0 };
    stats.requests++;
    this.routes.set(route, stats);
    const fault = this.pick(method, route);
    if (fault) entry.fault = fault.kind;
    const finish = (outcome: RequestOutcome) => this.settle(entry, outcome);
    res.once('close', () => {
      if (!res.writableFinished) finish('client-closed');
    });

    if (fault?.kind === 'status') {
      req.resume();
      const body = JSON.stringify({ error: { code: fault.status === 503 ? 'ERR_UNAVAILABLE' : 'ERR_INTERNAL', message: `fault proxy: injected ${fault.status}` } });
      const headers: OutgoingHttpHeaders = { 'content-type': 'application/json', 'content-length': Buffer.byteLength(body) };
      if (fault.retryAfterSeconds !== undefined) headers['retry-after'] = String(fault.retryAfterSeconds);
      entry.status = fault.status;
      entry.faultAt = this.now();
      if (fault.retryAfterSeconds !== undefined) entry.retryAfter = String(fault.retryAfterSeconds);
      finish('injected');
      res.writeHead(fault.status, headers);
      res.end(body);
      return;
    }
    if (fault?.kind === 'beforeUpstream') {
      entry.faultAt = this.now();
      await fault.run();
    }

    const upstreamReq = httpRequest({
      host: this.upstream.hostname,
      port: this.upstream.port,
      method,
      path,
      headers: forwardable(req.headers),
      agent: false,
    });
    res.once('close', () => {
      if (!res.writableFinished) upstreamReq.destroy();
    });
    let upstreamRes: IncomingMessage;
    try {
      req.pipe(upstreamReq);
      [upstreamRes] = (await once(upstreamReq, 'response')) as [IncomingMessage];
    } catch (err) {
      entry.error = (err as Error).message;
      if (res.destroyed) return;
      finish('upstream-failed');
      if (this.options.upstreamDown === 'reset') {
        res.socket?.resetAndDestroy();
      } else {
        entry.status = 502;
        res.writeHead(502, { 'content-type': 'application/json' }).end(JSON.stringify({ error: { code: 'ERR_BAD_GATEWAY', message: `fault proxy: upstream unreachable: ${entry.error}` } }));
      }
      return;
    }
    upstreamRes.on('error', () => {});
    entry.upstreamStatus = upstreamRes.statusCode ?? 0;

    const headers = forwardable(upstreamRes.headers);
    if (fault?.kind === 'contentRange') {
      headers['content-range'] = fault.rewrite(one(upstreamRes.headers['content-range']));
      entry.faultAt = this.now();
    }
    if (fault?.kind === 'truncate') {
      if ((fault.framing ?? 'chunked') === 'chunked') delete headers['content-length'];
      else headers['content-length'] = String(fault.atBytes);
    }
    entry.status = upstreamRes.statusCode ?? 0;
    if (headers['content-range'] !== undefined) entry.contentRange = String(headers['content-range']);
    if (headers['content-length'] !== undefined) entry.contentLength = String(headers['content-length']);
    if (headers['retry-after'] !== undefined) entry.retryAfter = String(headers['retry-after']);
    res.writeHead(entry.status, headers);
    if (method === 'HEAD') {
      upstreamRes.resume();
      finish('complete');
      res.end();
      return;
    }
    await this.pump(entry, fault, upstreamRes, res);
  }

  /** Copies the upstream body to the client, applying a body fault on the way; settles the entry. */
  private async pump(entry: ProxiedRequest, fault: Fault | undefined, upstreamRes: IncomingMessage, res: ServerResponse): Promise<void> {
    const gone = new Promise<void>((resolve) => {
      if (res.destroyed) resolve();
      res.once('close', resolve);
    });
    /** Ends the exchange: records how, stops reading upstream, and treats the client as `how` says. */
    const end = (outcome: RequestOutcome, client: 'reset' | 'destroy' | 'end' | 'none'): void => {
      this.settle(entry, outcome);
      upstreamRes.destroy();
      if (client === 'end') res.end();
      else if (client === 'reset' && res.socket && !res.socket.destroyed) res.socket.resetAndDestroy();
      else if (client !== 'none' && !res.destroyed) res.destroy();
    };
    const write = async (chunk: Buffer): Promise<boolean> => {
      if (res.destroyed || chunk.length === 0) return !res.destroyed;
      const flushed = res.write(chunk);
      this.count(entry, chunk.length);
      if (!flushed) await Promise.race([once(res, 'drain').catch(() => undefined), gone]);
      return !res.destroyed;
    };
    const pause = (ms: number): Promise<void> => Promise.race([new Promise<void>((r) => setTimeout(r, ms).unref()), gone, this.closed]);
    const threshold = thresholdOf(fault);
    let sent = 0;
    let triggered = false;
    let dripRate: number | undefined;
    try {
      for await (const piece of upstreamRes) {
        let data = piece as Buffer;
        if (fault?.kind === 'flip' && fault.offset >= sent && fault.offset < sent + data.length) {
          data = Buffer.from(data);
          data[fault.offset - sent] = data[fault.offset - sent]! ^ (fault.mask ?? 0x01);
          entry.faultAt = this.now();
        }
        while (data.length > 0) {
          if (res.destroyed || this.closing) return end('client-closed', 'destroy');
          if (threshold !== undefined && !triggered && sent + data.length >= threshold) {
            const head = data.subarray(0, threshold - sent);
            if (!(await write(head))) return end('client-closed', 'none');
            sent += head.length;
            data = data.subarray(head.length);
            triggered = true;
            entry.faultAt = this.now();
            switch (fault!.kind) {
              case 'reset':
                return end('reset', 'reset');
              case 'truncate':
                return end('truncated', 'end');
              case 'stall':
                if (fault!.ms === undefined) {
                  // Until the client gives up (its read timeout is what the campaign measures).
                  await Promise.race([gone, this.closed]);
                  return end('client-closed', 'destroy');
                }
                await pause(fault!.ms);
                continue;
              case 'drip':
                dripRate = fault!.bytesPerSecond;
                continue;
              case 'midBody':
                await fault!.run();
                if (fault!.cut === true) return end('upstream-failed', 'reset');
                continue;
              default:
                continue;
            }
          }
          if (dripRate !== undefined) {
            // Small steps at even intervals: 1 byte a second is one byte a second, not a burst a minute.
            const step = Math.max(1, Math.floor(dripRate / 10));
            const take = data.subarray(0, step);
            await pause((take.length / dripRate) * 1000);
            if (this.closing || !(await write(take))) return end('client-closed', 'destroy');
            sent += take.length;
            data = data.subarray(take.length);
            continue;
          }
          if (!(await write(data))) return end('client-closed', 'none');
          sent += data.length;
          data = data.subarray(data.length);
        }
      }
    } catch (err) {
      // The upstream cut its response (a restart, a crash): the client sees the connection die.
      entry.error = (err as Error).message;
      return end(res.destroyed ? 'client-closed' : 'upstream-failed', 'reset');
    }
    if (!upstreamRes.complete) {
      entry.error = 'upstream response ended early';
      return end('upstream-failed', 'reset');
    }
    if (res.destroyed) return end('client-closed', 'none');
    this.settle(entry, 'complete');
    res.end();
  }
}
