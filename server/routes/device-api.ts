/**
 * The device API (DESIGN.md "Device protocol", shared/schemas/protocol.ts):
 * enroll, check, events. Every body is validated on the way in, the check
 * response on the way out too, and it is signed with the server's online key
 * over canonical JSON carrying the device's nonce and a short expiry.
 */
import Router from '@koa/router';
import { canonicalBytes } from '../../shared/canonical-json.ts';
import { TandemError } from '../../shared/errors.ts';
import type { KeyringSignature } from '../../shared/keyring.ts';
import { sign } from '../../shared/keys.ts';
import {
  CHECK_RESPONSE_DOMAIN,
  validateCheckRequest,
  validateCheckResponse,
  validateEnrollRequest,
  validateEnrollResponse,
  validateEventsRequest,
  type CheckRequest,
  type CheckResponse,
  type CheckResponseBody,
  type DeviceEvent,
  type EnrollResponse,
} from '../../shared/schemas/protocol.ts';
import type { ServerContext } from '../context.ts';
import { authenticateDevice, hashSecret, newSecret } from '../http/auth.ts';
import { readJsonBody } from '../http/body.ts';
import { chooseOffer, jitteredPoll } from '../rollout/choose-offer.ts';
import { shouldHalt } from '../rollout/should-halt.ts';
import type { Device, Release, StoredEvent } from '../store/store.ts';
import { payloadUrl } from '../views.ts';

export function deviceRouter(sc: ServerContext): Router {
  const router = new Router();

  router.post('/v1/devices/enroll', async (ctx) => {
    const req = await readJsonBody(ctx, sc.config.limits.enrollBytes, validateEnrollRequest, 'enroll request');
    const response = await enrollDevice(sc, req);
    ctx.status = 201;
    ctx.body = validateEnrollResponse(response, 'enroll response');
  });

  router.post('/v1/check', async (ctx) => {
    const device = await authenticateDevice(ctx, sc.store);
    const req = await readJsonBody(ctx, sc.config.limits.checkBytes, validateCheckRequest, 'check request');
    ctx.body = await checkDevice(sc, device, req);
  });

  router.post('/v1/events', async (ctx) => {
    const device = await authenticateDevice(ctx, sc.store);
    const req = await readJsonBody(ctx, sc.config.limits.eventsBytes, validateEventsRequest, 'events request');
    ctx.body = await recordEvents(sc, device, req.deviceId, req.events);
  });

  return router;
}

export async function enrollDevice(sc: ServerContext, req: { token: string; deviceId: string; product: string; board: string; channel: string }): Promise<EnrollResponse> {
  const token = await sc.store.findEnrollmentTokenByHash(hashSecret(req.token));
  const now = new Date();
  // One answer for every kind of bad token, so the endpoint tells a prober nothing.
  const refuse = (why: string): TandemError => {
    sc.logger.info({ deviceId: req.deviceId, why }, 'enrollment refused');
    return new TandemError('ERR_ENROLLMENT_TOKEN', 'The enrollment token is unknown, revoked, expired, used up, or not for this product, channel or board.');
  };
  if (!token) throw refuse('unknown token');
  if (token.revokedAt !== null) throw refuse('revoked');
  if (token.expiresAt !== null && token.expiresAt <= now.toISOString()) throw refuse('expired');
  if (token.product !== req.product || token.channel !== req.channel || (token.board !== null && token.board !== req.board)) throw refuse('scope');
  const credential = newSecret('device');
  const device: Device = {
    id: req.deviceId, product: req.product, board: req.board, channel: req.channel, credentialHash: hashSecret(credential),
    enrolledAt: now.toISOString(), enrollmentTokenId: token.id, lastSeenAt: null, version: null, slot: null, pinnedVersion: null, checkCount: 0,
  };
  await sc.store.enrollDevice(device, token.id, now.toISOString());
  sc.metrics.inc('tandem_enrollments_total');
  sc.logger.info({ deviceId: device.id, product: device.product, channel: device.channel }, 'device enrolled');
  return { deviceId: device.id, credential, channel: device.channel };
}

function claimsOwnId(device: Device, claimed: string): void {
  if (claimed !== device.id) {
    throw new TandemError('ERR_DEVICE_MISMATCH', 'The body names another device than the credential.', { details: { deviceId: claimed } });
  }
}

export async function checkDevice(sc: ServerContext, device: Device, req: CheckRequest, now = new Date()): Promise<CheckResponse> {
  claimsOwnId(device, req.deviceId);
  if (req.product !== device.product || req.board !== device.board) {
    throw new TandemError('ERR_DEVICE_MISMATCH', `This device enrolled as ${device.product}/${device.board}.`, { details: { product: req.product, board: req.board } });
  }
  const [records, candidates] = await Promise.all([sc.store.listFailures(device.id), sc.store.candidates(device.product, req.channel, device.board)]);
  // A failure a release manager cleared stays cleared even while the device still lists it.
  const known = new Map(records.map((f) => [f.version, f.clearedAt === null]));
  const failed = new Set(records.filter((f) => f.clearedAt === null).map((f) => f.version));
  for (const v of req.failedVersions) if (!known.has(v)) failed.add(v);

  const decision = chooseOffer({
    deviceId: device.id, board: device.board, version: req.version, failed, pinnedVersion: device.pinnedVersion,
    deltaFailed: req.deltaFailed === true, candidates,
  });
  await sc.store.recordCheck({
    deviceId: device.id, version: req.version, slot: req.slot, channel: req.channel, at: now.toISOString(),
    offeredReleaseId: decision.kind === 'update' ? decision.candidate.release.id : null,
    failedVersions: req.failedVersions.filter((v) => !known.has(v)),
  });

  const body: CheckResponseBody = {
    type: 'tandem-check-response',
    deviceId: device.id,
    nonce: req.nonce,
    issuedAt: now.toISOString(),
    expires: new Date(now.getTime() + sc.config.responseTtlSeconds * 1000).toISOString(),
    pollAfterSeconds: jitteredPoll(sc.config.pollIntervalSeconds, sc.config.pollJitter),
    keyring: sc.keys.keyring,
    result: decision.kind === 'update' ? 'update' : 'noUpdate',
  };
  if (decision.kind === 'update') {
    const { release } = decision.candidate;
    const p = decision.payload;
    body.update = {
      version: release.version,
      channel: release.channel,
      allowDowngrade: release.allowDowngrade,
      payload: {
        kind: p.kind,
        url: payloadUrl(sc, p.sha256),
        size: p.size,
        sha256: p.sha256,
        ...(p.sourceVersion === null ? {} : { sourceVersion: p.sourceVersion }),
        preludeSize: p.preludeSize,
      },
      manifest: p.manifest.toString('base64'),
      signatures: JSON.parse(p.signatures) as KeyringSignature[],
    };
    sc.metrics.inc('tandem_offers_total', { kind: p.kind });
  }
  sc.metrics.inc('tandem_checks_total', { result: body.result });
  const response: CheckResponse = { body, signature: signCheckResponse(sc, body) };
  return validateCheckResponse(response, 'check response');
}

export async function recordEvents(sc: ServerContext, device: Device, claimedId: string, events: DeviceEvent[]): Promise<{ accepted: number; duplicates: number }> {
  claimsOwnId(device, claimedId);
  const receivedAt = new Date().toISOString();
  const releases = new Map<string, Release | undefined>();
  const stored: StoredEvent[] = [];
  for (const e of events) {
    const key = `${e.channel}\n${e.version}`;
    if (!releases.has(key)) releases.set(key, (await sc.store.findReleases({ product: device.product, channel: e.channel, version: e.version }))[0]);
    stored.push({
      deviceId: device.id, id: e.id, type: e.type, version: e.version, channel: e.channel, at: e.at, code: e.code ?? null, message: e.message ?? null,
      payloadKind: e.payloadKind ?? null, progressDone: e.progress?.done ?? null, progressTotal: e.progress?.total ?? null,
      releaseId: releases.get(key)?.id ?? null, receivedAt,
    });
  }
  if (new Set(stored.map((e) => e.id)).size !== stored.length) {
    throw new TandemError('ERR_EVENT_CONFLICT', 'One request carries the same event id twice.');
  }
  const result = await sc.store.insertEvents(device.id, stored);
  for (const e of stored) {
    sc.metrics.inc('tandem_events_total', { type: e.type });
    if (e.type === 'error' || e.type === 'rolledBack') sc.metrics.inc('tandem_event_errors_total', { code: e.code ?? 'ERR_UNKNOWN' });
  }
  for (const releaseId of result.outcomeReleases) await haltIfFailing(sc, releaseId);
  return { accepted: result.accepted, duplicates: result.duplicates };
}

const DOMAIN_BYTES = Buffer.from(CHECK_RESPONSE_DOMAIN, 'utf8');

/**
 * The same bytes as signBytes(canonicalBytes(body), serverKey, CHECK_RESPONSE_DOMAIN) (the domain
 * prefix, then the canonical body), with the key id computed once at start: signBytes derives it
 * from the private key on every call, which cost more than the rest of a check-in together.
 * The tests verify these signatures with verifySignedBytes, so the two cannot drift apart.
 */
function signCheckResponse(sc: ServerContext, body: CheckResponseBody): KeyringSignature {
  const signature = sign(sc.keys.serverKey, Buffer.concat([DOMAIN_BYTES, canonicalBytes(body)]));
  return { keyId: sc.keys.serverKeyId, signature: signature.toString('base64') };
}

/** Re-evaluates a release's failure rate after a new outcome; halts it with the reason when over the threshold. */
export async function haltIfFailing(sc: ServerContext, releaseId: string): Promise<boolean> {
  const rollout = await sc.store.getRollout(releaseId);
  if (!rollout) return false;
  const decision = shouldHalt(await sc.store.releaseStats(releaseId), rollout);
  if (!decision.halt) return false;
  const at = new Date().toISOString();
  await sc.store.updateRollout(releaseId, { state: 'halted', haltReason: decision.reason, updatedAt: at, updatedBy: 'system' });
  await sc.store.audit({ at, actor: 'system', action: 'rollout.auto-halt', target: releaseId, details: { reason: decision.reason } });
  sc.metrics.inc('tandem_rollouts_halted_total');
  sc.logger.warn({ releaseId, reason: decision.reason }, 'rollout halted');
  return true;
}
