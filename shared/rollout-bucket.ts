/**
 * Which devices are in a staged rollout (DESIGN.md "Rollouts"). A device is in
 * when `bucket(deviceId, salt) < basisPoints`; the bucket is a pure function of
 * (salt, deviceId), so the decision is:
 * - deterministic: the same device gets the same answer on every check-in and server;
 * - uniform: sha256 output is indistinguishable from random, so each of the
 *   10,000 buckets holds ~1/10,000 of the fleet;
 * - monotonic: the bucket never changes, so raising basisPoints only adds devices;
 * - independent across rollouts: each rollout has its own salt, so the same
 *   devices are not always the first 10% (the guinea pigs rotate).
 *
 * Changing the encoding or the hash reshuffles every active rollout: don't;
 * the known-answer test in test/shared/rollout-bucket.test.ts pins it.
 */
import { hash } from 'node:crypto';
import { TandemError } from './errors.ts';

export const BUCKET_COUNT = 10_000;
export const MAX_BASIS_POINTS = 10_000;

// Versions the encoding, and keeps these hashes from colliding with sha256 used elsewhere.
const DOMAIN = Buffer.from('tandem-rollout-bucket-v1\0', 'utf8');
// 2^32 mod BUCKET_COUNT: the first 64 digest bits, hi·2^32 + lo, are ((hi mod 10,000)·7296 + lo) modulo
// 10,000, whose operands stay below 2^33, exact in a double, so no BigInt is needed.
const TWO_POW_32_MOD_BUCKETS = 2 ** 32 % BUCKET_COUNT;

function checkField(name: string, value: string): void {
  if (typeof value !== 'string' || value.length === 0) {
    throw new TandemError('ERR_INVALID_ARGUMENT', `${name} must be a non-empty string.`, { details: { [name]: value } });
  }
  // Lone surrogates would be replaced by U+FFFD when encoded, so two different ids could share a bucket input.
  if (!value.isWellFormed()) {
    throw new TandemError('ERR_INVALID_ARGUMENT', `${name} is not well-formed Unicode (lone surrogate).`);
  }
}

/**
 * The exact bytes hashed: DOMAIN ‖ u32be(len salt) ‖ salt ‖ u32be(len deviceId) ‖ deviceId (UTF-8).
 * Length prefixes make the encoding injective, so ("ab","c") and ("a","bc") never
 * share an input, which plain concatenation would. Exported so another
 * implementation (a SQL query, another language) can be checked against it.
 * Written into one buffer: every check-in hashes one of these per candidate release.
 */
export function encodeBucketInput(deviceId: string, salt: string): Buffer {
  checkField('salt', salt);
  checkField('deviceId', deviceId);
  const saltBytes = Buffer.byteLength(salt, 'utf8');
  const idBytes = Buffer.byteLength(deviceId, 'utf8');
  const out = Buffer.allocUnsafe(DOMAIN.length + 4 + saltBytes + 4 + idBytes);
  let at = DOMAIN.copy(out, 0);
  at = out.writeUInt32BE(saltBytes, at);
  at += out.write(salt, at, 'utf8');
  at = out.writeUInt32BE(idBytes, at);
  out.write(deviceId, at, 'utf8');
  return out;
}

/**
 * 0..9999. The first 64 bits of the digest modulo 10,000: since 2^64 is not a
 * multiple of 10,000 the low buckets get one extra preimage each out of
 * ~1.8e15, a relative bias of ~5e-16, far below anything measurable on a fleet.
 */
export function bucket(deviceId: string, salt: string): number {
  // Hex, not a Buffer: a Buffer made by the digest costs three times the hash of these few bytes.
  const digest = hash('sha256', encodeBucketInput(deviceId, salt), 'hex');
  const hi = parseInt(digest.slice(0, 8), 16);
  const lo = parseInt(digest.slice(8, 16), 16);
  return ((hi % BUCKET_COUNT) * TWO_POW_32_MOD_BUCKETS + lo) % BUCKET_COUNT;
}

function checkBasisPoints(bp: number): void {
  if (!Number.isInteger(bp) || bp < 0 || bp > MAX_BASIS_POINTS) {
    throw new TandemError('ERR_INVALID_ARGUMENT', `Basis points must be an integer from 0 to ${MAX_BASIS_POINTS}, got ${String(bp)}.`, {
      details: { basisPoints: bp },
    });
  }
}

/** 0 admits no device, 10,000 admits all; each basis point admits 1/10,000 of the fleet. */
export function inRollout(deviceId: string, salt: string, basisPoints: number): boolean {
  checkBasisPoints(basisPoints);
  // Every bucket is below 10,000 and none below 0: the answer needs no hash.
  if (basisPoints === 0) return false;
  if (basisPoints === MAX_BASIS_POINTS) return true;
  return bucket(deviceId, salt) < basisPoints;
}

// Whole percent 0..100 without leading zeros, at most two decimals (one basis point is 0.01%).
const PERCENT = /^(0|[1-9]\d{0,2})(?:\.(\d{1,2}))?%$/;

/**
 * "10%" → 1000, "12.5%" → 1250, "0.01%" → 1. Parsed as integers, never through a
 * float, so "0.29%" is exactly 29 and not 28.999…
 */
export function percentToBasisPoints(text: string): number {
  const fail = (reason: string): TandemError =>
    new TandemError('ERR_INVALID_ARGUMENT', `Invalid rollout percentage ${JSON.stringify(String(text).slice(0, 40))}: ${reason}.`, {
      details: { percentage: typeof text === 'string' ? text.slice(0, 40) : null, reason },
    });
  if (typeof text !== 'string') throw fail('not a string');
  const m = PERCENT.exec(text);
  if (m === null) {
    if (/^\d+\.\d{3,}%$/.test(text)) throw fail('finer than 0.01% (one basis point)');
    if (!text.endsWith('%')) throw fail('expected a percentage such as "10%", "12.5%" or "0.01%"');
    throw fail('expected 0% to 100% with at most two decimals and no sign, spaces or leading zeros');
  }
  const whole = Number(m[1]);
  const fraction = Number((m[2] ?? '').padEnd(2, '0'));
  const bp = whole * 100 + fraction;
  if (bp > MAX_BASIS_POINTS) throw fail('more than 100%');
  return bp;
}

/** 1000 → "10%", 1250 → "12.5%", 1 → "0.01%"; the inverse of percentToBasisPoints. */
export function basisPointsToPercent(bp: number): string {
  checkBasisPoints(bp);
  const whole = Math.floor(bp / 100);
  const fraction = bp % 100;
  if (fraction === 0) return `${whole}%`;
  return `${whole}.${String(fraction).padStart(2, '0').replace(/0$/, '')}%`;
}
