/** Store records as the admin API shows them (shared/schemas/admin.ts). */
import { basisPointsToPercent } from '../shared/rollout-bucket.ts';
import type { JobView, PayloadView, ReleaseView, RolloutView } from '../shared/schemas/admin.ts';
import type { ServerContext } from './context.ts';
import type { Job, PayloadRecord, Release, Rollout } from './store/store.ts';

export function payloadUrl(sc: Pick<ServerContext, 'config'>, sha256: string): string {
  return sc.config.payloadBaseUrl === null ? `/v1/payloads/${sha256}` : `${sc.config.payloadBaseUrl}/${sha256}`;
}

export function rolloutView(r: Rollout): RolloutView {
  return {
    basisPoints: r.basisPoints,
    percentage: basisPointsToPercent(r.basisPoints),
    state: r.state,
    failureThresholdBp: r.failureThresholdBp,
    minAttempts: r.minAttempts,
    haltReason: r.haltReason,
    updatedAt: r.updatedAt,
    updatedBy: r.updatedBy,
  };
}

export function payloadView(sc: Pick<ServerContext, 'config'>, p: PayloadRecord): PayloadView {
  return { sha256: p.sha256, board: p.board, kind: p.kind, sourceVersion: p.sourceVersion, size: p.size, url: payloadUrl(sc, p.sha256) };
}

export async function releaseView(sc: ServerContext, release: Release): Promise<ReleaseView> {
  const [rollout, stats, payloads] = await Promise.all([
    sc.store.getRollout(release.id),
    sc.store.releaseStats(release.id),
    sc.store.listPayloads(release.id),
  ]);
  return {
    id: release.id,
    product: release.product,
    channel: release.channel,
    version: release.version,
    steppingStone: release.steppingStone,
    allowDowngrade: release.allowDowngrade,
    notes: release.notes,
    createdAt: release.createdAt,
    createdBy: release.createdBy,
    rollout: rolloutView(rollout!),
    stats,
    payloads: payloads.map((p) => payloadView(sc, p)),
  };
}

export function jobView(j: Job): JobView {
  return {
    id: j.id, kind: j.kind, state: j.state, releaseId: j.releaseId, progress: j.progress, message: j.message, error: j.error,
    createdAt: j.createdAt, updatedAt: j.updatedAt,
  };
}
