/**
 * The admin API for release managers and the `tandem` CLI. Bearer tokens with
 * roles: `viewer` reads, `release` publishes and steers rollouts and devices,
 * `admin` also manages tokens and reads the audit log. Bodies and query strings
 * are validated against shared/schemas/admin.ts before anything happens.
 */
import Router from '@koa/router';
import type { Context } from 'koa';
import { TandemError } from '../../shared/errors.ts';
import type { Validator } from '../../shared/schema-validator.ts';
import {
  validateClearFailure,
  validateDeviceListQuery,
  validateDevicePin,
  validateEmptyQuery,
  validateEnrollmentTokenCreate,
  validateLimitQuery,
  validateProductQuery,
  validatePublishImageQuery,
  validatePublishPayloadQuery,
  validateReleaseListQuery,
  validateReleasePatch,
  validateRolloutUpdate,
  validateTokenCreate,
  type PublishResponse,
  type StatusResponse,
} from '../../shared/schemas/admin.ts';
import { DEVICE_ID } from '../../shared/schemas/protocol.ts';
import { NAME, SEMVER } from '../../shared/schema-validator.ts';
import * as ops from '../admin/operations.ts';
import type { ServerContext } from '../context.ts';
import { authenticateAdmin } from '../http/auth.ts';
import { queryObject, readJsonBody } from '../http/body.ts';
import { publishImage, publishPayload } from '../releases/publish.ts';
import type { AdminToken, Role } from '../store/store.ts';
import { jobView, payloadView, releaseView, rolloutView } from '../views.ts';

const UUID = /^[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$/;
const DEVICE_RE = new RegExp(DEVICE_ID.pattern);
const NAME_RE = new RegExp(NAME.pattern);
const SEMVER_RE = new RegExp(SEMVER.pattern);

/** Path parameters are checked like body fields: a bad one is a 400 naming it, never a lookup. */
function param(ctx: Context, name: string, re: RegExp, max: number): string {
  const value = (ctx.params as Record<string, string>)[name] ?? '';
  if (value.length === 0 || value.length > max || !re.test(value)) {
    throw new TandemError('ERR_INVALID_ARGUMENT', `Invalid ${name} in the path.`, { details: { param: name } });
  }
  return value;
}

function query<T>(ctx: Context, validate: Validator<T>): T {
  return validate(queryObject(ctx), 'query string');
}

export function actorOf(token: AdminToken): string {
  return `${token.name}#${token.id.slice(0, 8)}`;
}

function requireOctetStream(ctx: Context): void {
  const type = ctx.get('Content-Type');
  if (type !== '' && !/^application\/octet-stream\s*(;|$)/i.test(type)) {
    throw new TandemError('ERR_UNSUPPORTED_MEDIA_TYPE', 'Uploads are application/octet-stream.', { details: { contentType: type.slice(0, 100) } });
  }
}

export function adminRouter(sc: ServerContext): Router {
  const router = new Router({ prefix: '/v1/admin' });
  const auth = (ctx: Context, role: Role) => authenticateAdmin(ctx, sc.store, role);
  const json = <T>(ctx: Context, validate: Validator<T>, what: string) => readJsonBody(ctx, sc.config.limits.adminJsonBytes, validate, what);

  router.get('/whoami', async (ctx) => {
    const token = await auth(ctx, 'viewer');
    query(ctx, validateEmptyQuery);
    ctx.body = { id: token.id, name: token.name, role: token.role };
  });

  // ---- Tokens ----
  router.post('/tokens', async (ctx) => {
    const token = await auth(ctx, 'admin');
    const req = await json(ctx, validateTokenCreate, 'token request');
    const { token: secret, record } = await ops.createAdminToken(sc, req.role, req.name ?? req.role, actorOf(token));
    ctx.status = 201;
    ctx.body = { id: record.id, name: record.name, role: record.role, token: secret, createdAt: record.createdAt };
  });
  router.get('/tokens', async (ctx) => {
    await auth(ctx, 'admin');
    query(ctx, validateEmptyQuery);
    ctx.body = (await sc.store.listAdminTokens()).map(({ tokenHash: _, ...t }) => t);
  });
  router.delete('/tokens/:id', async (ctx) => {
    const token = await auth(ctx, 'admin');
    const id = param(ctx, 'id', UUID, 36);
    if (!(await sc.store.revokeAdminToken(id, new Date().toISOString()))) throw new TandemError('ERR_NOT_FOUND', `No active token ${id}.`);
    await sc.store.audit({ at: new Date().toISOString(), actor: actorOf(token), action: 'token.revoke', target: id, details: {} });
    ctx.status = 204;
  });

  router.post('/enrollment-tokens', async (ctx) => {
    const token = await auth(ctx, 'admin');
    const req = await json(ctx, validateEnrollmentTokenCreate, 'enrollment token request');
    const { token: secret, record } = await ops.createEnrollmentToken(sc, req, actorOf(token));
    const { tokenHash: _, ...view } = record;
    ctx.status = 201;
    ctx.body = { ...view, token: secret };
  });
  router.get('/enrollment-tokens', async (ctx) => {
    await auth(ctx, 'admin');
    query(ctx, validateEmptyQuery);
    ctx.body = (await sc.store.listEnrollmentTokens()).map(({ tokenHash: _, ...t }) => t);
  });
  router.delete('/enrollment-tokens/:id', async (ctx) => {
    const token = await auth(ctx, 'admin');
    const id = param(ctx, 'id', UUID, 36);
    if (!(await sc.store.revokeEnrollmentToken(id, new Date().toISOString()))) throw new TandemError('ERR_NOT_FOUND', `No active enrollment token ${id}.`);
    await sc.store.audit({ at: new Date().toISOString(), actor: actorOf(token), action: 'enrollment-token.revoke', target: id, details: {} });
    ctx.status = 204;
  });

  // ---- Releases ----
  router.post('/releases', async (ctx) => {
    const token = await auth(ctx, 'release');
    const q = query(ctx, validatePublishImageQuery);
    requireOctetStream(ctx);
    if (ctx.request.length !== undefined && ctx.request.length > sc.config.limits.imageBytes) {
      throw new TandemError('ERR_BODY_TOO_LARGE', `The image exceeds the ${sc.config.limits.imageBytes}-byte limit.`);
    }
    // Generating the full payload of a big image takes minutes: no socket timeout here.
    ctx.req.setTimeout(0);
    const result = await publishImage(sc, {
      board: q.board, channel: q.channel, version: q.version, actor: actorOf(token),
      ...(q.product === undefined ? {} : { product: q.product }),
      ...(q.steppingStone === undefined ? {} : { steppingStone: q.steppingStone === 'true' }),
      ...(q.allowDowngrade === undefined ? {} : { allowDowngrade: q.allowDowngrade === 'true' }),
      ...(q.notes === undefined ? {} : { notes: q.notes }),
    }, ctx.req);
    const body: PublishResponse = { release: await releaseView(sc, result.release), payload: payloadView(sc, result.payload), job: result.job && jobView(result.job) };
    ctx.status = 201;
    ctx.body = body;
  });
  router.post('/payloads', async (ctx) => {
    const token = await auth(ctx, 'release');
    const q = query(ctx, validatePublishPayloadQuery);
    requireOctetStream(ctx);
    if (ctx.request.length !== undefined && ctx.request.length > sc.config.limits.payloadBytes) {
      throw new TandemError('ERR_BODY_TOO_LARGE', `The payload exceeds the ${sc.config.limits.payloadBytes}-byte limit.`);
    }
    ctx.req.setTimeout(0);
    const result = await publishPayload(sc, {
      channel: q.channel, actor: actorOf(token),
      ...(q.steppingStone === undefined ? {} : { steppingStone: q.steppingStone === 'true' }),
      ...(q.allowDowngrade === undefined ? {} : { allowDowngrade: q.allowDowngrade === 'true' }),
      ...(q.notes === undefined ? {} : { notes: q.notes }),
    }, ctx.req);
    const body: PublishResponse = { release: await releaseView(sc, result.release), payload: payloadView(sc, result.payload), job: null };
    ctx.status = 201;
    ctx.body = body;
  });
  router.get('/releases', async (ctx) => {
    await auth(ctx, 'viewer');
    const q = query(ctx, validateReleaseListQuery);
    const releases = await sc.store.findReleases(q);
    ctx.body = await Promise.all(releases.map((r) => releaseView(sc, r)));
  });
  router.get('/releases/:id', async (ctx) => {
    await auth(ctx, 'viewer');
    query(ctx, validateEmptyQuery);
    const id = param(ctx, 'id', UUID, 36);
    const release = await sc.store.getRelease(id);
    if (!release) throw new TandemError('ERR_NOT_FOUND', `No release ${id}.`);
    ctx.body = await releaseView(sc, release);
  });
  router.patch('/releases/:id', async (ctx) => {
    const token = await auth(ctx, 'release');
    const id = param(ctx, 'id', UUID, 36);
    const release = await sc.store.getRelease(id);
    if (!release) throw new TandemError('ERR_NOT_FOUND', `No release ${id}.`);
    const req = await json(ctx, validateReleasePatch, 'release update');
    await sc.store.updateRelease(id, req);
    await sc.store.audit({ at: new Date().toISOString(), actor: actorOf(token), action: 'release.update', target: `${release.product}/${release.channel}/${release.version}`, details: { ...req } });
    ctx.body = await releaseView(sc, (await sc.store.getRelease(id))!);
  });

  // ---- Rollouts ----
  router.get('/rollouts/:channel/:version', async (ctx) => {
    await auth(ctx, 'viewer');
    const q = query(ctx, validateProductQuery);
    const release = await ops.findRelease(sc, param(ctx, 'channel', NAME_RE, 64), param(ctx, 'version', SEMVER_RE, 64), q.product);
    ctx.body = await releaseView(sc, release);
  });
  router.put('/rollouts/:channel/:version', async (ctx) => {
    const token = await auth(ctx, 'release');
    const channel = param(ctx, 'channel', NAME_RE, 64);
    const version = param(ctx, 'version', SEMVER_RE, 64);
    query(ctx, validateEmptyQuery);
    const req = await json(ctx, validateRolloutUpdate, 'rollout update');
    const release = await ops.findRelease(sc, channel, version, req.product);
    const rollout = await ops.updateRollout(sc, release, req, actorOf(token));
    ctx.body = { ...(await releaseView(sc, release)), rollout: rolloutView(rollout) };
  });

  router.get('/status', async (ctx) => {
    await auth(ctx, 'viewer');
    const q = query(ctx, validateReleaseListQuery);
    const channels = q.channel !== undefined ? [q.channel] : [...new Set((await sc.store.findReleases(q.product === undefined ? {} : { product: q.product })).map((r) => r.channel))].sort();
    const out: StatusResponse[] = [];
    for (const channel of channels) {
      const releases = await sc.store.findReleases({ channel, ...(q.product === undefined ? {} : { product: q.product }) });
      out.push({
        channel,
        releases: await Promise.all(releases.map((r) => releaseView(sc, r))),
        adoption: await sc.store.versionCounts(q.product, channel),
      });
    }
    ctx.body = out;
  });

  // ---- Devices ----
  router.get('/devices', async (ctx) => {
    await auth(ctx, 'viewer');
    const q = query(ctx, validateDeviceListQuery);
    const devices = await sc.store.listDevices({
      ...(q.channel === undefined ? {} : { channel: q.channel }),
      ...(q.product === undefined ? {} : { product: q.product }),
      ...(q.version === undefined ? {} : { version: q.version }),
      ...(q.after === undefined ? {} : { after: q.after }),
      limit: Math.min(1000, q.limit === undefined ? 100 : Number(q.limit)),
    });
    ctx.body = devices.map(({ credentialHash: _, ...d }) => d);
  });
  router.get('/devices/:id', async (ctx) => {
    await auth(ctx, 'viewer');
    const q = query(ctx, validateLimitQuery);
    const id = param(ctx, 'id', DEVICE_RE, 128);
    const device = await sc.store.getDevice(id);
    if (!device) throw new TandemError('ERR_NOT_FOUND', `No device ${id}.`);
    const { credentialHash: _, ...view } = device;
    ctx.body = {
      ...view,
      failures: await sc.store.listFailures(id),
      events: await sc.store.deviceEvents(id, Math.min(1000, q.limit === undefined ? 50 : Number(q.limit))),
    };
  });
  router.delete('/devices/:id', async (ctx) => {
    const token = await auth(ctx, 'release');
    await ops.removeDevice(sc, param(ctx, 'id', DEVICE_RE, 128), actorOf(token));
    ctx.status = 204;
  });
  router.post('/devices/:id/clear-failure', async (ctx) => {
    const token = await auth(ctx, 'release');
    const id = param(ctx, 'id', DEVICE_RE, 128);
    const req = await json(ctx, validateClearFailure, 'clear-failure request');
    await ops.clearDeviceFailure(sc, id, req.version, actorOf(token));
    ctx.body = { deviceId: id, version: req.version, cleared: true };
  });
  router.put('/devices/:id/pin', async (ctx) => {
    const token = await auth(ctx, 'release');
    const id = param(ctx, 'id', DEVICE_RE, 128);
    const req = await json(ctx, validateDevicePin, 'pin request');
    await ops.pinDevice(sc, id, req.version, actorOf(token));
    ctx.body = { deviceId: id, pinnedVersion: req.version };
  });

  // ---- Jobs and audit ----
  router.get('/jobs', async (ctx) => {
    await auth(ctx, 'viewer');
    const q = query(ctx, validateLimitQuery);
    ctx.body = (await sc.store.listJobs(Math.min(1000, q.limit === undefined ? 50 : Number(q.limit)))).map(jobView);
  });
  router.get('/jobs/:id', async (ctx) => {
    await auth(ctx, 'viewer');
    query(ctx, validateEmptyQuery);
    const id = param(ctx, 'id', UUID, 36);
    const job = await sc.store.getJob(id);
    if (!job) throw new TandemError('ERR_NOT_FOUND', `No job ${id}.`);
    ctx.body = jobView(job);
  });
  router.get('/audit', async (ctx) => {
    await auth(ctx, 'admin');
    const q = query(ctx, validateLimitQuery);
    ctx.body = await sc.store.listAudit(Math.min(10_000, q.limit === undefined ? 100 : Number(q.limit)));
  });

  return router;
}
