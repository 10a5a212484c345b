/**
 * What the agent tests share: a device on disk (two slot files, a boot env,
 * a state folder, a config file), images and signed payloads, and a real
 * HTTP server on 127.0.0.1 that speaks the device protocol (shared/schemas/
 * protocol.ts) with a real server key — small enough that tests can make it
 * misbehave on purpose (the hostile-server tests). End-to-end tests against
 * the real update server (server/) live in agent-server-e2e.test.ts.
 *
 * A reboot cannot happen here. It is simulated: the agent process is stopped
 * and started again after the boot env went through decideBoot, exactly as the
 * bootloader script would leave it (simulateReboot).
 */
import { createHash, randomBytes, type KeyObject } from 'node:crypto';
import { createReadStream } from 'node:fs';
import { mkdir, mkdtemp, readFile, rm, stat, writeFile } from 'node:fs/promises';
import { pipeline } from 'node:stream/promises';
import { createServer, type IncomingMessage, type Server, type ServerResponse } from 'node:http';
import type { AddressInfo, Socket } from 'node:net';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { createPayload, type PayloadSummary } from '../../payloads/generate.ts';
import { canonicalBytes } from '../../shared/canonical-json.ts';
import { createKeyring, signBytes, type KeyringDocument, type KeyringSignature, type RootTrust } from '../../shared/keyring.ts';
import { encodePublicKeyFile, generateKeyPair } from '../../shared/keys.ts';
import { parseSafeJson } from '../../shared/safe-json.ts';
import { CHECK_RESPONSE_DOMAIN, validateCheckRequest, validateEventsRequest, type CheckRequest, type CheckResponse, type CheckResponseBody, type DeviceEvent } from '../../shared/schemas/protocol.ts';
import { DeviceAgent, type CycleResult } from '../../agent/agent.ts';
import { createBootControl, simulateReboot, type BootControl } from '../../agent/boot-control/index.ts';
import { loadConfig, type AgentConfig } from '../../agent/config.ts';

const YEAR = 365 * 24 * 3600 * 1000;

export interface FleetKeys {
  root: { publicKey: Buffer; privateKey: KeyObject };
  release: { publicKey: Buffer; privateKey: KeyObject };
  server: { publicKey: Buffer; privateKey: KeyObject };
  keyring: KeyringDocument;
  trust: RootTrust;
}

export function makeFleetKeys(options: { keyringVersion?: number } = {}): FleetKeys {
  const root = generateKeyPair();
  const release = generateKeyPair();
  const server = generateKeyPair();
  const keyring = createKeyring(
    {
      version: options.keyringVersion ?? 1,
      expires: new Date(Date.now() + YEAR),
      roots: { threshold: 1, keys: [root.publicKey] },
      releaseKeys: [{ publicKey: release.publicKey, expires: new Date(Date.now() + YEAR) }],
      serverKeys: [{ publicKey: server.publicKey, expires: new Date(Date.now() + YEAR) }],
    },
    [root.privateKey],
  );
  return { root, release, server, keyring, trust: { rootKeys: [root.publicKey], threshold: 1 } };
}

/** A deterministic image: runs of zeros, repeated blocks and pseudo-random bytes, like a filesystem. */
export function makeImage(sizeMiB: number, seed: number): Buffer {
  const size = sizeMiB * 1024 * 1024;
  const out = Buffer.alloc(size);
  let x = seed >>> 0 || 1;
  const next = () => {
    x ^= x << 13;
    x ^= x >>> 17;
    x ^= x << 5;
    return x >>> 0;
  };
  for (let off = 0; off < size; off += 4096) {
    const kind = next() % 4;
    if (kind === 0) continue; // zeros
    if (kind === 1 && off >= 8192) {
      out.copy(out, off, (next() % (off / 4096)) * 4096, (next() % (off / 4096)) * 4096 + 4096);
      continue;
    }
    // Text-like bytes: compressible but not trivially.
    for (let i = 0; i < 4096; i += 4) out.writeUInt32LE(kind === 2 ? next() : (next() & 0x3f3f3f3f) | 0x20202020, off + i);
  }
  return out;
}

/** `base` with a fraction of its blocks changed: the next release of an image. */
export function evolveImage(base: Buffer, seed: number, fraction = 0.2): Buffer {
  const out = Buffer.from(base);
  const fresh = makeImage(Math.ceil(base.length / (1024 * 1024)), seed);
  for (let off = 0; off < out.length; off += 4096) {
    if (((off / 4096) * 2654435761 + seed) % 100 < fraction * 100) fresh.copy(out, off, off, off + 4096);
  }
  return out;
}

export function sha256(bytes: Uint8Array): string {
  return createHash('sha256').update(bytes).digest('hex');
}

export async function tempDir(name: string): Promise<string> {
  return mkdtemp(join(tmpdir(), `tandem-agent-${name}-`));
}

export interface Release {
  version: string;
  image: Buffer;
  full: PayloadSummary;
  delta?: PayloadSummary;
}

/** Writes the image and its payloads (full, and a delta from `from` when given) under `dir`. */
export async function makeRelease(dir: string, keys: FleetKeys, version: string, image: Buffer, options: { board?: string; product?: string; from?: { version: string; image: Buffer } } = {}): Promise<Release> {
  await mkdir(dir, { recursive: true });
  const imagePath = join(dir, `${version}.img`);
  await writeFile(imagePath, image);
  const common = { version, board: options.board ?? 'testboard', product: options.product ?? 'appliance', signer: keys.release.privateKey, keyring: keys.keyring, level: 3 };
  const full = await createPayload({ ...common, image: imagePath, out: join(dir, `${version}.full.tpl`) });
  let delta: PayloadSummary | undefined;
  if (options.from) {
    const sourcePath = join(dir, `${options.from.version}.src.img`);
    await writeFile(sourcePath, options.from.image);
    delta = await createPayload({ ...common, image: imagePath, source: { path: sourcePath, version: options.from.version }, out: join(dir, `${options.from.version}-${version}.delta.tpl`) });
  }
  return { version, image, full, ...(delta ? { delta } : {}) };
}

// ---- The protocol server ----------------------------------------------------

export interface Offer {
  version: string;
  payload: PayloadSummary;
  allowDowngrade?: boolean;
  channel?: string;
}

export interface ProtocolServerOptions {
  keys: FleetKeys;
}

export type Handler = (req: IncomingMessage, res: ServerResponse, body: Buffer) => boolean | Promise<boolean>;

/**
 * A device-protocol server: check (signed responses), events, enroll, and
 * content-addressed payloads with Range, If-Range and ETag.
 */
export class ProtocolServer {
  url = '';
  readonly events: DeviceEvent[] = [];
  readonly checks: CheckRequest[] = [];
  readonly payloadRequests: { range?: string; ifRange?: string }[] = [];
  /** Decides the offer per check; undefined: noUpdate. */
  offer: (req: CheckRequest) => Offer | undefined = () => undefined;
  /** Rewrites a response body before it is signed. */
  mutateBody: (body: CheckResponseBody) => void = () => {};
  /** Rewrites the whole signed response. */
  mutateResponse: (response: CheckResponse) => unknown = (r) => r;
  /** Runs first; returns true when it answered the request itself. */
  intercept: Handler | undefined;
  /** Serve payloads at this rate (bytes/s), like a slow link; unlimited when undefined. */
  payloadBytesPerSecond: number | undefined;
  pollAfterSeconds = 60;
  ttlSeconds = 300;
  /** Payload files by sha256. */
  readonly payloads = new Map<string, string>();
  private server: Server | undefined;
  private readonly sockets = new Set<Socket>();

  constructor(readonly options: ProtocolServerOptions) {}

  async start(): Promise<this> {
    this.server = createServer((req, res) => {
      void this.handle(req, res).catch((err: unknown) => {
        if (!res.headersSent) res.writeHead(500).end(String(err));
        else res.destroy();
      });
    });
    this.server.on('connection', (s) => {
      this.sockets.add(s);
      s.on('close', () => this.sockets.delete(s));
    });
    await new Promise<void>((resolve) => this.server!.listen(0, '127.0.0.1', resolve));
    this.url = `http://127.0.0.1:${(this.server.address() as AddressInfo).port}`;
    return this;
  }

  async close(): Promise<void> {
    for (const s of this.sockets) s.destroy();
    await new Promise<void>((resolve) => this.server?.close(() => resolve()) ?? resolve());
  }

  addPayload(summary: PayloadSummary): void {
    this.payloads.set(summary.sha256, summary.path);
  }

  /** Signs a check response body the way a real server does. */
  sign(body: CheckResponseBody, key = this.options.keys.server.privateKey): CheckResponse {
    return { body, signature: signBytes(canonicalBytes(body), key, CHECK_RESPONSE_DOMAIN) };
  }

  async buildResponse(req: CheckRequest): Promise<CheckResponse> {
    const now = Date.now();
    const body: CheckResponseBody = {
      type: 'tandem-check-response',
      deviceId: req.deviceId,
      nonce: req.nonce,
      issuedAt: new Date(now).toISOString(),
      expires: new Date(now + this.ttlSeconds * 1000).toISOString(),
      pollAfterSeconds: this.pollAfterSeconds,
      keyring: this.options.keys.keyring,
      result: 'noUpdate',
    };
    const offer = this.offer(req);
    if (offer) {
      this.addPayload(offer.payload);
      const stored = await readPrelude(offer.payload.path);
      body.result = 'update';
      body.update = {
        version: offer.version,
        channel: offer.channel ?? req.channel,
        allowDowngrade: offer.allowDowngrade ?? false,
        payload: {
          kind: offer.payload.manifest.kind,
          url: `/v1/payloads/${offer.payload.sha256}`,
          size: offer.payload.size,
          sha256: offer.payload.sha256,
          ...(offer.payload.manifest.source ? { sourceVersion: offer.payload.manifest.source.version } : {}),
          preludeSize: stored.preludeSize,
        },
        manifest: stored.manifest.toString('base64'),
        signatures: stored.signatures,
      };
    }
    this.mutateBody(body);
    return this.sign(body);
  }

  private async handle(req: IncomingMessage, res: ServerResponse): Promise<void> {
    const chunks: Buffer[] = [];
    if (req.method === 'POST') for await (const c of req) chunks.push(c as Buffer);
    const body = Buffer.concat(chunks);
    if (this.intercept && (await this.intercept(req, res, body))) return;
    const url = new URL(req.url ?? '/', this.url);
    if (req.method === 'POST' && url.pathname === '/v1/check') {
      const request = validateCheckRequest(parseSafeJson(body));
      this.checks.push(request);
      const response = this.mutateResponse(await this.buildResponse(request));
      res.writeHead(200, { 'content-type': 'application/json' }).end(JSON.stringify(response));
      return;
    }
    if (req.method === 'POST' && url.pathname === '/v1/events') {
      const request = validateEventsRequest(parseSafeJson(body));
      this.events.push(...request.events);
      res.writeHead(200, { 'content-type': 'application/json' }).end(JSON.stringify({ accepted: request.events.length }));
      return;
    }
    if (req.method === 'POST' && url.pathname === '/v1/devices/enroll') {
      const request = parseSafeJson(body) as { deviceId: string; channel: string; token: string };
      if (request.token !== 'enroll-token-0123456789') {
        res.writeHead(401, { 'content-type': 'application/json' }).end(JSON.stringify({ error: { code: 'ERR_ENROLLMENT_TOKEN', message: 'bad token' } }));
        return;
      }
      res.writeHead(200, { 'content-type': 'application/json' }).end(JSON.stringify({ deviceId: request.deviceId, credential: 'credential-0123456789abcdef', channel: request.channel }));
      return;
    }
    const m = /^\/v1\/payloads\/([0-9a-f]{64})$/.exec(url.pathname);
    if (req.method === 'GET' && m) {
      this.payloadRequests.push({ ...(req.headers.range ? { range: req.headers.range } : {}), ...(req.headers['if-range'] ? { ifRange: String(req.headers['if-range']) } : {}) });
      const path = this.payloads.get(m[1]!);
      if (!path) {
        res.writeHead(404).end();
        return;
      }
      await serveFile(req, res, path, `"${m[1]}"`, this.payloadBytesPerSecond);
      return;
    }
    res.writeHead(404).end();
  }
}

/** A static file with Range, If-Range and a strong ETag: what any CDN does. */
export async function serveFile(req: IncomingMessage, res: ServerResponse, path: string, etag: string, bytesPerSecond?: number): Promise<void> {
  const send = (stream: NodeJS.ReadableStream) => {
    if (bytesPerSecond === undefined) {
      stream.pipe(res);
      return;
    }
    const chunk = 16 * 1024;
    void pipeline(
      stream,
      async function* (source: AsyncIterable<Buffer | string>) {
        for await (const piece of source) {
          const data = Buffer.from(piece);
          for (let at = 0; at < data.length; at += chunk) {
            await new Promise((r) => setTimeout(r, (chunk / bytesPerSecond) * 1000));
            yield data.subarray(at, at + chunk);
          }
        }
      },
      res,
    ).catch(() => res.destroy());
  };
  const size = (await stat(path)).size;
  const range = /^bytes=(\d+)-(\d*)$/.exec(req.headers.range ?? '');
  const ifRange = req.headers['if-range'];
  if (range && (ifRange === undefined || ifRange === etag)) {
    const start = Number(range[1]);
    const end = range[2] ? Math.min(Number(range[2]), size - 1) : size - 1;
    if (start >= size) {
      res.writeHead(416, { 'content-range': `bytes */${size}` }).end();
      return;
    }
    res.writeHead(206, { 'content-range': `bytes ${start}-${end}/${size}`, 'content-length': end - start + 1, etag, 'accept-ranges': 'bytes' });
    send(createReadStream(path, { start, end }));
    return;
  }
  res.writeHead(200, { 'content-length': size, etag, 'accept-ranges': 'bytes' });
  send(createReadStream(path));
}

async function readPrelude(path: string): Promise<{ manifest: Buffer; signatures: KeyringSignature[]; preludeSize: number }> {
  const { ByteReader } = await import('../../payloads/byte-reader.ts');
  const { readPrelude: read } = await import('../../payloads/payload-reader.ts');
  const reader = new ByteReader(createReadStream(path, { end: 16 * 1024 * 1024 }));
  try {
    const prelude = await read(reader);
    return { manifest: prelude.manifestBytes, signatures: prelude.signatureBlock.signatures, preludeSize: prelude.dataOffset };
  } finally {
    await reader.close();
  }
}

// ---- The device ---------------------------------------------------------------

export interface Device {
  dir: string;
  configPath: string;
  stateDir: string;
  slotA: string;
  slotB: string;
  bootEnv: string;
  rebootMarker: string;
  control: BootControl;
  config(): Promise<AgentConfig>;
  /** Power-cycles the (simulated) device: the bootloader's decision is applied to the boot env. */
  reboot(): Promise<'A' | 'B'>;
  slot(name: 'A' | 'B'): Promise<Buffer>;
  rebootRequested(): Promise<boolean>;
  clearRebootRequest(): Promise<void>;
}

export interface DeviceOptions {
  server: string;
  /** The fleet's keys; only the root public key is pinned on the device. */
  keys: { root: { publicKey: Buffer } };
  version: string;
  image: Buffer;
  healthChecks?: unknown[];
  overrides?: Record<string, unknown>;
  product?: string;
  board?: string;
}

/** A provisioned device: slot A holds `image` and is good and booted, slot B is empty. */
export async function makeDevice(dir: string, options: DeviceOptions): Promise<Device> {
  await mkdir(dir, { recursive: true });
  const slotA = join(dir, 'slot-a.img');
  const slotB = join(dir, 'slot-b.img');
  const bootEnv = join(dir, 'bootenv.json');
  const stateDir = join(dir, 'state');
  const rebootMarker = join(dir, 'reboot-requested');
  await writeFile(slotA, options.image);
  await writeFile(slotB, randomBytes(4096));
  await writeFile(join(dir, 'root.pub'), encodePublicKeyFile(options.keys.root.publicKey));
  const control = createBootControl({ kind: 'file', path: bootEnv });
  await control.markGood('A');
  await simulateReboot(control);
  const config = {
    server: options.server,
    deviceId: `dev-${randomBytes(4).toString('hex')}`,
    product: options.product ?? 'appliance',
    board: options.board ?? 'testboard',
    channel: 'stable',
    version: options.version,
    rootKeys: ['root.pub'],
    slots: { A: slotA, B: slotB },
    bootControl: { kind: 'file', path: 'bootenv.json' },
    bootedSlotFrom: 'bootenv',
    tries: 3,
    rebootCommand: ['touch', rebootMarker],
    health: { deadlineSeconds: 5, intervalSeconds: 0.2, checks: options.healthChecks ?? [] },
    poll: { intervalSeconds: 1, minSeconds: 0.1, errorBackoffBaseSeconds: 0.1, errorBackoffMaxSeconds: 1 },
    download: { connectTimeoutSeconds: 2, readTimeoutSeconds: 2, lowSpeedSeconds: 1, lowSpeedBytesPerSecond: 4096, retries: 3, backoffBaseSeconds: 0.05, backoffMaxSeconds: 0.2, checkpointEveryBytes: 256 * 1024 },
    stateDir: 'state',
    ...options.overrides,
  };
  const configPath = join(dir, 'agent.json');
  await writeFile(configPath, JSON.stringify(config, null, 2));
  return {
    dir,
    configPath,
    stateDir,
    slotA,
    slotB,
    bootEnv,
    rebootMarker,
    control,
    config: () => loadConfig(configPath),
    reboot: async () => (await simulateReboot(control)).boot,
    slot: (name) => readFile(name === 'A' ? slotA : slotB),
    rebootRequested: () => stat(rebootMarker).then(() => true, () => false),
    clearRebootRequest: () => rm(rebootMarker, { force: true }),
  };
}

/** The first `size` bytes of a slot hash to `sha` (slots may be larger than the image in them). */
/** One agent run on a device: open, one cycle, close (what `tandem-agent check` does). */
export async function runCycle(dev: Device): Promise<CycleResult> {
  const agent = await DeviceAgent.open(await dev.config());
  try {
    return await agent.cycle();
  } finally {
    await agent.close();
  }
}

export async function slotHolds(path: string, image: Buffer): Promise<boolean> {
  const bytes = await readFile(path);
  return bytes.length >= image.length && bytes.subarray(0, image.length).equals(image);
}
