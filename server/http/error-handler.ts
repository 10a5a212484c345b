/**
 * The one place failures become responses (STYLE.md 5): a TandemError is
 * written as `{"error":{"code","message","details"}}` with its table status;
 * anything else is ERR_INTERNAL with no internals in the body, logged with its
 * stack. Every 4xx is logged too, at info, so abuse is visible.
 */
import type { Context, Next } from 'koa';
import type { Logger } from 'pino';
import { TandemError, toTandemError } from '../../shared/errors.ts';
import type { Metrics } from '../metrics.ts';

export function errorHandler(logger: Logger, metrics: Metrics) {
  return async (ctx: Context, next: Next): Promise<void> => {
    try {
      await next();
      if (ctx.status === 404 && ctx.body === undefined) {
        throw new TandemError('ERR_NOT_FOUND', `No route ${ctx.method} ${ctx.path.slice(0, 200)}.`);
      }
    } catch (err) {
      const error = fromKoa(err);
      ctx.status = error.status;
      ctx.type = 'application/json';
      ctx.body = error.toJSON();
      metrics.inc('tandem_http_errors_total', { code: error.code });
      const log = { code: error.code, status: error.status, method: ctx.method, path: ctx.path.slice(0, 200) };
      if (error.status >= 500) logger.error({ ...log, err }, error.message);
      else logger.info(log, error.message);
    }
  };
}

/** Koa and its body readers throw http-errors (`status`, `expose`); keep their 4xx, never their message internals. */
function fromKoa(err: unknown): TandemError {
  if (err instanceof TandemError) return err;
  const e = err as { status?: unknown; expose?: unknown; code?: unknown; message?: unknown } | undefined;
  if (typeof e?.status === 'number' && e.status >= 400 && e.status < 500) {
    const code = e.status === 405 || e.status === 501 ? 'ERR_METHOD_NOT_ALLOWED' : e.status === 404 ? 'ERR_NOT_FOUND' : e.status === 413 ? 'ERR_BODY_TOO_LARGE' : 'ERR_INVALID_ARGUMENT';
    return new TandemError(code, e.expose === true && typeof e.message === 'string' ? e.message : 'Bad request.', { status: e.status === 501 ? 405 : e.status, cause: err });
  }
  // A client that hangs up mid-body is its own failure, not ours.
  if (e?.code === 'ECONNRESET' || e?.code === 'ERR_STREAM_PREMATURE_CLOSE') {
    return new TandemError('ERR_INVALID_ARGUMENT', 'The request was cut off.', { status: 400, cause: err });
  }
  return toTandemError(err);
}
