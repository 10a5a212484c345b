/**
 * The network campaign's test bench: the real update server (startServer, on
 * 127.0.0.1 with a temp data dir) with two releases published through the
 * admin API — 1.0.0, then 1.1.0 with the delta the server generates from
 * 1.0.0 — and the fault proxy in front of it. Devices are real agents
 * (DeviceAgent, in-process) on file slots and the file boot-control backend
 * (test/agent/harness.ts makeDevice), pointed at the proxy, so every check,
 * event and payload byte crosses it. The server can be restarted on the same
 * port and data dir while the proxy keeps pointing at it.
 */
import { createHash, randomBytes } from 'node:crypto';
import { createReadStream } from 'node:fs';
import { mkdtemp, readFile, rm, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { Writable } from 'node:stream';
import { pino, type Logger } from 'pino';
import { request } from 'undici';
import { DeviceAgent, type AgentLogger } from '../../agent/agent.ts';
import { inspectPayload } from '../../payloads/inspect.ts';
import { AdminClient, startServer, type RunningServer, type ServerConfigInput } from '../../server/index.ts';
import { decodePublicKeyFile } from '../../shared/keys.ts';
import { evolveImage, makeDevice, type Device } from '../agent/harness.ts';
import { FaultProxy } from './fault-proxy.ts';

export const PRODUCT = 'appliance';
export const BOARD = 'testboard';
export const CHANNEL = 'stable';
export const OLD_VERSION = '1.0.0';
export const NEW_VERSION = '1.1.0';
/** A version with no delta to 1.1.0: devices on it are offered the full payload. */
export const FULL_FROM_VERSION = '0.9.0';

/** Where a payload's bytes are, for placing faults and judging resumes. */
export interface PayloadLayout {
  kind: 'full' | 'delta';
  version: string;
  sha256: string;
  size: number;
  /** The file the server serves it from. */
  path: string;
  /** Header + manifest + signatures: where the data section starts. */
  dataOffset: number;
  /** Payload offset at which each blob starts; a resume (HTTP Range) can only start at one of these. */
  blobStarts: number[];
  blobSizes: number[];
  target: { size: number; sha256: string };
}

export interface AgentLogLine {
  level: 'info' | 'warn' | 'error';
  message: string;
  fields: Record<string, unknown>;
  /** On the proxy's clock (ms). */
  at: number;
}

export interface RigDevice {
  dev: Device;
  agent: DeviceAgent;
  id: string;
  logs: AgentLogLine[];
  close(): Promise<void>;
}

/** The agent's download settings for the campaign: short timeouts so faults show in seconds. */
export interface DownloadSettings {
  connectTimeoutSeconds: number;
  readTimeoutSeconds: number;
  lowSpeedBytesPerSecond: number;
  lowSpeedSeconds: number;
  retries: number;
  backoffBaseSeconds: number;
  backoffMaxSeconds: number;
  checkpointEveryBytes: number;
  deltaFailuresBeforeFull: number;
  maxAttemptsPerVersion: number;
}

export interface RigOptions {
  imageMiB: number;
  /** Fraction of 4 KiB blocks 1.1.0 changes from 1.0.0 (sets the delta's size and generation time). */
  deltaFraction: number;
  progress?: (message: string) => void;
}

/** Server log lines at error level or above (a 500, a crash in a handler): each one is a finding. */
export interface ServerErrorLine {
  msg: string;
  at: number;
  line: string;
}

const SERVER_CONFIG: ServerConfigInput = { zstdLevel: 3 };

/**
 * An image that compresses little, with zero runs: 256 KiB chunks, one in
 * eight zero. Its full payload is several blobs (a blob is at most 8 MiB
 * compressed), so a download has checkpoints to resume from; an image that
 * compresses well into one blob has none (see the campaign's report).
 */
export function makeCampaignImage(mib: number): Buffer {
  const chunk = 256 * 1024;
  const out = Buffer.alloc(mib * 1024 * 1024);
  for (let off = 0, i = 0; off < out.length; off += chunk, i++) {
    if (i % 8 !== 5) randomBytes(chunk).copy(out, off);
  }
  return out;
}

export async function payloadLayout(path: string, sha256: string, size: number): Promise<PayloadLayout> {
  const { summary, manifest } = await inspectPayload(createReadStream(path));
  const blobStarts: number[] = [];
  let at = summary.preludeSize;
  for (const blob of manifest.blobs) {
    blobStarts.push(at);
    at += blob.size;
  }
  if (at !== size) throw new Error(`payload ${sha256}: prelude ${summary.preludeSize} + blobs end at ${at}, but the file is ${size} bytes`);
  return {
    kind: manifest.kind,
    version: manifest.version,
    sha256,
    size,
    path,
    dataOffset: summary.preludeSize,
    blobStarts,
    blobSizes: manifest.blobs.map((b) => b.size),
    target: { size: manifest.target.size, sha256: manifest.target.sha256 },
  };
}

export class NetworkRig {
  server!: RunningServer;
  admin!: AdminClient;
  proxy!: FaultProxy;
  rootPublicKey!: Buffer;
  enrollToken = '';
  image1!: Buffer;
  image2!: Buffer;
  /** 1.1.0 full and delta (from 1.0.0), and 1.0.0 full (a validly signed payload of another version). */
  full!: PayloadLayout;
  delta!: PayloadLayout;
  oldFull!: PayloadLayout;
  readonly serverErrors: ServerErrorLine[] = [];
  private port = 0;
  private devices = 0;
  private readonly logger: Logger;

  private constructor(readonly dir: string) {
    const errors = this.serverErrors;
    const proxyClock = () => (this.proxy ? this.proxy.now() : 0);
    // pino writes JSON lines; keep those at error level (50) or above.
    const sink = new Writable({
      write(chunk: Buffer, _encoding, done) {
        for (const line of chunk.toString('utf8').split('\n')) {
          if (line === '') continue;
          try {
            const parsed = JSON.parse(line) as { level?: number; msg?: string };
            if ((parsed.level ?? 0) >= 50) errors.push({ msg: parsed.msg ?? '', at: proxyClock(), line: line.slice(0, 2000) });
          } catch {
            errors.push({ msg: 'unparsable log line', at: proxyClock(), line: line.slice(0, 2000) });
          }
        }
        done();
      },
    });
    this.logger = pino({ level: 'error' }, sink);
  }

  get serverDir(): string {
    return join(this.dir, 'server');
  }

  static async start(options: RigOptions): Promise<NetworkRig> {
    const rig = new NetworkRig(await mkdtemp(join(tmpdir(), 'tandem-campaign-network-')));
    try {
      await rig.setUp(options);
    } catch (err) {
      await rig.close();
      throw err;
    }
    return rig;
  }

  private async setUp(options: RigOptions): Promise<void> {
    const say = options.progress ?? (() => {});
    this.server = await startServer({ listen: '127.0.0.1:0', dataDir: this.serverDir, config: SERVER_CONFIG, logger: this.logger });
    this.port = Number(new URL(this.server.url).port);
    this.admin = new AdminClient(this.server.url, this.server.adminToken);
    this.rootPublicKey = decodePublicKeyFile(await readFile(this.server.keys.rootPublicKeyPath, 'utf8')).publicKey;

    this.image1 = makeCampaignImage(options.imageMiB);
    this.image2 = evolveImage(this.image1, 41, options.deltaFraction);
    await writeFile(join(this.dir, 'v1.img'), this.image1);
    await writeFile(join(this.dir, 'v2.img'), this.image2);
    say(`publishing ${OLD_VERSION} and ${NEW_VERSION} (${options.imageMiB} MiB images)`);
    const release = { channel: CHANNEL, board: BOARD, product: PRODUCT };
    await this.admin.publishImage(join(this.dir, 'v1.img'), { ...release, version: OLD_VERSION });
    const published = await this.admin.publishImage(join(this.dir, 'v2.img'), { ...release, version: NEW_VERSION });
    if (published.job) {
      say('waiting for the server to generate the delta');
      const job = await this.admin.waitForJob(published.job.id, { timeoutMs: 300_000 });
      if (job.state !== 'done') throw new Error(`delta generation ${job.state}`);
    }
    // Refusals are error events: keep the rollout from halting itself over them.
    await this.admin.setRollout(CHANNEL, NEW_VERSION, { percentage: '100%', failureThresholdBp: 10000, minAttempts: 100000 });
    this.enrollToken = (await this.admin.createEnrollmentToken({ product: PRODUCT, channel: CHANNEL })).token;

    const releases = await this.admin.releases({ channel: CHANNEL, product: PRODUCT });
    const layout = async (version: string, kind: 'full' | 'delta'): Promise<PayloadLayout> => {
      const p = releases.find((r) => r.version === version)?.payloads.find((x) => x.kind === kind);
      if (!p) throw new Error(`the server has no ${kind} payload for ${version}`);
      return payloadLayout(join(this.server.context.paths.payloads, p.sha256), p.sha256, p.size);
    };
    this.full = await layout(NEW_VERSION, 'full');
    this.delta = await layout(NEW_VERSION, 'delta');
    this.oldFull = await layout(OLD_VERSION, 'full');
    const sha2 = createHash('sha256').update(this.image2).digest('hex');
    if (this.full.target.sha256 !== sha2 || this.delta.target.sha256 !== sha2) throw new Error('the 1.1.0 payloads do not target the 1.1.0 image');

    await this.warmPayloadCache();
    this.proxy = await new FaultProxy({ upstream: this.server.url }).start();
  }

  /**
   * Asks the server (directly, not through the proxy) for each payload's
   * headers: it learns a payload's size on the first request for it and keeps
   * it, so every scenario meets a server that has served its payloads before,
   * whichever scenarios ran first.
   */
  async warmPayloadCache(): Promise<void> {
    for (const layout of [this.full, this.delta]) {
      const res = await request(`${this.server.url}/v1/payloads/${layout.sha256}`, { method: 'HEAD' });
      await res.body.dump();
      if (res.statusCode !== 200) throw new Error(`HEAD of payload ${layout.sha256}: ${res.statusCode}`);
    }
  }

  /** Stops the server: every connection is cut, and the port refuses connections until `startAgain`. */
  async stopServer(): Promise<void> {
    await this.server.close();
  }

  /**
   * Starts the server again on the same port and data dir; then warms its
   * payload cache unless told not to (`cold`: it has served nothing yet, like
   * a fresh instance).
   */
  async startAgain(options: { cold?: boolean } = {}): Promise<void> {
    this.server = await startServer({ listen: `127.0.0.1:${this.port}`, dataDir: this.serverDir, config: SERVER_CONFIG, logger: this.logger });
    if (!options.cold) await this.warmPayloadCache();
  }

  async restartServer(downMs: number, options: { cold?: boolean } = {}): Promise<void> {
    await this.stopServer();
    await new Promise((r) => setTimeout(r, downMs));
    await this.startAgain(options);
  }

  /**
   * An enrolled device running `kind`'s source version (1.0.0 for the delta,
   * 0.9.0 — for which no delta exists — for the full payload), slot A booted
   * and good, its agent open with a log collector.
   */
  async device(kind: 'full' | 'delta', download: DownloadSettings): Promise<RigDevice> {
    const dev = await makeDevice(join(this.dir, `device-${this.devices++}-${kind}`), {
      server: this.proxy.url,
      keys: { root: { publicKey: this.rootPublicKey } },
      version: kind === 'delta' ? OLD_VERSION : FULL_FROM_VERSION,
      image: this.image1,
      board: BOARD,
      product: PRODUCT,
      overrides: { download, poll: { intervalSeconds: 1, minSeconds: 0.1, errorBackoffBaseSeconds: 0.1, errorBackoffMaxSeconds: 1 } },
    });
    const logs: AgentLogLine[] = [];
    const push = (level: AgentLogLine['level']) => (fields: Record<string, unknown>, message: string) => logs.push({ level, message, fields, at: this.proxy.now() });
    const logger: AgentLogger = { info: push('info'), warn: push('warn'), error: push('error') };
    const config = await dev.config();
    const agent = await DeviceAgent.open(config, { logger });
    try {
      await agent.enroll(this.enrollToken);
    } catch (err) {
      await agent.close();
      throw err;
    }
    return { dev, agent, id: config.deviceId, logs, close: () => agent.close() };
  }

  /** Overwrites the payload file the server serves (`layout`) with `bytes`. */
  async replacePayload(layout: PayloadLayout, bytes: Buffer): Promise<void> {
    await writeFile(layout.path, bytes);
  }

  async close(): Promise<void> {
    await this.proxy?.close().catch(() => undefined);
    await this.server?.close().catch(() => undefined);
    await rm(this.dir, { recursive: true, force: true });
  }
}
