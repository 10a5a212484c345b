/**
 * The device API (DESIGN.md "Device protocol", shared/schemas/protocol.ts):
 * enroll, check, events. Every body is validated on the way in, the check
 * response on the way out too, and it is signed with the server's online key
 * over canonical JSON carrying the device's nonce and a short expiry.
 */
import Router from '@koa/router';
import { TandemError } from '../../shared/errors.ts';
import {
  validateCheckRequest,
  validateEnrollRequest,
  validateEnrollResponse,
  validateEventsRequest,
  type CheckRequest,
  type CheckResponse,
  type DeviceEvent,
  type EnrollResponse,
} from '../../shared/schemas/protocol.ts';
import type { ServerContext } from '../context.ts';
import { authenticateDevice, hashSecret, newSecret } from '../http/auth.ts';
import { readJsonBody } from '../http/body.ts';
import { chooseOffer, jitteredPoll } from '../rollout/choose-offer.ts';
import { canHalt, shouldHalt } from '../rollout/should-halt.ts';
import type { Device, Release, StoredEvent } from '../store/store.ts';
import { prepareOffer, signCheckResponse, type SignedCheckResponse } from './check-response.ts';

const JSON_TYPE = 'application/json; charset=utf-8';

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
    const { json } = await answerCheck(sc, device, req);
    // The signed canonical JSON as is: koa would serialise the same value again. Set directly, not via
    // ctx.type, which looks the type up in mime-types on every call.
    ctx.set('Content-Type', JSON_TYPE);
    ctx.body = json;
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
  return (await answerCheck(sc, device, req, now)).response;
}

async function answerCheck(sc: ServerContext, device: Device, req: CheckRequest, now = new Date()): Promise<SignedCheckResponse> {
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
  // Formatted once: Date#toISOString is among the dearer calls of a check-in.
  const at = now.toISOString();
  await sc.store.recordCheck({
    deviceId: device.id, version: req.version, slot: req.slot, channel: req.channel, at,
    changed: device.version !== req.version || device.slot !== req.slot || device.channel !== req.channel,
    offeredReleaseId: decision.kind === 'update' ? decision.candidate.release.id : null,
    failedVersions: req.failedVersions.filter((v) => !known.has(v)),
  });

  const offer = decision.kind === 'update' ? prepareOffer(sc, decision.candidate.release, decision.payload) : null;
  const signed = await signCheckResponse(sc, {
    deviceId: device.id,
    nonce: req.nonce,
    issuedAt: at,
    expires: new Date(now.getTime() + sc.config.responseTtlSeconds * 1000).toISOString(),
    pollAfterSeconds: jitteredPoll(sc.config.pollIntervalSeconds, sc.config.pollJitter),
  }, offer);
  if (decision.kind === 'update') sc.metrics.inc('tandem_offers_total', { kind: decision.payload.kind });
  sc.metrics.inc('tandem_checks_total', { result: signed.response.body.result });
  return signed;
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
  // Retries of events already stored are acknowledged but not counted again.
  for (const e of result.inserted) {
    sc.metrics.inc('tandem_events_total', { type: e.type });
    if (e.type === 'error' || e.type === 'rolledBack') sc.metrics.inc('tandem_event_errors_total', { code: e.code ?? 'ERR_UNKNOWN' });
  }
  for (const releaseId of result.outcomeReleases) await haltIfFailing(sc, releaseId);
  return { accepted: result.accepted, duplicates: result.duplicates };
}

/** Re-evaluates a release's failure rate after a new outcome; halts it with the reason when over the threshold. */
export async function haltIfFailing(sc: ServerContext, releaseId: string): Promise<boolean> {
  const rollout = await sc.store.getRollout(releaseId);
  // A rollout that is halted or paused already is left alone.
  if (!rollout || !canHalt(rollout)) return false;
  const decision = shouldHalt(await sc.store.outcomeCounts(releaseId), rollout);
  if (!decision.halt) return false;
  const at = new Date().toISOString();
  await sc.store.updateRollout(releaseId, { state: 'halted', haltReason: decision.reason, updatedAt: at, updatedBy: 'system' });
  await sc.store.audit({ at, actor: 'system', action: 'rollout.auto-halt', target: releaseId, details: { reason: decision.reason } });
  sc.metrics.inc('tandem_rollouts_halted_total');
  sc.logger.warn({ releaseId, reason: decision.reason }, 'rollout halted');
  return true;
}
