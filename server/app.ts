/**
 * createApp(ctx) returns the koa app (STYLE.md, koa anchor): one error
 * middleware first, then one router per API. `app.callback()` mounts on any
 * http.Server, which is how startServer and the tests use it.
 */
import Router from '@koa/router';
import Koa from 'koa';
import { TandemError } from '../shared/errors.ts';
import type { ServerContext } from './context.ts';
import { errorHandler } from './http/error-handler.ts';
import { openApiDocument } from './openapi.ts';
import { adminRouter } from './routes/admin-api.ts';
import { deviceRouter } from './routes/device-api.ts';
import { payloadRouter } from './routes/payloads.ts';

export function createApp(sc: ServerContext): Koa {
  const app = new Koa();
  app.silent = true;
  app.on('error', (err: unknown) => sc.logger.debug({ err }, 'response stream error'));
  app.use(errorHandler(sc.logger, sc.metrics));

  const misc = new Router();
  misc.get('/healthz', async (ctx) => {
    await sc.store.countDevices();
    ctx.body = { status: 'ok' };
  });
  misc.get('/metrics', async (ctx) => {
    ctx.type = 'text/plain; version=0.0.4';
    ctx.body = await sc.metrics.render();
  });
  const openapi = openApiDocument();
  misc.get('/v1/openapi.json', (ctx) => {
    ctx.body = openapi;
  });
  misc.get('/v1/keyring', (ctx) => {
    ctx.body = sc.keys.keyring;
  });

  const allowed = {
    throw: true,
    methodNotAllowed: () => new TandemError('ERR_METHOD_NOT_ALLOWED', 'Method not allowed on this route.'),
    notImplemented: () => new TandemError('ERR_METHOD_NOT_ALLOWED', 'Method not implemented.'),
  };
  // Device calls first: they are nearly all the traffic, and the routers' paths do not overlap.
  for (const router of [deviceRouter(sc), payloadRouter(sc), misc, adminRouter(sc)]) {
    app.use(router.routes());
    app.use(router.allowedMethods(allowed));
  }
  return app;
}
