import { createHash } from 'node:crypto';
import test from 'ava';
import { isTandemError } from '../../shared/errors.ts';
import {
  basisPointsToPercent,
  bucket,
  encodeBucketInput,
  inRollout,
  percentToBasisPoints,
} from '../../shared/rollout-bucket.ts';

// Fixed ids, so every statistical test is deterministic: it either always passes or always fails.
const ids = (n: number, prefix = 'device-'): string[] => Array.from({ length: n }, (_, i) => `${prefix}${i}`);
const IDS_100K = ids(100_000);

test('bucket is deterministic and in range', (t) => {
  for (const id of ids(1000)) {
    const b = bucket(id, 'salt-a');
    t.true(Number.isInteger(b) && b >= 0 && b < 10_000);
    t.is(bucket(id, 'salt-a'), b);
  }
});

test('known answer: the encoding and hash are pinned (changing them reshuffles live rollouts)', (t) => {
  // Recomputed independently from the documented encoding.
  const salt = Buffer.from('rollout-42');
  const id = Buffer.from('dev-0001');
  const u32 = (n: number): Buffer => Buffer.from([n >>> 24, (n >>> 16) & 255, (n >>> 8) & 255, n & 255]);
  const input = Buffer.concat([Buffer.from('tandem-rollout-bucket-v1\0'), u32(salt.length), salt, u32(id.length), id]);
  t.deepEqual(encodeBucketInput('dev-0001', 'rollout-42'), input);
  const expected = Number(createHash('sha256').update(input).digest().readBigUInt64BE(0) % 10_000n);
  t.is(bucket('dev-0001', 'rollout-42'), expected);
});

test('length prefixes keep ("ab","c") and ("a","bc") apart', (t) => {
  // Plain concatenation would hash the same bytes for both splits.
  t.notDeepEqual(encodeBucketInput('c', 'ab'), encodeBucketInput('bc', 'a'));
  const pairs: [string, string][] = [
    ['c', 'ab'],
    ['bc', 'a'],
    ['device-1', 'salt'],
    ['1', 'saltdevice-'],
  ];
  const digests = new Set(pairs.map(([d, s]) => createHash('sha256').update(encodeBucketInput(d, s)).digest('hex')));
  t.is(digests.size, pairs.length);
  // Every split of one string would share a bucket under concatenation; here none does (fixed inputs, so no flakiness).
  let same = 0;
  const whole = 'abcdefghijklmnopqrstuvwxyz0123456789';
  for (let cut = 1; cut < whole.length - 1; cut++) {
    if (bucket(whole.slice(cut), whole.slice(0, cut)) === bucket(whole.slice(cut + 1), whole.slice(0, cut + 1))) same++;
  }
  t.is(same, 0);
});

test('buckets are uniform: chi-square over 100 bins on 100,000 ids', (t) => {
  const bins = new Array<number>(100).fill(0);
  for (const id of IDS_100K) {
    const b = Math.floor(bucket(id, 'uniformity') / 100);
    bins[b] = (bins[b] ?? 0) + 1;
  }
  const expected = IDS_100K.length / bins.length;
  const chi2 = bins.reduce((sum, observed) => sum + (observed - expected) ** 2 / expected, 0);
  // Critical value for 99 degrees of freedom at p = 0.001.
  t.true(chi2 < 148.23, `chi-square ${chi2.toFixed(1)}`);
});

test('10% of 10,000 ids is 10% ± 0.6%', (t) => {
  const n = ids(10_000, 'appliance-').filter((id) => inRollout(id, 'ten-percent', 1000)).length;
  // One standard deviation is sqrt(10000 * 0.1 * 0.9) = 30 devices = 0.3%.
  t.true(Math.abs(n - 1000) <= 60, `${n} of 10000`);
});

test('monotonic: raising basis points only adds devices', (t) => {
  const sample = ids(5000);
  let previous = new Set<string>();
  for (const bp of [0, 1, 10, 100, 500, 1000, 2500, 5000, 9999, 10_000]) {
    const current = new Set(sample.filter((id) => inRollout(id, 'staged', bp)));
    for (const id of previous) t.true(current.has(id), `${id} dropped at ${bp}`);
    previous = current;
  }
  t.is(previous.size, sample.length, '100% admits every device');
  t.is(sample.filter((id) => inRollout(id, 'staged', 0)).length, 0, '0% admits none');
});

test('independent across salts: two 10% rollouts overlap on ~1%', (t) => {
  let both = 0;
  for (const id of IDS_100K) if (inRollout(id, 'release-a', 1000) && inRollout(id, 'release-b', 1000)) both++;
  // Expected 1000 with sd ~31.5; the same salt would overlap on all ~10,000.
  t.true(Math.abs(both - 1000) <= 150, `${both} of 100000 in both`);
});

test('inRollout and bucket refuse bad arguments', (t) => {
  for (const bp of [-1, 10_001, 1.5, Number.NaN, Infinity]) {
    t.true(isTandemError(t.throws(() => inRollout('d', 's', bp)), 'ERR_INVALID_ARGUMENT'), String(bp));
  }
  t.true(isTandemError(t.throws(() => bucket('', 's')), 'ERR_INVALID_ARGUMENT'));
  t.true(isTandemError(t.throws(() => bucket('d', '')), 'ERR_INVALID_ARGUMENT'));
  t.true(isTandemError(t.throws(() => bucket('d\uD800', 's')), 'ERR_INVALID_ARGUMENT'), 'lone surrogate');
});

test('percentToBasisPoints parses exact basis points', (t) => {
  const table: [string, number][] = [
    ['0%', 0],
    ['0.01%', 1],
    ['0.1%', 10],
    ['0.29%', 29],
    ['1%', 100],
    ['10%', 1000],
    ['12.5%', 1250],
    ['12.50%', 1250],
    ['99.99%', 9999],
    ['100%', 10_000],
    ['100.00%', 10_000],
  ];
  for (const [text, bp] of table) t.is(percentToBasisPoints(text), bp, text);
});

test('percentToBasisPoints refuses anything else with ERR_INVALID_ARGUMENT', (t) => {
  const cases: [string, RegExp][] = [
    ['0.001%', /finer than 0\.01%/],
    ['10', /expected a percentage/],
    ['100.01%', /more than 100%/],
    ['101%', /more than 100%/],
    ['-1%', /no sign/],
    ['+5%', /no sign/],
    [' 5%', /spaces/],
    ['5 %', /spaces/],
    ['05%', /leading zeros/],
    ['.5%', /expected 0%/],
    ['5.%', /expected 0%/],
    ['1e1%', /expected 0%/],
    ['', /expected a percentage/],
  ];
  for (const [text, message] of cases) {
    const err = t.throws(() => percentToBasisPoints(text), undefined, JSON.stringify(text));
    t.true(isTandemError(err, 'ERR_INVALID_ARGUMENT'));
    t.regex(err?.message ?? '', message, JSON.stringify(text));
  }
  t.true(isTandemError(t.throws(() => percentToBasisPoints(10 as unknown as string)), 'ERR_INVALID_ARGUMENT'));
});

test('basisPointsToPercent formats and round-trips every value', (t) => {
  t.is(basisPointsToPercent(0), '0%');
  t.is(basisPointsToPercent(1), '0.01%');
  t.is(basisPointsToPercent(10), '0.1%');
  t.is(basisPointsToPercent(1250), '12.5%');
  t.is(basisPointsToPercent(1000), '10%');
  t.is(basisPointsToPercent(10_000), '100%');
  for (let bp = 0; bp <= 10_000; bp++) {
    if (percentToBasisPoints(basisPointsToPercent(bp)) !== bp) t.fail(`round trip ${bp}`);
  }
  t.true(isTandemError(t.throws(() => basisPointsToPercent(10_001)), 'ERR_INVALID_ARGUMENT'));
});
