/**
 * Corruption and trust (issue 3, tests): one flipped byte anywhere, a truncated
 * or extended payload, and every broken link of the trust chain (root →
 * keyring → release key → manifest) are refused with a TandemError whose code
 * says which, and never end in a reported success.
 */
import test from 'ava';
import { mkdtemp, readFile, rm, stat, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { generateKeyPair } from '../../shared/keys.ts';
import { createKeyring } from '../../shared/keyring.ts';
import { isTandemError, type ErrorCode } from '../../shared/errors.ts';
import { applyPayload, type ApplyOptions } from '../../payloads/apply.ts';
import { HEADER_SIZE } from '../../payloads/format.ts';
import { createPayload } from '../../payloads/generate.ts';
import { readPrelude } from '../../payloads/payload-reader.ts';
import { ByteReader } from '../../payloads/byte-reader.ts';
import { craftPayload } from '../helpers/craft-payload.ts';
import { makeTrust, type TestTrust } from '../helpers/trust.ts';
import { baseSeed, chunksOf, Prng, randomImage } from './random-images.ts';

const SEED = baseSeed();
const trust = makeTrust();
let dir = '';
let oldImage: Buffer;
let newImage: Buffer;
let delta: Buffer;
let full: Buffer;
let targetSeq = 0;

test.before(async () => {
  dir = await mkdtemp(join(tmpdir(), 'tandem-corruption-'));
  const rng = new Prng(SEED);
  // ~300 KB of literal data plus copies and zeros: every operation kind, a payload that applies fast.
  oldImage = randomImage(rng, 600 * 1024);
  newImage = Buffer.concat([
    oldImage.subarray(8192, 200 * 1024), // SOURCE_COPY from elsewhere
    rng.bytes(300 * 1024 + 11), // REPLACE (incompressible)
    Buffer.alloc(40 * 1024), // ZERO
    oldImage.subarray(8192, 8192 + 16 * 1024), // repeated target blocks
  ]);
  await writeFile(join(dir, 'old.img'), oldImage);
  await writeFile(join(dir, 'new.img'), newImage);
  const common = { image: join(dir, 'new.img'), version: '2.0.0', board: 'test-board', signer: trust.release.privateKey, keyring: trust.keyring, level: 3 };
  await createPayload({ ...common, source: { path: join(dir, 'old.img'), version: '1.0.0' }, out: join(dir, 'delta') });
  await createPayload({ ...common, out: join(dir, 'full') });
  delta = await readFile(join(dir, 'delta'));
  full = await readFile(join(dir, 'full'));
});
test.after.always(async () => {
  await rm(dir, { recursive: true, force: true });
});

const KNOWN_CODES = new Set<ErrorCode>([
  'ERR_PAYLOAD_MAGIC',
  'ERR_PAYLOAD_FORMAT_VERSION',
  'ERR_PAYLOAD_HEADER',
  'ERR_PAYLOAD_TRUNCATED',
  'ERR_PAYLOAD_TRAILING_DATA',
  'ERR_MANIFEST_TOO_LARGE',
  'ERR_MANIFEST_INVALID',
  'ERR_MANIFEST_UNSIGNED',
  'ERR_KEYRING_INVALID',
  'ERR_KEYRING_UNTRUSTED',
  'ERR_BAD_KEY',
  'ERR_UNKNOWN_KEY',
  'ERR_BAD_SIGNATURE',
  'ERR_BLOB_HASH',
  'ERR_BLOB_DECODE',
  'ERR_OPERATION_HASH',
  'ERR_SOURCE_HASH',
  'ERR_TARGET_HASH',
]);

/** Which codes a flip in each region may produce: the first check that sees the damage names it. */
const CODES_BY_REGION: Record<Region, ReadonlySet<ErrorCode>> = {
  // The decoded-manifest length is outside the signature: a wrong one fails the manifest's decode.
  header: new Set(['ERR_PAYLOAD_MAGIC', 'ERR_PAYLOAD_FORMAT_VERSION', 'ERR_PAYLOAD_HEADER', 'ERR_MANIFEST_TOO_LARGE', 'ERR_PAYLOAD_TRUNCATED', 'ERR_MANIFEST_UNSIGNED', 'ERR_MANIFEST_INVALID']),
  // The manifest is signed byte for byte: any change is a bad signature, before it is parsed.
  manifest: new Set(['ERR_BAD_SIGNATURE']),
  signatures: new Set(['ERR_MANIFEST_UNSIGNED', 'ERR_KEYRING_INVALID', 'ERR_KEYRING_UNTRUSTED', 'ERR_BAD_KEY', 'ERR_UNKNOWN_KEY', 'ERR_BAD_SIGNATURE']),
  // Each blob's hash is checked before a byte of it is decoded.
  data: new Set(['ERR_BLOB_HASH']),
};

type Region = 'header' | 'manifest' | 'signatures' | 'data';

interface Layout {
  regions: { region: Region; start: number; end: number }[];
}

async function layoutOf(payload: Buffer): Promise<Layout> {
  const prelude = await readPrelude(new ByteReader([payload]));
  const manifestEnd = HEADER_SIZE + prelude.header.manifestLength;
  return {
    regions: [
      { region: 'header', start: 0, end: HEADER_SIZE },
      { region: 'manifest', start: HEADER_SIZE, end: manifestEnd },
      { region: 'signatures', start: manifestEnd, end: prelude.dataOffset },
      { region: 'data', start: prelude.dataOffset, end: payload.length },
    ],
  };
}

/** `count` positions spread over [start, end): one per stratum, jittered; every byte when the region is small. */
function spread(rng: Prng, start: number, end: number, count: number): number[] {
  const length = end - start;
  if (length <= count) return Array.from({ length }, (_, i) => start + i);
  const stride = length / count;
  return Array.from({ length: count }, (_, i) => start + Math.floor(i * stride + rng.int(Math.max(1, Math.floor(stride)))));
}

interface Outcome {
  ok: boolean;
  code?: string;
  error?: unknown;
  reportedGood: boolean;
}

/** Applies into a fresh target; success, a TandemError, or anything else (a crash: always a failure). */
async function attempt(payload: Buffer, options: Partial<ApplyOptions> & { trustOf?: TestTrust } = {}, rng?: Prng): Promise<Outcome & { target: string }> {
  const target = join(dir, `target-${targetSeq++}`);
  let reportedGood = false;
  try {
    await applyPayload(chunksOf(payload, rng, 16 * 1024), {
      target,
      trust: (options.trustOf ?? trust).trust,
      ...options,
      onProgress: (p) => {
        // 'verify' reaching the end is the last step before success is reported.
        if (p.phase === 'verify' && p.done === p.total) reportedGood = true;
      },
    });
    return { ok: true, reportedGood: true, target };
  } catch (error) {
    return { ok: false, error, reportedGood, target, ...(isTandemError(error) ? { code: error.code } : {}) };
  }
}

async function sizeOf(path: string): Promise<number | undefined> {
  return stat(path).then(
    (s) => s.size,
    () => undefined,
  );
}

for (const kind of ['delta', 'full'] as const) {
  // Every header byte; the other regions sampled evenly (≥ 500 positions in all for the delta).
  const perRegion = kind === 'delta' ? { header: HEADER_SIZE, manifest: 170, signatures: 170, data: 170 } : { header: HEADER_SIZE, manifest: 40, signatures: 40, data: 60 };

  test(`${kind}: one flipped byte anywhere is refused with a known code and never reported good`, async (t) => {
    const payload = kind === 'delta' ? delta : full;
    const rng = new Prng(SEED ^ (kind === 'delta' ? 0xf1f1 : 0xf2f2));
    t.log(`seed ${SEED}; payload ${payload.length} B`);
    const layout = await layoutOf(payload);
    const histogram: Record<string, number> = {};
    let tried = 0;
    for (const { region, start, end } of layout.regions) {
      for (const position of spread(rng, start, end, perRegion[region])) {
        const mask = rng.range(1, 255);
        const corrupt = Buffer.from(payload);
        corrupt[position]! ^= mask;
        const outcome = await attempt(corrupt, kind === 'delta' ? { source: join(dir, 'old.img') } : {}, rng);
        const where = `${region} byte ${position} ^ 0x${mask.toString(16)} (seed ${SEED})`;
        tried++;
        if (outcome.ok || outcome.code === undefined) {
          t.fail(`${where}: ${outcome.ok ? 'ACCEPTED' : `not a TandemError: ${String(outcome.error)}`}`);
          continue;
        }
        t.false(outcome.reportedGood, `${where}: the target was reported good`);
        t.true(KNOWN_CODES.has(outcome.code as ErrorCode), `${where}: unexpected code ${outcome.code}`);
        t.true(CODES_BY_REGION[region].has(outcome.code as ErrorCode), `${where}: ${outcome.code} is not what a ${region} flip should give`);
        histogram[`${region}:${outcome.code}`] = (histogram[`${region}:${outcome.code}`] ?? 0) + 1;
        // Nothing is written before the manifest and signatures verify.
        if (region !== 'data') t.is(await sizeOf(outcome.target), undefined, `${where}: a target was created`);
        await rm(outcome.target, { force: true });
      }
    }
    t.log(`${tried} positions:`, histogram);
    t.true(tried >= (kind === 'delta' ? 500 : 150));
  });

  test(`${kind}: truncation at sampled points is refused as ERR_PAYLOAD_TRUNCATED`, async (t) => {
    const payload = kind === 'delta' ? delta : full;
    const rng = new Prng(SEED ^ 0x7a7a);
    const layout = await layoutOf(payload);
    const points = [0, 1, HEADER_SIZE - 1, HEADER_SIZE, payload.length - 1];
    for (const { start, end } of layout.regions) points.push(...spread(rng, start, end, 12), end - 1);
    for (const length of points) {
      const outcome = await attempt(payload.subarray(0, length), kind === 'delta' ? { source: join(dir, 'old.img') } : {}, rng);
      t.false(outcome.ok, `truncated to ${length} of ${payload.length} was accepted`);
      t.false(outcome.reportedGood);
      t.is(outcome.code, 'ERR_PAYLOAD_TRUNCATED', `truncated to ${length}: ${String(outcome.error)}`);
      await rm(outcome.target, { force: true });
    }
  });

  test(`${kind}: data after the last blob is refused as ERR_PAYLOAD_TRAILING_DATA`, async (t) => {
    const payload = kind === 'delta' ? delta : full;
    for (const extra of [Buffer.from([0]), Buffer.from('x'), Buffer.alloc(70_000, 1)]) {
      const outcome = await attempt(Buffer.concat([payload, extra]), kind === 'delta' ? { source: join(dir, 'old.img') } : {});
      t.false(outcome.ok);
      t.false(outcome.reportedGood);
      t.is(outcome.code, 'ERR_PAYLOAD_TRAILING_DATA');
      await rm(outcome.target, { force: true });
    }
  });
}

test('the unaltered payloads apply (control for the tests above)', async (t) => {
  for (const [payload, source] of [
    [delta, join(dir, 'old.img')],
    [full, undefined],
  ] as const) {
    const outcome = await attempt(payload, source ? { source } : {});
    t.true(outcome.ok, String(outcome.error));
    t.true((await readFile(outcome.target)).equals(newImage));
  }
});

// ---- The trust chain ------------------------------------------------------------

const DAY = 24 * 3600 * 1000;

/** A payload made by the real generator under `signedBy`, applied by a device that pins `device`. */
async function trustCase(signedBy: TestTrust, device: { trust: TestTrust['trust'] }, options: Partial<ApplyOptions> = {}): Promise<Outcome & { target: string }> {
  const out = join(dir, `trust-${targetSeq++}`);
  await createPayload({ image: join(dir, 'new.img'), version: '2.0.0', board: 'test-board', signer: signedBy.release.privateKey, keyring: signedBy.keyring, level: 1, out });
  const payload = await readFile(out);
  await rm(out);
  return attempt(payload, { trust: device.trust, ...options });
}

const TRUST_CASES: { name: string; code: ErrorCode; run: () => Promise<Outcome & { target: string }> }[] = [
  {
    name: 'a device pinning another root key',
    code: 'ERR_KEYRING_UNTRUSTED',
    run: () => trustCase(trust, makeTrust()),
  },
  {
    name: 'an expired release key',
    code: 'ERR_KEY_EXPIRED',
    run: () => {
      const expired = makeTrust({ releaseExpires: new Date(Date.now() - DAY) });
      return trustCase(expired, expired);
    },
  },
  {
    name: 'a release key that expires before the device\'s clock',
    code: 'ERR_KEY_EXPIRED',
    run: () => {
      const shortLived = makeTrust({ releaseExpires: new Date(Date.now() + DAY), keyringExpires: new Date(Date.now() + 5 * 365 * DAY) });
      return trustCase(shortLived, shortLived, { now: new Date(Date.now() + 2 * DAY) });
    },
  },
  {
    name: 'a revoked release key',
    code: 'ERR_KEY_REVOKED',
    run: () => {
      const revoked = makeTrust({ revoked: true });
      return trustCase(revoked, revoked);
    },
  },
  {
    name: 'an expired keyring',
    code: 'ERR_KEYRING_EXPIRED',
    run: () => {
      const stale = makeTrust({ keyringExpires: new Date(Date.now() - DAY) });
      return trustCase(stale, stale);
    },
  },
  {
    name: 'a keyring that names the pinned root but is signed by another key',
    code: 'ERR_KEYRING_UNTRUSTED',
    run: () => {
      const forger = generateKeyPair();
      const keyring = createKeyring(
        {
          version: 1,
          expires: new Date(Date.now() + 365 * DAY),
          roots: { threshold: 1, keys: [trust.root.publicKey] },
          releaseKeys: [{ publicKey: trust.release.publicKey, expires: new Date(Date.now() + 365 * DAY) }],
        },
        [forger.privateKey],
      );
      return trustCase({ ...trust, keyring }, trust);
    },
  },
  {
    name: 'a manifest signed by a key the keyring does not list',
    code: 'ERR_UNKNOWN_KEY',
    run: () => trustCase({ ...trust, release: generateKeyPair() }, trust),
  },
  {
    name: 'a keyring older than one the device already trusts',
    code: 'ERR_KEYRING_ROLLBACK',
    run: () => trustCase(trust, trust, { minKeyringVersion: 2 }),
  },
];

for (const { name, code, run } of TRUST_CASES) {
  test(`trust: ${name} is refused with ${code}, before the target is touched`, async (t) => {
    const outcome = await run();
    t.false(outcome.ok);
    t.false(outcome.reportedGood);
    t.is(outcome.code, code, String(outcome.error));
    t.is(await sizeOf(outcome.target), undefined);
  });
}

test('trust: the keyring of one payload cannot vouch for a manifest signed under another root', async (t) => {
  // A valid manifest signature by a release key that only a foreign keyring lists.
  const foreign = makeTrust();
  const payload = craftPayload(foreign, { anything: true }, [], { keyring: trust.keyring });
  const outcome = await attempt(payload);
  t.is(outcome.code, 'ERR_UNKNOWN_KEY');
});
