/** A real server on 127.0.0.1:0 with a temp data dir, synthetic images and a protocol-speaking test device. */
import type { ExecutionContext } from 'ava';
import { createHash, randomBytes } from 'node:crypto';
import { mkdtemp, rm, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { pino } from 'pino';
import { request } from 'undici';
import { AdminClient, startServer, type RunningServer, type ServerConfigInput } from '../../server/index.ts';
import type { CheckRequest, CheckResponse, DeviceEvent } from '../../shared/schemas/protocol.ts';

export interface TestServer {
  server: RunningServer;
  dir: string;
  admin: AdminClient;
  stop(): Promise<void>;
}

export async function startTestServer(config: ServerConfigInput = {}, dir?: string): Promise<TestServer> {
  const dataDir = dir ?? (await mkdtemp(join(tmpdir(), 'tandem-server-')));
  const server = await startServer({
    listen: '127.0.0.1:0',
    dataDir,
    config: { zstdLevel: 3, ...config },
    logger: pino({ level: process.env.TANDEM_TEST_LOG ?? 'silent' }),
  });
  return {
    server,
    dir: dataDir,
    admin: new AdminClient(server.url, server.adminToken),
    async stop() {
      await server.close();
    },
  };
}

export async function removeDir(dir: string): Promise<void> {
  await rm(dir, { recursive: true, force: true });
}

/**
 * Byte-exact comparison of two buffers. ava's deepEqual formats both values
 * byte by byte (about 13 s for 3 MiB, and more while other test files run),
 * so it is kept for small values; this says where the first difference is.
 */
export function sameBytes(t: ExecutionContext, actual: Uint8Array, expected: Uint8Array, what = 'bytes'): void {
  const equal = Buffer.compare(actual, expected) === 0;
  let i = 0;
  while (!equal && i < actual.length && i < expected.length && actual[i] === expected[i]) i++;
  t.true(equal, `${what}: ${actual.length} bytes, expected ${expected.length}; first difference at offset ${i}`);
}

/** A few MiB: pseudo-random regions (seeded, so two versions share most blocks) and zero regions. */
export async function makeImage(path: string, options: { mib?: number; seed?: string; changed?: number } = {}): Promise<Buffer> {
  const mib = options.mib ?? 3;
  const block = 4096;
  const out = Buffer.alloc(mib * 1024 * 1024);
  for (let off = 0, i = 0; off < out.length; off += block, i++) {
    if (i % 8 === 7) continue; // zero region
    const seed = i < (options.changed ?? 0) ? `${options.seed ?? 'base'}-changed` : 'base';
    let h = createHash('sha256').update(`${seed}:${i}`).digest();
    for (let j = 0; j < block; j += 32) {
      h.copy(out, off + j);
      h = createHash('sha256').update(h).digest();
    }
  }
  if (options.seed) randomBytes(1024).copy(out, 0);
  await writeFile(path, out);
  return out;
}

let counter = 0;
export function nonce(): string {
  return `${Date.now().toString(36)}${(counter++).toString(36)}${randomBytes(8).toString('hex')}`;
}

// eslint-disable-next-line @typescript-eslint/no-explicit-any -- tests read arbitrary JSON shapes
type Json = any;

export async function post(url: string, path: string, body: unknown, credential?: string, rawBody?: string | Buffer): Promise<{ status: number; body: Json }> {
  const res = await request(url + path, {
    method: 'POST',
    headers: { 'content-type': 'application/json', ...(credential ? { authorization: `Bearer ${credential}` } : {}) },
    body: rawBody ?? JSON.stringify(body),
  });
  const text = await res.body.text();
  return { status: res.statusCode, body: text ? JSON.parse(text) : undefined };
}

export class TestDevice {
  credential = '';
  constructor(
    readonly url: string,
    readonly id: string,
    readonly product = 'acme',
    readonly board = 'rpi4',
    public channel = 'stable',
  ) {}

  async enroll(token: string): Promise<void> {
    const res = await post(this.url, '/v1/devices/enroll', { token, deviceId: this.id, product: this.product, board: this.board, channel: this.channel });
    if (res.status !== 201) throw new Error(`enroll failed: ${JSON.stringify(res.body)}`);
    this.credential = res.body.credential;
  }

  checkRequest(version: string, extra: Partial<CheckRequest> = {}): CheckRequest {
    return { deviceId: this.id, product: this.product, board: this.board, channel: this.channel, version, slot: 'A', failedVersions: [], nonce: nonce(), ...extra };
  }

  async check(version: string, extra: Partial<CheckRequest> = {}): Promise<CheckResponse> {
    const res = await post(this.url, '/v1/check', this.checkRequest(version, extra), this.credential);
    if (res.status !== 200) throw new Error(`check failed: ${res.status} ${JSON.stringify(res.body)}`);
    return res.body as CheckResponse;
  }

  async events(events: Partial<DeviceEvent>[]): Promise<{ status: number; body: Json }> {
    const full = events.map((e) => ({ id: randomBytes(8).toString('hex'), at: new Date().toISOString(), channel: this.channel, ...e }));
    return post(this.url, '/v1/events', { deviceId: this.id, events: full }, this.credential);
  }
}
