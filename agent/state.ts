/**
 * The agent's life as one pure function (STYLE.md 3, DESIGN.md "The agent's
 * life"): `nextState(state, event)` says where an event leads; the caller does
 * the I/O and persists the result (state-store.ts) before the next step. Every
 * phase is one a restart can resume from:
 *
 *   idle → checking → downloading (checkpoints) → verifying → finalizing
 *        → waitingForReboot → (boot) healthChecking → idle (committed)
 *                                                   → rollingBack → idle (rolled back)
 *   failures before the boot flag → idle (abandoned, the inactive slot is just stale)
 *   a bootloader fallback seen after the reboot → idle (rolled back by the bootloader)
 */
import { TandemError } from '../shared/errors.ts';
import type { DeviceEvent } from '../shared/schemas/protocol.ts';
import type { Checkpoint } from '../payloads/apply.ts';
import type { Slot } from './boot-control/index.ts';

export const PHASES = ['idle', 'checking', 'downloading', 'verifying', 'finalizing', 'waitingForReboot', 'healthChecking', 'rollingBack'] as const;
export type Phase = (typeof PHASES)[number];

/** What the agent knows about an update in flight, from the verified check response on. */
export interface UpdateRecord {
  version: string;
  channel: string;
  kind: 'full' | 'delta';
  /** Absolute payload URL. */
  url: string;
  size: number;
  sha256: string;
  preludeSize: number;
  sourceVersion?: string;
  allowDowngrade: boolean;
  /** sha256 of the manifest bytes the signed check response carried: the payload's must be the same. */
  manifestSha256: string;
  target: { size: number; sha256: string };
  fromSlot: Slot;
  toSlot: Slot;
  fromVersion: string;
  /** From the first response, sent back as If-Range so a resume never splices two payloads. */
  etag?: string;
  /** Last durable checkpoint of the apply engine; the prelude is kept in the state folder beside it. */
  checkpoint?: Checkpoint;
  /** Download attempts so far in this install. */
  attempts: number;
  /** When the health checks of the new slot began (their deadline counts from here, across restarts). */
  healthStartedAt?: string;
  /** Why a rollback is under way. */
  failure?: { code: string; message: string };
}

export interface Outcome {
  result: 'committed' | 'rolledBack' | 'abandoned';
  version?: string;
  code?: string;
  message?: string;
  at: string;
}

export interface AgentState {
  format: 1;
  phase: Phase;
  update?: UpdateRecord;
  /** What each slot holds, as far as the agent installed or verified it. */
  slots: Partial<Record<Slot, { version: string; sha256?: string; size?: number }>>;
  /** Versions that failed here; sent with every check and never installed again until the server clears them. */
  failedVersions: string[];
  /** Install failures of one version that are not yet enough to give up on it. */
  attempts: Record<string, number>;
  /** Consecutive failed delta installs; at the configured limit, checks ask for full payloads. */
  deltaFailures: number;
  /** Newest keyring version seen: older ones are refused (rollback of the trust chain). */
  keyringVersion?: number;
  /** Root keys adopted from a rotated keyring (base64), replacing the pinned ones. */
  trustedRoots?: { threshold: number; keys: string[] };
  lastError?: { code: string; message: string; at: string };
  lastOutcome?: Outcome;
  /** Events not yet acknowledged by the server, oldest first; saved with the transition that produced them. */
  outbox: DeviceEvent[];
}

export function initialState(): AgentState {
  return { format: 1, phase: 'idle', slots: {}, failedVersions: [], attempts: {}, deltaFailures: 0, outbox: [] };
}

export type AgentEvent =
  | { type: 'checkStarted' }
  | { type: 'noUpdate' }
  | { type: 'updateAccepted'; update: UpdateRecord }
  | { type: 'checkpoint'; checkpoint: Checkpoint; etag?: string }
  | { type: 'downloadRestarted' }
  | { type: 'attempt' }
  | { type: 'applied' }
  | { type: 'verified' }
  | { type: 'trialSet' }
  | { type: 'bootedNewSlot'; at: string }
  | { type: 'healthPassed'; at: string }
  | { type: 'healthFailed'; code: string; message: string }
  | { type: 'rolledBack'; at: string }
  | { type: 'fallbackDetected'; at: string }
  /** An install failed before the boot flag was touched; `releaseFault` (or too many attempts) bars the version. */
  | { type: 'failed'; code: string; message: string; at: string; releaseFault: boolean; maxAttempts: number }
  | { type: 'error'; code: string; message: string; at: string }
  /** Keyring trust learned from a verified response. */
  | { type: 'keyringSeen'; version: number; roots?: { threshold: number; keys: string[] } };

const UPDATE_PHASES: readonly Phase[] = ['downloading', 'verifying', 'finalizing', 'waitingForReboot', 'healthChecking', 'rollingBack'];
const MAX_FAILED_VERSIONS = 64;

function illegal(state: AgentState, event: AgentEvent): never {
  throw new TandemError('ERR_STATE_TRANSITION', `Event ${event.type} is not allowed in phase ${state.phase}.`, {
    details: { phase: state.phase, event: event.type },
  });
}

function withFailed(list: readonly string[], version: string): string[] {
  const out = list.filter((v) => v !== version);
  out.push(version);
  // The protocol carries at most 64; the oldest failures are the least likely to be offered again.
  return out.slice(-MAX_FAILED_VERSIONS);
}

function need(state: AgentState, event: AgentEvent, phases: readonly Phase[]): UpdateRecord {
  if (!phases.includes(state.phase) || state.update === undefined) illegal(state, event);
  return state.update;
}

export function nextState(state: AgentState, event: AgentEvent): AgentState {
  switch (event.type) {
    case 'checkStarted':
      if (state.phase !== 'idle' && state.phase !== 'checking') illegal(state, event);
      return { ...state, phase: 'checking' };
    case 'noUpdate':
      if (state.phase !== 'checking') illegal(state, event);
      // lastOutcome keeps the last install's result: `status` should still say how the last update went.
      return { ...state, phase: 'idle' };
    case 'updateAccepted':
      if (state.phase !== 'checking') illegal(state, event);
      return { ...state, phase: 'downloading', update: event.update };
    case 'checkpoint': {
      const update = need(state, event, ['downloading']);
      return { ...state, update: { ...update, checkpoint: event.checkpoint, ...(event.etag !== undefined ? { etag: event.etag } : {}) } };
    }
    case 'downloadRestarted': {
      const { checkpoint: _c, etag: _e, ...update } = need(state, event, ['downloading']);
      return { ...state, update };
    }
    case 'attempt': {
      const update = need(state, event, ['downloading']);
      return { ...state, update: { ...update, attempts: update.attempts + 1 } };
    }
    case 'applied':
      need(state, event, ['downloading']);
      return { ...state, phase: 'verifying' };
    case 'verified':
      need(state, event, ['verifying']);
      return { ...state, phase: 'finalizing' };
    case 'trialSet': {
      const update = need(state, event, ['finalizing']);
      // Until the trial succeeds the new slot holds a verified but unproven image; the old slot is what we fall back to.
      return { ...state, phase: 'waitingForReboot', slots: { ...state.slots, [update.toSlot]: { version: update.version, sha256: update.target.sha256, size: update.target.size } } };
    }
    case 'bootedNewSlot': {
      const update = need(state, event, ['finalizing', 'waitingForReboot', 'healthChecking']);
      return { ...state, phase: 'healthChecking', update: { ...update, healthStartedAt: update.healthStartedAt ?? event.at } };
    }
    case 'healthPassed': {
      const update = need(state, event, ['healthChecking']);
      const { [update.version]: _done, ...attempts } = state.attempts;
      return {
        ...state,
        phase: 'idle',
        update: undefined,
        attempts,
        deltaFailures: update.kind === 'delta' ? 0 : state.deltaFailures,
        slots: { ...state.slots, [update.toSlot]: { version: update.version, sha256: update.target.sha256, size: update.target.size } },
        lastOutcome: { result: 'committed', version: update.version, at: event.at },
      };
    }
    case 'healthFailed': {
      const update = need(state, event, ['healthChecking']);
      return { ...state, phase: 'rollingBack', update: { ...update, failure: { code: event.code, message: event.message } } };
    }
    case 'rolledBack':
    case 'fallbackDetected': {
      const update = need(state, event, event.type === 'rolledBack' ? ['rollingBack'] : ['finalizing', 'waitingForReboot', 'healthChecking', 'rollingBack']);
      const failure = event.type === 'fallbackDetected' ? { code: 'ERR_BOOT_FALLBACK', message: `Slot ${update.toSlot} never confirmed version ${update.version}: the bootloader fell back to slot ${update.fromSlot}.` } : update.failure!;
      return {
        ...state,
        phase: 'idle',
        update: undefined,
        failedVersions: withFailed(state.failedVersions, update.version),
        slots: { ...state.slots, [update.toSlot]: undefined },
        lastError: { ...failure, at: event.at },
        lastOutcome: { result: 'rolledBack', version: update.version, ...failure, at: event.at },
      };
    }
    case 'failed': {
      if (state.phase === 'checking') return { ...state, phase: 'idle', lastError: { code: event.code, message: event.message, at: event.at } };
      const update = need(state, event, ['downloading', 'verifying', 'finalizing']);
      const count = (state.attempts[update.version] ?? 0) + 1;
      const barred = event.releaseFault || count >= event.maxAttempts;
      const { [update.version]: _old, ...attempts } = state.attempts;
      return {
        ...state,
        phase: 'idle',
        update: undefined,
        attempts: barred ? attempts : { ...attempts, [update.version]: count },
        failedVersions: barred ? withFailed(state.failedVersions, update.version) : state.failedVersions,
        deltaFailures: update.kind === 'delta' ? state.deltaFailures + 1 : state.deltaFailures,
        // The inactive slot now holds a partial image: nothing may boot it, and nothing says what it holds.
        slots: { ...state.slots, [update.toSlot]: undefined },
        lastError: { code: event.code, message: event.message, at: event.at },
        lastOutcome: { result: 'abandoned', version: update.version, code: event.code, message: event.message, at: event.at },
      };
    }
    case 'error':
      return { ...state, lastError: { code: event.code, message: event.message, at: event.at } };
    case 'keyringSeen':
      return {
        ...state,
        keyringVersion: Math.max(state.keyringVersion ?? 0, event.version),
        ...(event.roots ? { trustedRoots: event.roots } : {}),
      };
  }
}

export function isUpdatePhase(phase: Phase): boolean {
  return UPDATE_PHASES.includes(phase);
}
