/**
 * Payload serving (DESIGN.md "Device protocol"): content-addressed, immutable,
 * streamed from disk with backpressure, one Range per request (how the agent
 * resumes), ETag = the sha256, cached for a year. A CDN or any static server
 * can serve the same directory instead; these headers are what it must send.
 *
 * Per request this does what a plain node:http file server does (open, read,
 * close) and little more, since a fleet fetches in ranges and every
 * thread-pool round trip counts:
 * - a payload's size and date come from an fstat of the file opened for the
 *   request, never from a cache: a file named by its sha256 should never
 *   change, but one replaced by hand (or by an attacker) must not be
 *   announced with a stale Content-Length — the device refuses the bytes on
 *   their hashes, and serving resumes correctly once the file is restored
 *   (test/campaigns network scenario `replaced-first-serve`);
 * - the body goes out through http/send-file-range.ts: 256 KiB reads (a
 *   quarter of the reads, and thread-pool round trips, of the 64 KiB
 *   default) into reused buffers, instead of a read stream allocating a new
 *   buffer per read for the garbage collector;
 * - bytes served are counted once per response, not per chunk;
 * - headers are set as strings (ctx.type would look the type up in
 *   mime-types on each request).
 */
import Router from '@koa/router';
import type { Context } from 'koa';
import { close, fstat, open, type Stats } from 'node:fs';
import { join } from 'node:path';
import { TandemError } from '../../shared/errors.ts';
import type { ServerContext } from '../context.ts';
import { BufferPool, sendFileRange } from '../http/send-file-range.ts';

const SHA256 = /^[0-9a-f]{64}$/;
const READ_BYTES = 256 * 1024;
/** Free read buffers kept between responses (16 MiB); two per response in flight. */
const KEEP_BUFFERS = 64;

interface PayloadFile {
  size: number;
  lastModified: string;
}

/** What made the former stat() fail for this path: no such payload, as far as a client can tell. */
const ABSENT = new Set(['ENOENT', 'ENOTDIR', 'EACCES', 'ELOOP', 'ENAMETOOLONG']);

function openForReading(path: string): Promise<number | undefined> {
  return new Promise((resolve, reject) => open(path, 'r', (err, fd) => {
    if (err && ABSENT.has(err.code ?? '')) resolve(undefined);
    else if (err) reject(err);
    else resolve(fd);
  }));
}

function statOf(fd: number): Promise<Stats> {
  return new Promise((resolve, reject) => fstat(fd, (err, st) => (err ? reject(err) : resolve(st))));
}

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
  const buffers = new BufferPool(READ_BYTES, KEEP_BUFFERS);
  const notFound = (sha256: string): TandemError => {
    sc.metrics.inc('tandem_payload_requests_total', { status: '404' });
    return new TandemError('ERR_NOT_FOUND', `No payload ${sha256}.`);
  };

  /** Size and date of the open file. */
  const describe = async (sha256: string, fd: number): Promise<PayloadFile> => {
    const st = await statOf(fd);
    if (!st.isFile()) throw notFound(sha256);
    return { size: st.size, lastModified: st.mtime.toUTCString() };
  };

  const serve = async (ctx: Context): Promise<void> => {
    const sha256 = (ctx.params as { sha256: string }).sha256;
    if (!SHA256.test(sha256)) throw new TandemError('ERR_INVALID_ARGUMENT', 'A payload is named by its lowercase hex sha256.');
    // Opened before any header is set, so a missing file is a JSON 404 like any other error.
    const fd = await openForReading(join(sc.paths.payloads, sha256));
    if (fd === undefined) throw notFound(sha256);
    let sending = false;
    try {
      sending = respond(ctx, sha256, fd, await describe(sha256, fd));
    } finally {
      // A body being sent closes the file when done; every other answer closes it here.
      if (!sending) close(fd, () => {});
    }
  };

  /** A 304, a 416, a HEAD or the bytes; true when the body is being sent from `fd`. */
  const respond = (ctx: Context, sha256: string, fd: number, info: PayloadFile): boolean => {
    const etag = `"${sha256}"`;
    ctx.set('ETag', etag);
    ctx.set('Cache-Control', 'public, max-age=31536000, immutable');
    ctx.set('Accept-Ranges', 'bytes');
    ctx.set('Last-Modified', info.lastModified);
    const inm = ctx.get('If-None-Match');
    if (inm !== '' && inm.split(',').some((t) => t.trim().replace(/^W\//, '') === etag || t.trim() === '*')) {
      ctx.status = 304;
      sc.metrics.inc('tandem_payload_requests_total', { status: '304' });
      return false;
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
    ctx.status = range ? 206 : 200;
    if (range) ctx.set('Content-Range', `bytes ${start}-${end}/${info.size}`);
    ctx.set('Content-Type', 'application/octet-stream');
    ctx.length = end - start + 1;
    sc.metrics.inc('tandem_payload_requests_total', { status: String(ctx.status) });
    if (ctx.method === 'HEAD') return false;
    // koa would pipe a stream body; this response is written here, after the status and headers set above.
    ctx.respond = false;
    void sendFileRange(ctx.res, fd, start, end, buffers).then(({ bytes, error }) => {
      close(fd, () => {});
      sc.metrics.inc('tandem_payload_bytes_served_total', {}, bytes);
      if (error !== undefined) sc.logger.debug({ err: error, sha256, start, end, bytes }, 'payload response cut short');
    });
    return true;
  };
  // @koa/router answers HEAD with the GET route; koa drops the body.
  router.get('/v1/payloads/:sha256', serve);
  return router;
}
