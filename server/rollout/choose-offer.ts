/**
 * What a checking device is offered (DESIGN.md "Rollouts"): a pure function of
 * the device and the channel's releases, so every rule has a table test and
 * the route only does I/O.
 *
 * Rules, in order:
 * - a release a device failed is never offered to it again until cleared;
 * - a pinned device gets its pinned version (whatever the rollout percentage,
 *   but never from a halted rollout, and a lower one only when the release
 *   allows downgrade);
 * - otherwise the newest release whose rollout is active or complete and
 *   admits the device (bucket(deviceId, salt) < basisPoints);
 * - an upgrade passes through every stepping stone between the current
 *   version and the target: the lowest one comes first;
 * - with nothing newer, a device above the channel's head (the newest
 *   release still offered) goes back to it only when the head is marked as an
 *   allowed rollback target;
 * - the payload is the delta from the device's version when one exists and is
 *   smaller, else the full one; full only when the device says deltas failed.
 */
import { inRollout } from '../../shared/rollout-bucket.ts';
import { compareParsed, parseVersion, type Version } from '../../shared/versions.ts';
import type { PayloadRecord, Release, ReleaseCandidate } from '../store/store.ts';

export interface OfferInput {
  deviceId: string;
  board: string;
  version: string;
  failed: ReadonlySet<string>;
  pinnedVersion: string | null;
  deltaFailed: boolean;
  candidates: readonly ReleaseCandidate[];
}

export type OfferDecision =
  | { kind: 'none'; reason: string }
  | { kind: 'update'; candidate: ReleaseCandidate; payload: PayloadRecord; downgrade: boolean; reason: string };

const none = (reason: string): OfferDecision => ({ kind: 'none', reason });

// Parsed once per release record (the cached candidates are the same objects from one check-in to the next), not per comparison.
const parsedVersions = new WeakMap<Release, Version>();
function versionOf(c: ReleaseCandidate): Version {
  let v = parsedVersions.get(c.release);
  if (v === undefined || v.raw !== c.release.version) {
    v = parseVersion(c.release.version);
    parsedVersions.set(c.release, v);
  }
  return v;
}

function fullPayload(c: ReleaseCandidate, board: string): PayloadRecord | undefined {
  return c.payloads.find((p) => p.kind === 'full' && p.board === board);
}

function isOffered(c: ReleaseCandidate): boolean {
  return c.rollout.state === 'active' || c.rollout.state === 'complete';
}

function admits(c: ReleaseCandidate, deviceId: string): boolean {
  return c.rollout.state === 'complete' || inRollout(deviceId, c.rollout.salt, c.rollout.basisPoints);
}

export function choosePayload(c: ReleaseCandidate, board: string, fromVersion: string, deltaFailed: boolean): PayloadRecord | undefined {
  const full = fullPayload(c, board);
  if (!full || deltaFailed) return full;
  const delta = c.payloads.find((p) => p.kind === 'delta' && p.board === board && p.sourceVersion === fromVersion);
  return delta && delta.size < full.size ? delta : full;
}

export function chooseOffer(input: OfferInput): OfferDecision {
  const { deviceId, board, version: current, failed } = input;
  const usable = input.candidates.filter((c) => fullPayload(c, board) !== undefined);
  const cmp = (a: ReleaseCandidate, b: ReleaseCandidate): number => compareParsed(versionOf(a), versionOf(b));
  // Parsed when first compared, as compareVersions did: with nothing to compare, a bad version is no error.
  let parsedCurrent: Version | undefined;
  const vsCurrent = (c: ReleaseCandidate): number => compareParsed(versionOf(c), (parsedCurrent ??= parseVersion(current)));

  let target: ReleaseCandidate | undefined;
  let reason: string;
  if (input.pinnedVersion !== null) {
    target = usable.find((c) => c.release.version === input.pinnedVersion);
    if (!target) return none(`pinned to ${input.pinnedVersion}, which is not published for this board on this channel`);
    if (vsCurrent(target) === 0) return none(`pinned to ${input.pinnedVersion}, already running`);
    if (failed.has(target.release.version)) return none(`pinned to ${input.pinnedVersion}, which failed on this device`);
    if (target.rollout.state === 'halted') return none(`pinned to ${input.pinnedVersion}, whose rollout is halted`);
    if (vsCurrent(target) < 0) {
      if (!target.release.allowDowngrade) return none(`pinned to ${input.pinnedVersion}, a downgrade the release does not allow`);
      return offer(target, true, `pinned to ${input.pinnedVersion} (allowed downgrade)`);
    }
    reason = `pinned to ${input.pinnedVersion}`;
  } else {
    const eligible = usable.filter((c) => isOffered(c) && !failed.has(c.release.version) && admits(c, deviceId));
    const newer = eligible.filter((c) => vsCurrent(c) > 0).sort(cmp);
    target = newer[newer.length - 1];
    if (!target) {
      const head = usable.filter(isOffered).sort(cmp).at(-1);
      if (head && vsCurrent(head) < 0) {
        if (!head.release.allowDowngrade) return none(`running ${current}, above the channel's ${head.release.version}, which is not an allowed rollback target`);
        if (failed.has(head.release.version)) return none(`rollback target ${head.release.version} failed on this device`);
        if (!admits(head, deviceId)) return none(`rollback to ${head.release.version} does not include this device yet`);
        return offer(head, true, `rollback to ${head.release.version}`);
      }
      return none('up to date');
    }
    reason = `rollout of ${target.release.version}`;
  }

  // Stepping stones: a device never skips one, pinned or not.
  const stones = usable
    .filter((c) => c.release.steppingStone && vsCurrent(c) > 0 && cmp(c, target) < 0)
    .sort(cmp);
  const stone = stones[0];
  if (stone) {
    if (failed.has(stone.release.version)) return none(`stepping stone ${stone.release.version} failed on this device`);
    if (stone.rollout.state === 'halted') return none(`stepping stone ${stone.release.version} is halted`);
    return offer(stone, false, `stepping stone ${stone.release.version} before ${target.release.version}`);
  }
  return offer(target, false, reason);

  function offer(c: ReleaseCandidate, downgrade: boolean, why: string): OfferDecision {
    const payload = choosePayload(c, board, current, input.deltaFailed);
    if (!payload) return none(`no payload for board ${board}`);
    return { kind: 'update', candidate: c, payload, downgrade, reason: why };
  }
}

/** A poll interval with ±jitter, so a fleet that booted together never polls in step. */
export function jitteredPoll(baseSeconds: number, jitter: number, random: () => number = Math.random): number {
  const spread = baseSeconds * jitter;
  return Math.max(1, Math.round(baseSeconds - spread + random() * 2 * spread));
}
