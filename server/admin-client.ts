/**
 * A typed client of the admin API (undici): what the `tandem` release-manager
 * commands and the end-to-end tests use. Errors come back as TandemErrors
 * with the server's stable code; network failures as ERR_NETWORK.
 */
import { createReadStream } from 'node:fs';
import { stat } from 'node:fs/promises';
import { Transform } from 'node:stream';
import { request } from 'undici';
import { TandemError, type ErrorCode } from '../shared/errors.ts';
import type {
  EnrollmentTokenCreateRequest,
  JobView,
  PublishResponse,
  ReleasePatchRequest,
  ReleaseView,
  RolloutUpdateRequest,
  StatusResponse,
} from '../shared/schemas/admin.ts';

export interface DeviceView {
  id: string;
  product: string;
  board: string;
  channel: string;
  enrolledAt: string;
  lastSeenAt: string | null;
  version: string | null;
  slot: string | null;
  pinnedVersion: string | null;
  checkCount: number;
}

export interface DeviceDetail extends DeviceView {
  failures: { version: string; firstAt: string; source: string; code: string | null; clearedAt: string | null; clearedBy: string | null }[];
  events: { id: string; type: string; version: string; channel: string; at: string; code: string | null; message: string | null; receivedAt: string }[];
}

export interface RequestOptions {
  json?: unknown;
  query?: Record<string, string | undefined>;
  file?: { path: string; onProgress?: (done: number, total: number) => void };
}

export class AdminClient {
  readonly baseUrl: string;

  constructor(baseUrl: string, private readonly token: string) {
    this.baseUrl = baseUrl.replace(/\/+$/, '');
  }

  async request<T>(method: string, path: string, options: RequestOptions = {}): Promise<T> {
    const url = new URL(this.baseUrl + path);
    for (const [k, v] of Object.entries(options.query ?? {})) if (v !== undefined) url.searchParams.set(k, v);
    const headers: Record<string, string> = { authorization: `Bearer ${this.token}`, accept: 'application/json' };
    let body: string | NodeJS.ReadableStream | undefined;
    if (options.json !== undefined) {
      headers['content-type'] = 'application/json';
      body = JSON.stringify(options.json);
    } else if (options.file) {
      const { size } = await stat(options.file.path);
      headers['content-type'] = 'application/octet-stream';
      headers['content-length'] = String(size);
      let done = 0;
      const onProgress = options.file.onProgress;
      body = createReadStream(options.file.path, { highWaterMark: 1024 * 1024 }).pipe(new Transform({
        transform(chunk: Buffer, _e, cb) {
          done += chunk.length;
          onProgress?.(done, size);
          cb(null, chunk);
        },
      }));
    }
    let res;
    try {
      res = await request(url, { method: method as 'GET', headers, body: body as string | undefined, headersTimeout: 0, bodyTimeout: 0 });
    } catch (cause) {
      throw new TandemError('ERR_NETWORK', `Cannot reach ${this.baseUrl}: ${(cause as Error).message}`, { cause });
    }
    const text = await res.body.text();
    if (res.statusCode >= 400) {
      let parsed: { error?: { code?: string; message?: string; details?: Record<string, unknown> } } = {};
      try {
        parsed = JSON.parse(text) as typeof parsed;
      } catch {
        // not JSON: a proxy's error page
      }
      const code = (parsed.error?.code ?? (res.statusCode >= 500 ? 'ERR_UNAVAILABLE' : 'ERR_INVALID_ARGUMENT')) as ErrorCode;
      throw new TandemError(code, parsed.error?.message ?? `HTTP ${res.statusCode} from ${url.pathname}`, {
        status: res.statusCode,
        ...(parsed.error?.details ? { details: parsed.error.details } : {}),
      });
    }
    return (text === '' ? undefined : JSON.parse(text)) as T;
  }

  whoami(): Promise<{ id: string; name: string; role: string }> {
    return this.request('GET', '/v1/admin/whoami');
  }

  createToken(role: 'admin' | 'release' | 'viewer', name?: string): Promise<{ id: string; name: string; role: string; token: string; createdAt: string }> {
    return this.request('POST', '/v1/admin/tokens', { json: { role, ...(name ? { name } : {}) } });
  }

  createEnrollmentToken(req: EnrollmentTokenCreateRequest): Promise<{ id: string; token: string; product: string; channel: string; board: string | null }> {
    return this.request('POST', '/v1/admin/enrollment-tokens', { json: req });
  }

  publishImage(path: string, q: { channel: string; version: string; board: string; product?: string; steppingStone?: boolean; allowDowngrade?: boolean; notes?: string }, onProgress?: (done: number, total: number) => void): Promise<PublishResponse> {
    return this.request('POST', '/v1/admin/releases', {
      file: { path, ...(onProgress ? { onProgress } : {}) },
      query: {
        channel: q.channel, version: q.version, board: q.board, product: q.product, notes: q.notes,
        steppingStone: q.steppingStone === undefined ? undefined : String(q.steppingStone),
        allowDowngrade: q.allowDowngrade === undefined ? undefined : String(q.allowDowngrade),
      },
    });
  }

  publishPayload(path: string, q: { channel: string; steppingStone?: boolean; allowDowngrade?: boolean; notes?: string }, onProgress?: (done: number, total: number) => void): Promise<PublishResponse> {
    return this.request('POST', '/v1/admin/payloads', {
      file: { path, ...(onProgress ? { onProgress } : {}) },
      query: {
        channel: q.channel, notes: q.notes,
        steppingStone: q.steppingStone === undefined ? undefined : String(q.steppingStone),
        allowDowngrade: q.allowDowngrade === undefined ? undefined : String(q.allowDowngrade),
      },
    });
  }

  releases(q: { channel?: string; product?: string } = {}): Promise<ReleaseView[]> {
    return this.request('GET', '/v1/admin/releases', { query: q });
  }

  patchRelease(id: string, patch: ReleasePatchRequest): Promise<ReleaseView> {
    return this.request('PATCH', `/v1/admin/releases/${encodeURIComponent(id)}`, { json: patch });
  }

  rollout(channel: string, version: string, product?: string): Promise<ReleaseView> {
    return this.request('GET', `/v1/admin/rollouts/${encodeURIComponent(channel)}/${encodeURIComponent(version)}`, { query: { product } });
  }

  setRollout(channel: string, version: string, req: RolloutUpdateRequest): Promise<ReleaseView> {
    return this.request('PUT', `/v1/admin/rollouts/${encodeURIComponent(channel)}/${encodeURIComponent(version)}`, { json: req });
  }

  status(q: { channel?: string; product?: string } = {}): Promise<StatusResponse[]> {
    return this.request('GET', '/v1/admin/status', { query: q });
  }

  devices(q: { channel?: string; product?: string; version?: string; after?: string; limit?: number } = {}): Promise<DeviceView[]> {
    return this.request('GET', '/v1/admin/devices', { query: { ...q, limit: q.limit === undefined ? undefined : String(q.limit) } });
  }

  device(id: string): Promise<DeviceDetail> {
    return this.request('GET', `/v1/admin/devices/${encodeURIComponent(id)}`);
  }

  clearFailure(id: string, version: string): Promise<{ deviceId: string; version: string; cleared: boolean }> {
    return this.request('POST', `/v1/admin/devices/${encodeURIComponent(id)}/clear-failure`, { json: { version } });
  }

  pin(id: string, version: string | null): Promise<{ deviceId: string; pinnedVersion: string | null }> {
    return this.request('PUT', `/v1/admin/devices/${encodeURIComponent(id)}/pin`, { json: { version } });
  }

  removeDevice(id: string): Promise<void> {
    return this.request('DELETE', `/v1/admin/devices/${encodeURIComponent(id)}`);
  }

  jobs(): Promise<JobView[]> {
    return this.request('GET', '/v1/admin/jobs');
  }

  job(id: string): Promise<JobView> {
    return this.request('GET', `/v1/admin/jobs/${encodeURIComponent(id)}`);
  }

  /** Polls a job until it is done or failed. */
  async waitForJob(id: string, { intervalMs = 200, timeoutMs = 600_000 } = {}): Promise<JobView> {
    const deadline = Date.now() + timeoutMs;
    for (;;) {
      const job = await this.job(id);
      if (job.state === 'done' || job.state === 'failed') return job;
      if (Date.now() > deadline) throw new TandemError('ERR_UNAVAILABLE', `Job ${id} did not finish in ${timeoutMs} ms.`);
      await new Promise((r) => setTimeout(r, intervalMs));
    }
  }

  audit(limit = 100): Promise<{ id: number; at: string; actor: string; action: string; target: string; details: Record<string, unknown> }[]> {
    return this.request('GET', '/v1/admin/audit', { query: { limit: String(limit) } });
  }
}

/**
 * Where the release-manager CLI finds its server and token: flags first, then
 * TANDEM_SERVER / TANDEM_TOKEN, then a JSON file `{"server","token"}` named by
 * --config or TANDEM_CONFIG.
 */
export async function adminClientFrom(flags: { server?: string; token?: string; config?: string }, env: NodeJS.ProcessEnv): Promise<AdminClient> {
  let file: { server?: string; token?: string } = {};
  const configPath = flags.config ?? env.TANDEM_CONFIG;
  if (configPath !== undefined) {
    const { readFile } = await import('node:fs/promises');
    const { parseSafeJson } = await import('../shared/safe-json.ts');
    file = parseSafeJson(await readFile(configPath), { maxBytes: 64 * 1024, maxDepth: 4 }) as typeof file;
  }
  const server = flags.server ?? env.TANDEM_SERVER ?? file.server;
  const token = flags.token ?? env.TANDEM_TOKEN ?? file.token;
  if (!server) throw new TandemError('ERR_INVALID_ARGUMENT', 'No server: pass --server URL or set TANDEM_SERVER.');
  if (!token) throw new TandemError('ERR_INVALID_ARGUMENT', 'No token: pass --token T or set TANDEM_TOKEN.');
  return new AdminClient(server, token);
}
