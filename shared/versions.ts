/**
 * Semantic Versioning 2.0.0 (https://semver.org): strict parsing and precedence.
 * Release versions decide what a device is offered and whether an install is a
 * downgrade (ERR_DOWNGRADE), so anything that is not strict semver is refused
 * rather than guessed at: no `v` prefix, no whitespace, no leading zeros, no
 * loose ranges. Build metadata is kept but never affects ordering (§10).
 */
import { TandemError } from './errors.ts';

export interface Version {
  readonly major: number;
  readonly minor: number;
  readonly patch: number;
  /** Numeric identifiers as numbers, alphanumeric ones as strings (they order differently, §11.4). */
  readonly prerelease: readonly (string | number)[];
  readonly build: readonly string[];
  /** The input, unchanged. */
  readonly raw: string;
}

/** Long enough for any real release tag; bounds work and storage for hostile input. */
export const MAX_VERSION_LENGTH = 64;

// The grammar from semver.org §2, §9, §10 (the spec's own suggested regex).
// JavaScript `$` without the `m` flag matches only at the very end, so "1.0.0\n" is refused.
const SEMVER =
  /^(0|[1-9]\d*)\.(0|[1-9]\d*)\.(0|[1-9]\d*)(?:-((?:0|[1-9]\d*|\d*[a-zA-Z-][0-9a-zA-Z-]*)(?:\.(?:0|[1-9]\d*|\d*[a-zA-Z-][0-9a-zA-Z-]*))*))?(?:\+([0-9a-zA-Z-]+(?:\.[0-9a-zA-Z-]+)*))?$/;
const NUMERIC = /^(0|[1-9]\d*)$/;

function badVersion(input: unknown, reason: string): TandemError {
  const shown = typeof input === 'string' ? JSON.stringify(input.length > 80 ? `${input.slice(0, 80)}…` : input) : typeof input;
  return new TandemError('ERR_BAD_VERSION', `Invalid version ${shown}: ${reason}.`, {
    details: { version: typeof input === 'string' ? input.slice(0, 80) : null, reason },
  });
}

/** Digits beyond 2^53 would silently collapse to the same number and mis-order versions. */
function toSafeInteger(input: string, digits: string, part: string): number {
  const n = Number(digits);
  if (!Number.isSafeInteger(n)) throw badVersion(input, `${part} ${digits} exceeds ${Number.MAX_SAFE_INTEGER}`);
  return n;
}

export function parseVersion(s: string): Version {
  if (typeof s !== 'string') throw badVersion(s, 'not a string');
  if (s.length === 0) throw badVersion(s, 'empty');
  if (s.length > MAX_VERSION_LENGTH) throw badVersion(s, `longer than ${MAX_VERSION_LENGTH} characters`);
  const m = SEMVER.exec(s);
  if (m === null) {
    const hint = /^[vV=]/.test(s)
      ? 'no prefix allowed, write MAJOR.MINOR.PATCH'
      : /\s/.test(s)
        ? 'contains whitespace'
        : 'expected MAJOR.MINOR.PATCH[-PRERELEASE][+BUILD] with no leading zeros and non-empty ASCII [0-9A-Za-z-] identifiers';
    throw badVersion(s, hint);
  }
  const [, major = '', minor = '', patch = '', pre, build] = m;
  const prerelease =
    pre === undefined
      ? []
      : pre.split('.').map((id) => (NUMERIC.test(id) ? toSafeInteger(s, id, 'prerelease identifier') : id));
  return Object.freeze({
    major: toSafeInteger(s, major, 'major'),
    minor: toSafeInteger(s, minor, 'minor'),
    patch: toSafeInteger(s, patch, 'patch'),
    prerelease: Object.freeze(prerelease),
    build: Object.freeze(build === undefined ? [] : build.split('.')),
    raw: s,
  });
}

function sign(n: number): -1 | 0 | 1 {
  return n < 0 ? -1 : n > 0 ? 1 : 0;
}

function compareIdentifiers(a: string | number, b: string | number): -1 | 0 | 1 {
  if (typeof a === 'number' && typeof b === 'number') return sign(a - b);
  // §11.4.3: numeric identifiers always have lower precedence than alphanumeric ones.
  if (typeof a === 'number') return -1;
  if (typeof b === 'number') return 1;
  // §11.4.2: ASCII order; identifiers are ASCII-only, so UTF-16 code-unit order is ASCII order.
  return a < b ? -1 : a > b ? 1 : 0;
}

/** Precedence of two parsed versions (§11). Build metadata is ignored (§10). */
export function compareParsed(a: Version, b: Version): -1 | 0 | 1 {
  const core = sign(a.major - b.major) || sign(a.minor - b.minor) || sign(a.patch - b.patch);
  if (core !== 0) return core;
  // §11.3: a pre-release has lower precedence than the release itself.
  if (a.prerelease.length === 0 || b.prerelease.length === 0) {
    return sign(b.prerelease.length - a.prerelease.length);
  }
  const n = Math.min(a.prerelease.length, b.prerelease.length);
  for (let i = 0; i < n; i++) {
    const c = compareIdentifiers(a.prerelease[i] as string | number, b.prerelease[i] as string | number);
    if (c !== 0) return c;
  }
  // §11.4.4: with an equal prefix, more identifiers means higher precedence.
  return sign(a.prerelease.length - b.prerelease.length);
}

/** -1 if a < b, 0 if equal precedence (e.g. differing only in build metadata), 1 if a > b. Throws ERR_BAD_VERSION. */
export function compareVersions(a: string, b: string): -1 | 0 | 1 {
  return compareParsed(parseVersion(a), parseVersion(b));
}

/** True when `candidate` has strictly higher precedence than `current`; equal precedence is not newer. */
export function isNewer(candidate: string, current: string): boolean {
  return compareVersions(candidate, current) > 0;
}

/**
 * Ascending by precedence, as a new array. Each entry is parsed once (not per
 * comparison); the sort is stable, so entries of equal precedence keep their input order.
 */
export function sortVersions(list: readonly string[]): string[] {
  return list
    .map((raw) => parseVersion(raw))
    .sort(compareParsed)
    .map((v) => v.raw);
}
