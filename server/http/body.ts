/**
 * Request bodies, read at the edge and checked once (STYLE.md 6): the raw
 * bytes up to a per-route limit (refused at Content-Length when it says too
 * much, and counted as they stream when it lies or is absent), then the strict
 * JSON parser, then the route's ajv validator. Past this, trust the types.
 */
import type { Context } from 'koa';
import { TandemError } from '../../shared/errors.ts';
import { parseSafeJson } from '../../shared/safe-json.ts';
import type { Validator } from '../../shared/schema-validator.ts';

/**
 * The body's bytes, read with 'data' and 'end' listeners: `for await` over the request (an async
 * iterator and end-of-stream tracking per request) cost about as much as parsing and validating a
 * check-in's body.
 */
export async function readRawBody(ctx: Context, maxBytes: number): Promise<Buffer> {
  const declared = ctx.request.length;
  if (declared !== undefined && declared > maxBytes) {
    throw tooLarge(declared, maxBytes);
  }
  const req = ctx.req;
  return new Promise<Buffer>((resolve, reject) => {
    const chunks: Buffer[] = [];
    let size = 0;
    const settle = (err: unknown, body?: Buffer): void => {
      req.off('data', onData).off('end', onEnd).off('error', settle).off('close', onClose);
      if (body === undefined) reject(err);
      else resolve(body);
    };
    const onData = (chunk: Buffer): void => {
      size += chunk.length;
      if (size > maxBytes) {
        // Stop reading; the connection is closed after the error response so the rest is never buffered.
        req.pause();
        ctx.set('Connection', 'close');
        settle(tooLarge(size, maxBytes));
        return;
      }
      chunks.push(chunk);
    };
    const onEnd = (): void => settle(undefined, chunks.length === 1 ? chunks[0]! : Buffer.concat(chunks, size));
    // Closed before its end: the client hung up mid-body (the error handler's "cut off").
    const onClose = (): void => settle(Object.assign(new Error('The request was closed before its end.'), { code: 'ERR_STREAM_PREMATURE_CLOSE' }));
    req.on('data', onData).on('end', onEnd).on('error', settle).on('close', onClose);
  });
}

function tooLarge(size: number, limit: number): TandemError {
  return new TandemError('ERR_BODY_TOO_LARGE', `The request body exceeds the ${limit}-byte limit of this route.`, { details: { size, limit } });
}

export function requireJsonContentType(ctx: Context): void {
  const type = ctx.get('Content-Type');
  if (type !== '' && !/^application\/json\s*(;|$)/i.test(type)) {
    throw new TandemError('ERR_UNSUPPORTED_MEDIA_TYPE', 'This route takes application/json.', { details: { contentType: type.slice(0, 100) } });
  }
}

export async function readJsonBody<T>(ctx: Context, maxBytes: number, validate: Validator<T>, what: string): Promise<T> {
  requireJsonContentType(ctx);
  const raw = await readRawBody(ctx, maxBytes);
  const json = parseSafeJson(raw, { maxBytes, maxDepth: 16 });
  return validate(json, what);
}

/** A query string as a plain object of single strings; a repeated key is refused, not guessed at. */
export function queryObject(ctx: Context): Record<string, string> {
  const out: Record<string, string> = Object.create(null) as Record<string, string>;
  for (const [key, value] of new URLSearchParams(ctx.querystring)) {
    if (key in out) throw new TandemError('ERR_INVALID_ARGUMENT', `Query parameter ${JSON.stringify(key.slice(0, 40))} appears twice.`);
    out[key] = value;
  }
  return out;
}
