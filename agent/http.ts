/**
 * The agent's HTTP (http-client.ts, on node:http): one client with connect and read timeouts,
 * JSON calls whose bodies are read with a size cap and parsed with safe JSON,
 * and the payload stream (downloader.ts). Network failures become
 * ERR_NETWORK, HTTP failures ERR_HTTP_STATUS with the status, so retry
 * decisions switch on codes.
 */
import { TandemError, isTandemError } from '../shared/errors.ts';
import { parseSafeJson, type JsonValue } from '../shared/safe-json.ts';
import { parseRetryAfter } from './backoff.ts';
import { createHttpClient, type HttpClient, type HttpResponse, type ResponseBody } from './http-client.ts';

export type { HttpClient } from './http-client.ts';

export interface HttpOptions {
  connectTimeoutSeconds: number;
  readTimeoutSeconds: number;
}

/** The agent's one client: connections kept alive 4 s (below Node servers' 5 s), the read timeout for headers and for body silence. */
export function createDispatcher(options: HttpOptions): HttpClient {
  return createHttpClient({
    connectTimeoutMs: options.connectTimeoutSeconds * 1000,
    headersTimeoutMs: options.readTimeoutSeconds * 1000,
    bodyTimeoutMs: options.readTimeoutSeconds * 1000,
    keepAliveTimeoutMs: 4000,
  });
}

// The timeout codes undici used; http-client.ts keeps them.
const TIMEOUTS = new Set(['UND_ERR_CONNECT_TIMEOUT', 'UND_ERR_HEADERS_TIMEOUT', 'UND_ERR_BODY_TIMEOUT']);

/** Client and socket failures → ERR_NETWORK (timeouts included); aborts stay aborts; TandemErrors pass. */
export function networkError(err: unknown, url: string): unknown {
  if (isTandemError(err)) return err;
  const e = err as { code?: string; name?: string; message?: string; cause?: { code?: string } };
  if (e?.name === 'AbortError') return err;
  const code = e?.code ?? e?.cause?.code ?? 'unknown';
  const what = TIMEOUTS.has(code) ? 'timed out' : 'failed';
  return new TandemError('ERR_NETWORK', `${new URL(url).origin}: request ${what} (${code}): ${e?.message ?? String(err)}`, {
    cause: err,
    details: { url, code },
  });
}

/** Reads a response body up to `maxBytes`; more is refused without reading it all. */
export async function readBodyCapped(body: ResponseBody, maxBytes: number, url: string): Promise<Buffer> {
  const chunks: Buffer[] = [];
  let size = 0;
  for await (const chunk of body) {
    size += chunk.length;
    if (size > maxBytes) {
      body.destroy();
      throw new TandemError('ERR_RESPONSE_TOO_LARGE', `${url}: response body exceeds ${maxBytes} bytes.`, { details: { url, limit: maxBytes } });
    }
    chunks.push(chunk);
  }
  return Buffer.concat(chunks, size);
}

export interface JsonCall {
  method: 'GET' | 'POST';
  url: string;
  body?: unknown;
  credential?: string;
  maxBytes: number;
  dispatcher: HttpClient;
  signal?: AbortSignal;
}

export interface JsonResult {
  status: number;
  json: JsonValue | undefined;
  /** The body as received: what a signature over the server's exact bytes is checked against. */
  bytes: Buffer;
}

/** A JSON call; a non-2xx answer throws ERR_HTTP_STATUS carrying the server's error code when it sent one. */
export async function callJson(call: JsonCall): Promise<JsonResult> {
  let res: HttpResponse;
  try {
    res = await call.dispatcher.request({
      method: call.method,
      url: call.url,
      headers: {
        accept: 'application/json',
        ...(call.body !== undefined ? { 'content-type': 'application/json' } : {}),
        ...(call.credential !== undefined ? { authorization: `Bearer ${call.credential}` } : {}),
      },
      ...(call.body !== undefined ? { body: JSON.stringify(call.body) } : {}),
      ...(call.signal ? { signal: call.signal } : {}),
    });
  } catch (err) {
    throw networkError(err, call.url);
  }
  let bytes: Buffer;
  try {
    bytes = await readBodyCapped(res.body, call.maxBytes, call.url);
  } catch (err) {
    throw networkError(err, call.url);
  }
  let json: JsonValue | undefined;
  if (bytes.length > 0) {
    try {
      json = parseSafeJson(bytes, { maxBytes: call.maxBytes, maxDepth: 32 });
    } catch (err) {
      if (res.statusCode >= 200 && res.statusCode < 300) throw err;
    }
  }
  if (res.statusCode < 200 || res.statusCode >= 300) {
    const error = (json as { error?: { code?: unknown; message?: unknown } } | undefined)?.error;
    const serverCode = typeof error?.code === 'string' ? error.code.slice(0, 64) : undefined;
    const serverMessage = typeof error?.message === 'string' ? error.message.slice(0, 300) : '';
    const retryAfter = res.headers['retry-after'];
    const retryAfterSeconds = parseRetryAfter(Array.isArray(retryAfter) ? retryAfter[0] : retryAfter, new Date());
    throw new TandemError('ERR_HTTP_STATUS', `${call.method} ${call.url}: HTTP ${res.statusCode}${serverCode ? ` ${serverCode}` : ''}${serverMessage ? `: ${serverMessage}` : ''}`, {
      details: { status: res.statusCode, url: call.url, ...(serverCode ? { serverCode } : {}), ...(retryAfterSeconds === undefined ? {} : { retryAfterSeconds }) },
    });
  }
  return { status: res.statusCode, json, bytes };
}

/** Worth retrying: the network, timeouts, 408/425/429 and 5xx. */
export function isTransient(err: unknown): boolean {
  if (!isTandemError(err)) return false;
  if (err.code === 'ERR_NETWORK' || err.code === 'ERR_DOWNLOAD_STALLED' || err.code === 'ERR_PAYLOAD_TRUNCATED') return true;
  if (err.code === 'ERR_HTTP_STATUS') {
    const status = Number(err.details?.status);
    return status >= 500 || status === 408 || status === 425 || status === 429;
  }
  return false;
}
