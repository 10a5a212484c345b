/**
 * When a rollout halts itself (DESIGN.md "Rollouts"): failures count install
 * errors and post-reboot rollbacks (bootloader fallbacks arrive as rollbacks),
 * since a release that installs but never comes up healthy is the worst kind.
 * The threshold is a fraction of attempts, in basis points, and only applies
 * once enough devices reached an outcome, so one early failure cannot halt a
 * rollout on its own.
 */
import type { ReleaseStats, Rollout } from '../store/store.ts';

export type HaltDecision = { halt: false } | { halt: true; reason: string };

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
