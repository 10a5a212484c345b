/**
 * Payload serving (DESIGN.md "Device protocol"): content-addressed, immutable,
 * streamed from disk with backpressure, one Range per request (how the agent
 * resumes), ETag = the sha256, cached for a year. A CDN or any static server
 * can serve the same directory instead; these headers are what it must send.
 */
import Router from '@koa/router';
import type { Context } from 'koa';
import { createReadStream } from 'node:fs';
import { stat } from 'node:fs/promises';
import { join } from 'node:path';
import { TandemError } from '../../shared/errors.ts';
import type { ServerContext } from '../context.ts';

const SHA256 = /^[0-9a-f]{64}$/;

export interface ByteRange {
  start: number;
  end: number;
}

/**
 * RFC 9110 §14: `undefined` when the header is absent or not a bytes range we
 * parse (then the whole file is sent, as the RFC allows), `null` when it is
 * unsatisfiable (416), otherwise the inclusive range. Several ranges are
 * refused with 416: the agent never asks for them and multipart is not served.
 */
export function parseRange(header: string | undefined, size: number): ByteRange | null | undefined {
  if (header === undefined || header === '') return undefined;
  const m = /^bytes=([^,]*)(,.*)?$/.exec(header.trim());
  if (!m) return undefined;
  if (m[2] !== undefined) return null;
  const one = /^\s*(\d{0,15})-(\d{0,15})\s*$/.exec(m[1]!);
  if (!one || (one[1] === '' && one[2] === '')) return null;
  if (one[1] === '') {
    const suffix = Number(one[2]);
    if (suffix === 0 || size === 0) return null;
    return { start: Math.max(0, size - suffix), end: size - 1 };
  }
  const start = Number(one[1]);
  const end = one[2] === '' ? size - 1 : Math.min(Number(one[2]), size - 1);
  if (start >= size || start > end) return null;
  return { start, end };
}

export function payloadRouter(sc: ServerContext): Router {
  const router = new Router();
  const serve = async (ctx: Context): Promise<void> => {
    const sha256 = (ctx.params as { sha256: string }).sha256;
    if (!SHA256.test(sha256)) throw new TandemError('ERR_INVALID_ARGUMENT', 'A payload is named by its lowercase hex sha256.');
    const path = join(sc.paths.payloads, sha256);
    const info = await stat(path).catch(() => undefined);
    if (!info?.isFile()) {
      sc.metrics.inc('tandem_payload_requests_total', { status: '404' });
      throw new TandemError('ERR_NOT_FOUND', `No payload ${sha256}.`);
    }
    const etag = `"${sha256}"`;
    ctx.set('ETag', etag);
    ctx.set('Cache-Control', 'public, max-age=31536000, immutable');
    ctx.set('Accept-Ranges', 'bytes');
    ctx.set('Last-Modified', info.mtime.toUTCString());
    const inm = ctx.get('If-None-Match');
    if (inm !== '' && inm.split(',').some((t) => t.trim().replace(/^W\//, '') === etag || t.trim() === '*')) {
      ctx.status = 304;
      sc.metrics.inc('tandem_payload_requests_total', { status: '304' });
      return;
    }
    let range = parseRange(ctx.get('Range') || undefined, info.size);
    // If-Range with another validator: the client's partial copy is stale, send it all.
    const ifRange = ctx.get('If-Range');
    if (ifRange !== '' && ifRange !== etag) range = undefined;
    if (range === null) {
      ctx.set('Content-Range', `bytes */${info.size}`);
      sc.metrics.inc('tandem_payload_requests_total', { status: '416' });
      throw new TandemError('ERR_RANGE_NOT_SATISFIABLE', `The range is not satisfiable for a payload of ${info.size} bytes.`, { details: { size: info.size } });
    }
    const start = range?.start ?? 0;
    const end = range?.end ?? info.size - 1;
    const length = end - start + 1;
    ctx.status = range ? 206 : 200;
    if (range) ctx.set('Content-Range', `bytes ${start}-${end}/${info.size}`);
    ctx.type = 'application/octet-stream';
    ctx.length = length;
    sc.metrics.inc('tandem_payload_requests_total', { status: String(ctx.status) });
    if (ctx.method === 'HEAD') return;
    const stream = createReadStream(path, { start, end, highWaterMark: 256 * 1024 });
    stream.on('data', (chunk) => sc.metrics.inc('tandem_payload_bytes_served_total', {}, (chunk as Buffer).length));
    ctx.body = stream;
  };
  // @koa/router answers HEAD with the GET route; koa drops the body.
  router.get('/v1/payloads/:sha256', serve);
  return router;
}
