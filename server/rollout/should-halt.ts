/**
 * When a rollout halts itself (DESIGN.md "Rollouts"): failures count install
 * errors and post-reboot rollbacks (bootloader fallbacks arrive as rollbacks),
 * since a release that installs but never comes up healthy is the worst kind.
 * The threshold is a fraction of attempts, in basis points, and only applies
 * once enough devices reached an outcome, so one early failure cannot halt a
 * rollout on its own.
 *
 * Attempts and failures count devices, not events: a device that reported any
 * outcome of a release made one attempt; it failed when it rolled back, or
 * reported an error and no commit (an error then a commit, e.g. a delta
 * refused and the full payload installed, is a success). The store keeps
 * both counts per release as it inserts events (outcomeDelta), so evaluating
 * the rule reads one row, whatever the number of events.
 */
import type { ReleaseStats, Rollout } from '../store/store.ts';

export type HaltDecision = { halt: false } | { halt: true; reason: string };

/** The event types that are outcomes of an attempt. */
export type OutcomeType = 'committed' | 'rolledBack' | 'error';
export const OUTCOME_TYPES: ReadonlySet<string> = new Set<OutcomeType>(['committed', 'rolledBack', 'error']);

/** Which outcomes one device reported for one release. */
export interface DeviceOutcomes {
  committed: boolean;
  rolledBack: boolean;
  error: boolean;
}

export const NO_OUTCOMES: Readonly<DeviceOutcomes> = Object.freeze({ committed: false, rolledBack: false, error: false });

export function isAttempt(o: DeviceOutcomes): boolean {
  return o.committed || o.rolledBack || o.error;
}

export function isFailure(o: DeviceOutcomes): boolean {
  return o.rolledBack || (o.error && !o.committed);
}

/** How one more outcome of a device changes its release's attempts and failures, given the outcomes it reported before. */
export function outcomeDelta(before: DeviceOutcomes, type: OutcomeType): Pick<ReleaseStats, 'attempts' | 'failures'> {
  const after: DeviceOutcomes = { ...before, [type]: true };
  return {
    attempts: Number(isAttempt(after)) - Number(isAttempt(before)),
    failures: Number(isFailure(after)) - Number(isFailure(before)),
  };
}

/** Only a rollout that is offering its release can halt itself: a halted or paused one is left alone. */
export function canHalt(rollout: Pick<Rollout, 'state'>): boolean {
  return rollout.state === 'active' || rollout.state === 'complete';
}

export function shouldHalt(stats: Pick<ReleaseStats, 'attempts' | 'failures'>, rollout: Pick<Rollout, 'state' | 'failureThresholdBp' | 'minAttempts'>): HaltDecision {
  if (!canHalt(rollout)) return { halt: false };
  if (stats.attempts < rollout.minAttempts || stats.attempts === 0) return { halt: false };
  // Integer arithmetic: failures / attempts > threshold / 10000, without a float.
  if (stats.failures * 10_000 <= rollout.failureThresholdBp * stats.attempts) return { halt: false };
  const pct = ((stats.failures / stats.attempts) * 100).toFixed(1);
  return {
    halt: true,
    reason: `auto-halted: ${stats.failures} of ${stats.attempts} devices failed (${pct}%), above the ${(rollout.failureThresholdBp / 100).toString()}% threshold (minimum ${rollout.minAttempts} attempts)`,
  };
}
