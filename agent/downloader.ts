/**
 * The payload as a byte stream from HTTP, for the apply engine to consume as
 * it arrives (no temporary copy): a GET from an offset with `Range` and
 * `If-Range: <etag>`, the response checked against what was asked (status,
 * Content-Range, Content-Length), the body capped at the signed size, and
 * stalls detected — both silence (the client's body timeout) and dripping (less
 * than lowSpeedBytesPerSecond over lowSpeedSeconds of waiting, like curl's
 * --speed-limit/--speed-time). Only time spent waiting on the network counts,
 * so a slow disk behind backpressure is never mistaken for a stall.
 */
import { TandemError } from '../shared/errors.ts';
import { parseRetryAfter } from './backoff.ts';
import type { HttpClient, HttpResponse } from './http-client.ts';
import { networkError } from './http.ts';

export interface PayloadRequest {
  url: string;
  /** Total payload size from the signed offer. */
  size: number;
  /** First byte wanted (a checkpoint's payloadOffset); 0 for the whole payload. */
  offset: number;
  /** ETag of the first response, required for a resume so two payloads are never spliced. */
  etag?: string;
  lowSpeedBytesPerSecond: number;
  lowSpeedSeconds: number;
  dispatcher: HttpClient;
  signal?: AbortSignal;
}

export interface PayloadStream {
  /** The response's ETag (strong validators only are kept). */
  etag?: string;
  offset: number;
  body: AsyncIterable<Uint8Array>;
  /** Bytes received so far. */
  received(): number;
  close(): void;
}

const CONTENT_RANGE = /^bytes (\d+)-(\d+)\/(\d+|\*)$/;

export async function openPayloadStream(req: PayloadRequest): Promise<PayloadStream> {
  if (req.offset < 0 || req.offset >= req.size) {
    throw new TandemError('ERR_INVALID_ARGUMENT', `Resume offset ${req.offset} is outside the ${req.size}-byte payload.`);
  }
  const ranged = req.offset > 0;
  const headers: Record<string, string> = { 'accept-encoding': 'identity' };
  if (ranged) {
    headers.range = `bytes=${req.offset}-`;
    if (req.etag !== undefined) headers['if-range'] = req.etag;
  }
  let res: HttpResponse;
  try {
    res = await req.dispatcher.request({ method: 'GET', url: req.url, headers, ...(req.signal ? { signal: req.signal } : {}) });
  } catch (err) {
    throw networkError(err, req.url);
  }
  const fail = (code: 'ERR_HTTP_STATUS' | 'ERR_CONTENT_RANGE' | 'ERR_DOWNLOAD_TOO_LARGE' | 'ERR_PAYLOAD_CHANGED', message: string, details: Record<string, unknown> = {}): never => {
    res.body.destroy();
    throw new TandemError(code, `${req.url}: ${message}`, { details: { url: req.url, status: res.statusCode, ...details } });
  };
  const header = (name: string): string | undefined => {
    const v = res.headers[name];
    return Array.isArray(v) ? v[0] : v;
  };
  const rawEtag = header('etag');
  const etag = rawEtag !== undefined && !rawEtag.startsWith('W/') ? rawEtag : undefined;

  if (ranged && res.statusCode === 200) {
    // If-Range failed (or the server ignores Range): the representation changed since the checkpoint.
    fail('ERR_PAYLOAD_CHANGED', `asked to resume at byte ${req.offset} with ETag ${req.etag ?? '(none)'} but got the whole payload: it changed since the download began.`, { etag });
  }
  if (res.statusCode !== (ranged ? 206 : 200)) {
    const retryAfterSeconds = parseRetryAfter(header('retry-after'), new Date());
    fail('ERR_HTTP_STATUS', `HTTP ${res.statusCode} (expected ${ranged ? 206 : 200}).`, retryAfterSeconds === undefined ? {} : { retryAfterSeconds });
  }
  if (ranged) {
    const m = CONTENT_RANGE.exec(header('content-range') ?? '');
    if (!m || Number(m[1]) !== req.offset || Number(m[2]) !== req.size - 1 || (m[3] !== '*' && Number(m[3]) !== req.size)) {
      fail('ERR_CONTENT_RANGE', `Content-Range ${JSON.stringify(header('content-range') ?? null)} does not answer bytes=${req.offset}- of a ${req.size}-byte payload.`);
    }
    if (req.etag !== undefined && etag !== undefined && etag !== req.etag) {
      fail('ERR_PAYLOAD_CHANGED', `resumed with ETag ${req.etag} but the server sent ${etag}.`, { etag });
    }
  }
  const expected = req.size - req.offset;
  const contentLength = header('content-length');
  if (contentLength !== undefined && Number(contentLength) !== expected) {
    fail(Number(contentLength) > expected ? 'ERR_DOWNLOAD_TOO_LARGE' : 'ERR_CONTENT_RANGE', `Content-Length ${contentLength} is not the ${expected} bytes the signed offer declares.`);
  }

  let received = 0;
  const body = res.body;
  async function* stream(): AsyncGenerator<Uint8Array> {
    const iterator = body[Symbol.asyncIterator]();
    let windowWait = 0;
    let windowBytes = 0;
    const window = req.lowSpeedSeconds * 1000;
    try {
      for (;;) {
        const started = performance.now();
        let next: IteratorResult<Buffer>;
        try {
          next = await iterator.next();
        } catch (err) {
          throw networkError(err, req.url);
        }
        if (next.done) return;
        windowWait += performance.now() - started;
        windowBytes += next.value.length;
        received += next.value.length;
        if (received > expected) {
          throw new TandemError('ERR_DOWNLOAD_TOO_LARGE', `${req.url}: the body goes on beyond the ${expected} bytes the signed offer declares.`, { details: { url: req.url, limit: expected } });
        }
        if (req.lowSpeedBytesPerSecond > 0 && windowWait >= window) {
          const rate = (windowBytes * 1000) / windowWait;
          if (rate < req.lowSpeedBytesPerSecond) {
            throw new TandemError('ERR_DOWNLOAD_STALLED', `${req.url}: ${Math.round(rate)} bytes/s over the last ${(windowWait / 1000).toFixed(1)} s of waiting, below ${req.lowSpeedBytesPerSecond}.`, {
              details: { url: req.url, rate: Math.round(rate) },
            });
          }
          windowWait = 0;
          windowBytes = 0;
        }
        yield next.value;
      }
    } finally {
      body.destroy();
      await iterator.return?.();
    }
  }
  return {
    ...(etag !== undefined ? { etag } : {}),
    offset: req.offset,
    body: stream(),
    received: () => received,
    close: () => body.destroy(),
  };
}
