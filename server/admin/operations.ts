/**
 * What release managers do, as functions the admin routes (and tests) call:
 * tokens, enrollment tokens, rollouts, device pins and failures. Each change
 * writes an audit entry naming who did it.
 */
import { randomUUID } from 'node:crypto';
import { TandemError } from '../../shared/errors.ts';
import { percentToBasisPoints } from '../../shared/rollout-bucket.ts';
import type { EnrollmentTokenCreateRequest, RolloutUpdateRequest } from '../../shared/schemas/admin.ts';
import type { ServerContext } from '../context.ts';
import { hashSecret, newSecret } from '../http/auth.ts';
import type { AdminToken, EnrollmentToken, Release, Role, Rollout } from '../store/store.ts';

async function audit(sc: ServerContext, actor: string, action: string, target: string, details: Record<string, unknown> = {}): Promise<void> {
  await sc.store.audit({ at: new Date().toISOString(), actor, action, target, details });
}

export async function createAdminToken(sc: ServerContext, role: Role, name: string, actor: string): Promise<{ token: string; record: AdminToken }> {
  const token = newSecret('admin');
  const record: AdminToken = { id: randomUUID(), name, role, tokenHash: hashSecret(token), createdAt: new Date().toISOString(), createdBy: actor, revokedAt: null };
  await sc.store.createAdminToken(record);
  await audit(sc, actor, 'token.create', record.id, { role, name });
  return { token, record };
}

export async function createEnrollmentToken(sc: ServerContext, req: EnrollmentTokenCreateRequest, actor: string): Promise<{ token: string; record: EnrollmentToken }> {
  const token = newSecret('enroll');
  const now = new Date();
  const record: EnrollmentToken = {
    id: randomUUID(), name: req.name ?? `${req.product}/${req.channel}`, tokenHash: hashSecret(token), product: req.product, channel: req.channel,
    board: req.board ?? null, maxUses: req.maxUses ?? null, uses: 0,
    expiresAt: req.expiresInSeconds === undefined ? null : new Date(now.getTime() + req.expiresInSeconds * 1000).toISOString(),
    createdAt: now.toISOString(), createdBy: actor, revokedAt: null,
  };
  await sc.store.createEnrollmentToken(record);
  await audit(sc, actor, 'enrollment-token.create', record.id, { product: req.product, channel: req.channel, board: req.board ?? null, maxUses: record.maxUses });
  return { token, record };
}

export async function findRelease(sc: ServerContext, channel: string, version: string, product?: string): Promise<Release> {
  const found = await sc.store.findReleases({ channel, version, ...(product === undefined ? {} : { product }) });
  if (found.length === 0) throw new TandemError('ERR_NOT_FOUND', `No release ${version} on channel ${channel}${product ? ` for ${product}` : ''}.`);
  if (found.length > 1) {
    throw new TandemError('ERR_AMBIGUOUS', `Several products have ${version} on ${channel}; name one (product).`, { details: { products: found.map((r) => r.product) } });
  }
  return found[0]!;
}

export async function updateRollout(sc: ServerContext, release: Release, req: RolloutUpdateRequest, actor: string): Promise<Rollout> {
  const current = await sc.store.getRollout(release.id);
  if (!current) throw new TandemError('ERR_NOT_FOUND', `No rollout for ${release.version}.`);
  const patch: Partial<Rollout> = { updatedAt: new Date().toISOString(), updatedBy: actor };
  let state = current.state;
  let basisPoints = current.basisPoints;
  if (req.basisPoints !== undefined) basisPoints = req.basisPoints;
  if (req.percentage !== undefined) basisPoints = percentToBasisPoints(req.percentage);
  switch (req.action) {
    case 'pause':
      if (state === 'halted') throw new TandemError('ERR_ROLLOUT_STATE', 'The rollout is halted; resume it first.', { details: { state } });
      state = 'paused';
      break;
    case 'resume':
      state = 'active';
      patch.haltReason = null;
      break;
    case 'halt':
      state = 'halted';
      patch.haltReason = `halted by ${actor}${req.reason ? `: ${req.reason}` : ''}`;
      break;
    default:
      break;
  }
  // "complete" is an active rollout at 100 %: every device of the channel is offered the release.
  if (state === 'active' && basisPoints === 10_000) state = 'complete';
  if (state === 'complete' && basisPoints < 10_000) state = 'active';
  patch.state = state;
  patch.basisPoints = basisPoints;
  if (req.failureThresholdBp !== undefined) patch.failureThresholdBp = req.failureThresholdBp;
  if (req.minAttempts !== undefined) patch.minAttempts = req.minAttempts;
  const updated = await sc.store.updateRollout(release.id, patch);
  await audit(sc, actor, `rollout.${req.action ?? 'set'}`, `${release.product}/${release.channel}/${release.version}`, {
    from: { basisPoints: current.basisPoints, state: current.state },
    to: { basisPoints: updated.basisPoints, state: updated.state },
    ...(req.reason ? { reason: req.reason } : {}),
    ...(req.failureThresholdBp !== undefined ? { failureThresholdBp: req.failureThresholdBp } : {}),
    ...(req.minAttempts !== undefined ? { minAttempts: req.minAttempts } : {}),
  });
  return updated;
}

export async function pinDevice(sc: ServerContext, deviceId: string, version: string | null, actor: string): Promise<void> {
  if (!(await sc.store.setPin(deviceId, version))) throw new TandemError('ERR_NOT_FOUND', `No device ${deviceId}.`);
  await audit(sc, actor, version === null ? 'device.unpin' : 'device.pin', deviceId, { version });
}

export async function clearDeviceFailure(sc: ServerContext, deviceId: string, version: string, actor: string): Promise<void> {
  if (!(await sc.store.getDevice(deviceId))) throw new TandemError('ERR_NOT_FOUND', `No device ${deviceId}.`);
  if (!(await sc.store.clearFailure(deviceId, version, new Date().toISOString(), actor))) {
    throw new TandemError('ERR_NOT_FOUND', `Device ${deviceId} has no uncleared failure of ${version}.`);
  }
  await audit(sc, actor, 'device.clear-failure', deviceId, { version });
}

export async function removeDevice(sc: ServerContext, deviceId: string, actor: string): Promise<void> {
  if (!(await sc.store.deleteDevice(deviceId))) throw new TandemError('ERR_NOT_FOUND', `No device ${deviceId}.`);
  await audit(sc, actor, 'device.remove', deviceId);
}
