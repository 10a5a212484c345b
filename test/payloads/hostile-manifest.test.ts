/**
 * Hostile manifests (issue 3, tests): payloads whose signature is VALID (made
 * with the test release key by test/helpers/craft-payload.ts), so only the
 * reader's own checks stand in the way. Each must be refused with a clear code,
 * without a crash, without a write beyond the target size the manifest
 * declares, and in bounded memory.
 */
import test, { type ExecutionContext } from 'ava';
import { mkdtemp, readFile, rm, stat, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { canonicalBytes } from '../../shared/canonical-json.ts';
import { isTandemError, TandemError, type ErrorCode } from '../../shared/errors.ts';
import type { Extent, Manifest } from '../../shared/schemas/manifest.ts';
import { applyPayload, type ApplyOptions } from '../../payloads/apply.ts';
import type { ManifestView } from '../../payloads/operation-table.ts';
import { encodeHeader, MANIFEST_MAX_BYTES, MAX_BLOB_SIZE, MAX_OPERATION_SIZE } from '../../payloads/format.ts';
import { blobOf, bytesAt, compressFrame, craftPayload, manifestOf, planPayload, rawFrame, rleFrame, sha256Hex, type Plan } from '../helpers/craft-payload.ts';
import { makeTrust } from '../helpers/trust.ts';
import { chunksOf, Prng, randomImage } from './random-images.ts';

const trust = makeTrust();
const rng = new Prng(0x4057113);
const MiB = 1024 * 1024;
const TWO_32 = 2 ** 32;

/** A 64 KiB target and a 96 KiB source that shares some of it: small enough to build cases by hand. */
const SOURCE = randomImage(rng, 96 * 1024);
const TARGET = Buffer.concat([SOURCE.subarray(8192, 8192 + 16384), rng.bytes(32768), Buffer.alloc(16384)]);

let dir = '';
let sourcePath = '';
let seq = 0;

test.before(async () => {
  dir = await mkdtemp(join(tmpdir(), 'tandem-hostile-'));
  sourcePath = join(dir, 'source.img');
  await writeFile(sourcePath, SOURCE);
});
test.after.always(async () => {
  await rm(dir, { recursive: true, force: true });
});

/** Memory a refusal may cost, over what the process held before: generous, it catches a bomb, not a leak. */
const RSS_BUDGET = 256 * MiB;
// Timed and memory-measured cases run serially (ava runs them before the concurrent ones), so other
// cases in this file do not skew their figures.

interface Expectation {
  code: ErrorCode;
  /** A word the message must contain, to tell apart refusals that share a code. */
  says?: RegExp;
  /** The declared target size; the target file must never exceed it (default: TARGET.length). */
  declaredSize?: number;
  options?: Partial<ApplyOptions>;
  /** RSS growth allowed for this case (default RSS_BUDGET). */
  rssBudget?: number;
}

async function refused(t: ExecutionContext, payload: Buffer, expect: Expectation): Promise<TandemError> {
  const target = join(dir, `target-${seq++}`);
  const rssBefore = process.memoryUsage().rss;
  let error: unknown;
  try {
    await applyPayload(chunksOf(payload, undefined, 8192), { target, source: sourcePath, trust: trust.trust, ...expect.options });
  } catch (err) {
    error = err;
  }
  const rssGrowth = process.memoryUsage().rss - rssBefore;
  t.true(error !== undefined, 'the hostile payload was ACCEPTED');
  t.true(isTandemError(error), `not a TandemError (a crash): ${String(error)}`);
  const err = error as TandemError;
  t.is(err.code, expect.code, err.message);
  if (expect.says) t.regex(err.message, expect.says);
  const size = await stat(target).then(
    (s) => s.size,
    () => 0,
  );
  t.true(size <= Math.min(expect.declaredSize ?? TARGET.length, TARGET.length), `the target grew to ${size} bytes`);
  t.true(rssGrowth < (expect.rssBudget ?? RSS_BUDGET), `RSS grew by ${Math.round(rssGrowth / MiB)} MiB`);
  t.log(`${err.code}: RSS ${rssGrowth >= 0 ? '+' : ''}${Math.round(rssGrowth / MiB)} MiB`);
  await rm(target, { force: true });
  return err;
}

/** A manifest of ZERO operations over `size` bytes, in operations of at most `step`: no blobs needed. */
function zeros(size: number, step = MAX_OPERATION_SIZE): { op: 'ZERO'; dst: Extent[] }[] {
  const ops: { op: 'ZERO'; dst: Extent[] }[] = [];
  for (let at = 0; at < size; at += step) ops.push({ op: 'ZERO', dst: [[at, Math.min(step, size - at)]] });
  return ops;
}

function zeroManifest(size: number, operations: unknown[], extra: Partial<Manifest> = {}): Manifest {
  // Targets beyond a few MiB are never written here (they stop at a check): any hash will do.
  const sha256 = size <= 64 * MiB ? sha256Hex(Buffer.alloc(size)) : sha256Hex(Buffer.from(`zeros ${size}`));
  return { ...manifestOf({ target: { size, sha256 }, operations }), ...extra };
}

/** REPLACE the whole TARGET from one blob of raw-block frames. */
function replaceAll(frame: Buffer, rawSize = TARGET.length, ops: unknown[] = [{ op: 'REPLACE', blob: 0, dst: [[0, TARGET.length]], sha256: sha256Hex(TARGET) }]): Buffer {
  return craftPayload(trust, manifestOf({ target: { bytes: TARGET }, blobs: [blobOf(frame, rawSize)], operations: ops }), [frame]);
}

const plan = (ops: Plan['ops'], extra: Partial<Plan> = {}): Plan => ({ target: TARGET, source: SOURCE, ops, ...extra });

// ---- Positive controls: the helper builds payloads the reader accepts -----------

test('control: a crafted payload with every operation kind, several blobs and a PATCH applies', async (t) => {
  const { payload } = await planPayload(
    trust,
    plan(
      [
        { op: 'SOURCE_COPY', src: [[8192, 16384]], dst: [[0, 16384]] },
        { op: 'REPLACE', dst: [[16384, 8192]], blob: 0 },
        { op: 'REPLACE', dst: [[24576, 4096], [28672, 4096]], blob: 0 },
        { op: 'PATCH', dst: [[32768, 16384]], blob: 1 },
        { op: 'ZERO', dst: [[49152, 8192]] },
        { op: 'TARGET_COPY', src: [[49152, 8192]], dst: [[57344, 8192]] },
      ],
      { dicts: { 1: [[0, 4096], [20000, 30000]] } },
    ),
  );
  const target = join(dir, `control-${seq++}`);
  const result = await applyPayload(chunksOf(payload), { target, source: sourcePath, trust: trust.trust });
  t.is(result.operations, 6);
  t.true((await readFile(target)).equals(TARGET));
});

test('control: a raw-block frame and an 8 MiB window are accepted', async (t) => {
  const target = join(dir, `control-${seq++}`);
  await applyPayload(chunksOf(replaceAll(rawFrame(TARGET, { windowLog: 23 }))), { target, trust: trust.trust });
  t.true((await readFile(target)).equals(TARGET));
});

test('control: one decoder heap takes an 8 MiB-window manifest, then 8 MiB-window blobs alternating with 2 MiB-dictionary PATCH blobs', async (t) => {
  // Every decoder limit at its maximum, in the order that would fragment a fixed 16 MiB heap.
  const bigSource = rng.bytes(2 * MiB + 8192);
  const sourceFile = join(dir, `big-source-${seq++}`);
  await writeFile(sourceFile, bigSource);
  const opSize = 65536;
  const image = rng.bytes(8 * opSize);
  const frames: Buffer[] = [];
  const blobs: ReturnType<typeof blobOf>[] = [];
  const operations: unknown[] = [];
  for (let i = 0; i < 8; i++) {
    const raw = image.subarray(i * opSize, (i + 1) * opSize);
    const patch = i % 2 === 1;
    const frame = rawFrame(raw, { windowLog: patch ? 22 : 23 });
    frames.push(frame);
    blobs.push(blobOf(frame, opSize, patch ? { extents: [[i * 1024, 2 * MiB]], source: bigSource } : undefined));
    operations.push({ op: patch ? 'PATCH' : 'REPLACE', blob: i, dst: [[i * opSize, opSize]], sha256: sha256Hex(raw) });
  }
  const manifest = manifestOf({ source: { bytes: bigSource }, target: { bytes: image }, blobs, operations });
  const json = canonicalBytes(manifest);
  const payload = craftPayload(trust, manifest, frames, { storedManifest: rawFrame(json, { windowLog: 23 }), manifestRawLength: json.length });
  const target = join(dir, `control-${seq++}`);
  await applyPayload(chunksOf(payload), { target, source: sourceFile, trust: trust.trust });
  t.true((await readFile(target)).equals(image));
});

// ---- Extents ----------------------------------------------------------------------

test('overlapping dst extents, across operations or inside one, are refused', async (t) => {
  await refused(t, craftPayload(trust, zeroManifest(12288, [{ op: 'ZERO', dst: [[0, 8192]] }, { op: 'ZERO', dst: [[4096, 8192]] }])), {
    code: 'ERR_MANIFEST_INVALID',
    says: /also writes/,
  });
  await refused(t, craftPayload(trust, zeroManifest(8192, [{ op: 'ZERO', dst: [[0, 4096], [2048, 4096]] }, { op: 'ZERO', dst: [[6144, 2048]] }])), {
    code: 'ERR_MANIFEST_INVALID',
  });
  // The same extent twice: no gap, no overrun, just a byte written twice.
  await refused(t, craftPayload(trust, zeroManifest(4096, [{ op: 'ZERO', dst: [[0, 4096]] }, { op: 'ZERO', dst: [[0, 4096]] }])), { code: 'ERR_MANIFEST_INVALID' });
});

test('gaps in the target, at the start, middle or end, are refused', async (t) => {
  for (const ops of [
    [{ op: 'ZERO', dst: [[4096, 8192]] }],
    [{ op: 'ZERO', dst: [[0, 4096]] }, { op: 'ZERO', dst: [[8192, 4096]] }],
    [{ op: 'ZERO', dst: [[0, 12287]] }],
  ]) {
    await refused(t, craftPayload(trust, zeroManifest(12288, ops)), { code: 'ERR_MANIFEST_INVALID', says: /no operation writes/ });
  }
});

test('extents out of range (target, source, dictionary) are refused', async (t) => {
  await refused(t, craftPayload(trust, zeroManifest(8192, [{ op: 'ZERO', dst: [[0, 8193]] }])), { code: 'ERR_MANIFEST_INVALID', says: /beyond/ });
  await refused(t, craftPayload(trust, zeroManifest(8192, [{ op: 'ZERO', dst: [[0, 4096]] }, { op: 'ZERO', dst: [[Number.MAX_SAFE_INTEGER - 10, 4096]] }])), {
    code: 'ERR_MANIFEST_INVALID',
  });
  const sourceCopy = (src: Extent[]) =>
    craftPayload(
      trust,
      manifestOf({
        source: { bytes: SOURCE },
        target: { bytes: TARGET },
        operations: [
          { op: 'SOURCE_COPY', src, dst: [[0, 16384]], sha256: sha256Hex(TARGET.subarray(0, 16384)) },
          { op: 'ZERO', dst: [[16384, TARGET.length - 16384]] },
        ],
      }),
    );
  await refused(t, sourceCopy([[SOURCE.length - 4096, 16384]]), { code: 'ERR_MANIFEST_INVALID', says: /src extent/ });
  await refused(t, sourceCopy([[TWO_32, 16384]]), { code: 'ERR_MANIFEST_INVALID', says: /src extent/ });
  await refused(t, sourceCopy([[Number.MAX_SAFE_INTEGER, 16384]]), { code: 'ERR_MANIFEST_INVALID' });
  await refused(
    t,
    craftPayload(
      trust,
      zeroManifest(8192, [
        { op: 'ZERO', dst: [[0, 4096]] },
        { op: 'TARGET_COPY', src: [[4096, 8192]], dst: [[4096, 4096]], sha256: sha256Hex(Buffer.alloc(4096)) },
      ]),
    ),
    { code: 'ERR_MANIFEST_INVALID' },
  );
  // A PATCH dictionary past the end of the source.
  const raw = TARGET.subarray(0, 4096);
  const frame = rawFrame(raw);
  await refused(
    t,
    craftPayload(
      trust,
      manifestOf({
        source: { bytes: SOURCE },
        target: { bytes: TARGET },
        blobs: [{ ...blobOf(frame, 4096), dict: [[SOURCE.length - 100, 4096]], dictSha256: sha256Hex(Buffer.alloc(1)) }],
        operations: [
          { op: 'PATCH', blob: 0, dst: [[0, 4096]], sha256: sha256Hex(raw) },
          { op: 'ZERO', dst: [[4096, TARGET.length - 4096]] },
        ],
      }),
      [frame],
    ),
    { code: 'ERR_MANIFEST_INVALID', says: /dictionary/ },
  );
});

test('zero-length, negative, fractional and mis-shaped extents fail the schema', async (t) => {
  for (const dst of [[[0, 0]], [[-4096, 8192]], [[0.5, 4096]], [[0, 4096, 1]], [[0]], [], [['0', 4096]]]) {
    await refused(t, craftPayload(trust, zeroManifest(4096, [{ op: 'ZERO', dst }])), { code: 'ERR_MANIFEST_INVALID', declaredSize: 4096 });
  }
  const many = Array.from({ length: 513 }, (_, i): Extent => [i * 8, 8]);
  await refused(t, craftPayload(trust, zeroManifest(513 * 8, [{ op: 'ZERO', dst: many }])), { code: 'ERR_MANIFEST_INVALID' });
});

test('an operation writing more than 2 MiB is refused, in one extent or several', async (t) => {
  const size = MAX_OPERATION_SIZE + 4096;
  await refused(t, craftPayload(trust, zeroManifest(size, [{ op: 'ZERO', dst: [[0, size]] }])), { code: 'ERR_MANIFEST_INVALID', says: /more than 2097152/ });
  await refused(
    t,
    craftPayload(trust, zeroManifest(size, [{ op: 'ZERO', dst: [[0, MAX_OPERATION_SIZE], [MAX_OPERATION_SIZE, 4096]] }])),
    { code: 'ERR_MANIFEST_INVALID', says: /more than 2097152/ },
  );
  // Exactly 2 MiB is the limit, not beyond it.
  const target = join(dir, `ok-${seq++}`);
  await applyPayload(chunksOf(craftPayload(trust, zeroManifest(size, zeros(size)))), { target, trust: trust.trust });
  t.is((await stat(target)).size, size);
});

test('TARGET_COPY reading bytes not yet written (later, or its own output) is refused', async (t) => {
  const block = sha256Hex(Buffer.alloc(4096));
  await refused(
    t,
    craftPayload(trust, zeroManifest(8192, [{ op: 'TARGET_COPY', src: [[4096, 4096]], dst: [[0, 4096]], sha256: block }, { op: 'ZERO', dst: [[4096, 4096]] }])),
    { code: 'ERR_MANIFEST_INVALID', says: /before they are written/ },
  );
  await refused(
    t,
    craftPayload(trust, zeroManifest(8192, [{ op: 'ZERO', dst: [[0, 4096]] }, { op: 'TARGET_COPY', src: [[2048, 4096]], dst: [[4096, 4096]], sha256: block }])),
    { code: 'ERR_MANIFEST_INVALID', says: /before they are written/ },
  );
  await refused(
    t,
    craftPayload(trust, zeroManifest(8192, [{ op: 'ZERO', dst: [[0, 4096]] }, { op: 'TARGET_COPY', src: [[4096, 4096]], dst: [[4096, 4096]], sha256: block }])),
    { code: 'ERR_MANIFEST_INVALID', says: /before they are written/ },
  );
});

// ---- Blobs ------------------------------------------------------------------------

/** Two REPLACE operations over the first 16 KiB, each from its own raw-block blob, rest ZERO. */
function twoBlobs(order: [number, number], blobCount = 2, rawSizes?: number[]): Buffer {
  const parts = [TARGET.subarray(0, 8192), TARGET.subarray(8192, 16384)];
  const frames = parts.map((p) => rawFrame(p));
  while (frames.length < blobCount) frames.push(rawFrame(Buffer.alloc(16)));
  const blobs = frames.map((f, i) => blobOf(f, rawSizes?.[i] ?? (i < 2 ? 8192 : 16)));
  const manifest = manifestOf({
    target: { bytes: TARGET },
    blobs,
    operations: [
      { op: 'REPLACE', blob: order[0], dst: [[0, 8192]], sha256: sha256Hex(parts[0]!) },
      { op: 'REPLACE', blob: order[1], dst: [[8192, 8192]], sha256: sha256Hex(parts[1]!) },
      { op: 'ZERO', dst: [[16384, TARGET.length - 16384]] },
    ],
  });
  return craftPayload(trust, manifest, frames);
}

test('blobs out of order, skipped, unused or missing are refused', async (t) => {
  await refused(t, twoBlobs([1, 0]), { code: 'ERR_MANIFEST_INVALID', says: /out of order/ });
  await refused(t, twoBlobs([0, 2], 3), { code: 'ERR_MANIFEST_INVALID', says: /out of order/ });
  await refused(t, twoBlobs([0, 1], 3), { code: 'ERR_MANIFEST_INVALID', says: /never used/ });
  await refused(t, twoBlobs([0, 0], 2, [16384, 8192]), { code: 'ERR_MANIFEST_INVALID', says: /never used/ });
  await refused(t, twoBlobs([0, 5]), { code: 'ERR_MANIFEST_INVALID', says: /does not exist/ });
});

test('a blob whose rawSize disagrees with its operations is refused', async (t) => {
  await refused(t, twoBlobs([0, 1], 2, [8192, 8193]), { code: 'ERR_MANIFEST_INVALID', says: /declares 8193 decoded bytes/ });
  await refused(t, twoBlobs([0, 1], 2, [4096, 8192]), { code: 'ERR_MANIFEST_INVALID', says: /declares 4096 decoded bytes/ });
});

test('blob sizes that do not add up to dataSize, or exceed the blob limit, are refused', async (t) => {
  const frame = rawFrame(TARGET);
  const base = manifestOf({ target: { bytes: TARGET }, blobs: [blobOf(frame, TARGET.length)], operations: [{ op: 'REPLACE', blob: 0, dst: [[0, TARGET.length]], sha256: sha256Hex(TARGET) }] });
  await refused(t, craftPayload(trust, { ...base, dataSize: base.dataSize + 1 }, [frame]), { code: 'ERR_MANIFEST_INVALID', says: /dataSize/ });
  const huge = { ...base, blobs: [{ ...base.blobs[0]!, size: MAX_BLOB_SIZE + 1 }], dataSize: MAX_BLOB_SIZE + 1 };
  await refused(t, craftPayload(trust, huge, [frame]), { code: 'ERR_MANIFEST_INVALID', says: /more than/ });
  // Consistent sizes but a data section that ends early.
  await refused(t, craftPayload(trust, base, [frame.subarray(0, frame.length - 1)]), { code: 'ERR_PAYLOAD_TRUNCATED' });
});

test('a blob frame that decodes beyond its declared size is refused, and stops early', async (t) => {
  // No content size in the header: only decoding finds the excess.
  const longer = rawFrame(Buffer.concat([TARGET, Buffer.alloc(4096, 0x55)]));
  await refused(t, replaceAll(longer), { code: 'ERR_BLOB_DECODE', says: /more than/ });
  // A declared content size that disagrees is refused before decoding.
  await refused(t, replaceAll(rawFrame(Buffer.concat([TARGET, Buffer.alloc(1)]), { contentSize: TARGET.length + 1 })), { code: 'ERR_BLOB_DECODE', says: /declares/ });
  // Fewer bytes than declared.
  await refused(t, replaceAll(rawFrame(TARGET.subarray(0, TARGET.length - 1))), { code: 'ERR_BLOB_DECODE', says: /fewer|decodes to/ });
});

test.serial('a decompression bomb (RLE blocks: 4 bytes → 128 KiB each) is refused in bounded time and memory', async (t) => {
  // 16,384 blocks: 64 KiB of frame that would decode to 2 GiB. The operation wants 64 KiB of 'A'.
  const want = Buffer.alloc(TARGET.length, 0x41);
  const bomb = rleFrame(0x41, 16384);
  const payload = craftPayload(
    trust,
    manifestOf({ target: { bytes: want }, blobs: [blobOf(bomb, want.length)], operations: [{ op: 'REPLACE', blob: 0, dst: [[0, want.length]], sha256: sha256Hex(want) }] }),
    [bomb],
  );
  const started = performance.now();
  // Serial, so measured alone: the decoder's heap and one blob, not the 2 GiB it would expand to.
  await refused(t, payload, { code: 'ERR_BLOB_DECODE', says: /more than/, rssBudget: 64 * MiB });
  const ms = performance.now() - started;
  t.true(ms < 3000, `took ${Math.round(ms)} ms`);
});

test('a frame with a window beyond 8 MiB is refused BEFORE decoding (zstd-codec would abort on OOM)', async (t) => {
  for (const [windowLog, mantissa] of [
    [24, 0],
    [23, 1],
    [30, 7],
    [41, 7],
  ] as const) {
    await refused(t, replaceAll(rawFrame(TARGET, { windowLog, windowMantissa: mantissa })), { code: 'ERR_BLOB_DECODE', says: /window/ });
  }
  // Single-segment frames have no window descriptor: the window is the content size.
  const big = 8 * MiB + 4096;
  const frame = rawFrame(Buffer.alloc(0), { singleSegment: true, contentSize: big });
  await refused(
    t,
    craftPayload(trust, zeroManifest(big, [{ op: 'REPLACE', blob: 0, dst: [[0, 4096]], sha256: sha256Hex(Buffer.alloc(4096)) }, ...zeros(big - 4096).map((z) => ({ op: 'ZERO', dst: [[z.dst[0]![0] + 4096, z.dst[0]![1]]] }))], {
      blobs: [blobOf(frame, 4096)],
      dataSize: frame.length,
    }), [frame]),
    { code: 'ERR_BLOB_DECODE', declaredSize: big },
  );
});

test('a PATCH frame with a window beyond 4 MiB is refused before decoding', async (t) => {
  const raw = TARGET.subarray(0, 16384);
  const frame = rawFrame(raw, { windowLog: 23 });
  const dict: Extent[] = [[0, 4096]];
  const manifest = manifestOf({
    source: { bytes: SOURCE },
    target: { bytes: TARGET },
    blobs: [blobOf(frame, raw.length, { extents: dict, source: SOURCE })],
    operations: [
      { op: 'PATCH', blob: 0, dst: [[0, 16384]], sha256: sha256Hex(raw) },
      { op: 'ZERO', dst: [[16384, TARGET.length - 16384]] },
    ],
  });
  await refused(t, craftPayload(trust, manifest, [frame]), { code: 'ERR_BLOB_DECODE', says: /window/ });
});

test('a second frame, skippable frame or trailing byte after the blob frame is refused', async (t) => {
  const half = TARGET.length / 2;
  const two = Buffer.concat([rawFrame(TARGET.subarray(0, half)), rawFrame(TARGET.subarray(half))]);
  await refused(t, replaceAll(two), { code: 'ERR_BLOB_DECODE', says: /after the frame/ });
  const skippable = Buffer.from([0x50, 0x2a, 0x4d, 0x18, 4, 0, 0, 0, 1, 2, 3, 4]);
  await refused(t, replaceAll(Buffer.concat([rawFrame(TARGET), skippable])), { code: 'ERR_BLOB_DECODE', says: /after the frame/ });
  await refused(t, replaceAll(Buffer.concat([rawFrame(TARGET), Buffer.from([0])])), { code: 'ERR_BLOB_DECODE' });
});

test('malformed frames (magic, reserved bits, dictionary id, truncated, garbage) are refused as ERR_BLOB_DECODE', async (t) => {
  const good = rawFrame(TARGET);
  const cases: Buffer[] = [
    Buffer.concat([Buffer.from([0x29]), good.subarray(1)]),
    Buffer.from(good).fill(0x08, 4, 5), // reserved bit in the descriptor
    rawFrame(TARGET, { dictId: 0x1234 }),
    good.subarray(0, good.length - 100),
    good.subarray(0, 5),
    Buffer.concat([good.subarray(0, 6), Buffer.from([0xff, 0xff, 0xff]), good.subarray(9)]), // reserved block type
    rng.bytes(1000),
  ];
  for (const frame of cases) await refused(t, replaceAll(frame), { code: 'ERR_BLOB_DECODE' });
  // A real compressed frame with one byte of its compressed data changed (hashes recomputed).
  const real = await compressFrame(Buffer.concat([TARGET, TARGET]));
  const bent = Buffer.from(real);
  bent[Math.floor(bent.length / 2)]! ^= 0x40;
  const doubled = Buffer.concat([TARGET, TARGET]);
  const manifest = manifestOf({
    target: { bytes: doubled },
    blobs: [blobOf(bent, doubled.length)],
    operations: [
      { op: 'REPLACE', blob: 0, dst: [[0, 65536]], sha256: sha256Hex(doubled.subarray(0, 65536)) },
      { op: 'REPLACE', blob: 0, dst: [[65536, 65536]], sha256: sha256Hex(doubled.subarray(65536)) },
    ],
  });
  const err = await t.throwsAsync(applyPayload(chunksOf(craftPayload(trust, manifest, [bent])), { target: join(dir, `bent-${seq++}`), trust: trust.trust }));
  t.true(isTandemError(err) && ['ERR_BLOB_DECODE', 'ERR_OPERATION_HASH'].includes(err.code), String(err));
});

test('operation, source and dictionary hashes that do not match are refused with their codes', async (t) => {
  const { manifest, blobs } = await planPayload(
    trust,
    plan(
      [
        { op: 'SOURCE_COPY', src: [[8192, 16384]], dst: [[0, 16384]] },
        { op: 'PATCH', dst: [[16384, 32768]], blob: 0 },
        { op: 'TARGET_COPY', src: [[0, 16384]], dst: [[49152, 16384]] },
      ],
      { target: Buffer.concat([TARGET.subarray(0, 49152), TARGET.subarray(0, 16384)]), dicts: { 0: [[0, 8192]] } },
    ),
  );
  const tweak = (change: (m: Manifest) => void): Buffer => {
    const copy = JSON.parse(JSON.stringify(manifest)) as Manifest;
    change(copy);
    return craftPayload(trust, copy, blobs);
  };
  const wrong = sha256Hex(Buffer.from('wrong'));
  await refused(t, tweak((m) => void (m.operations[0] = { ...m.operations[0]!, sha256: wrong } as Manifest['operations'][0])), { code: 'ERR_SOURCE_HASH' });
  await refused(t, tweak((m) => void (m.operations[1] = { ...m.operations[1]!, sha256: wrong } as Manifest['operations'][0])), { code: 'ERR_OPERATION_HASH' });
  await refused(t, tweak((m) => void (m.operations[2] = { ...m.operations[2]!, sha256: wrong } as Manifest['operations'][0])), { code: 'ERR_OPERATION_HASH' });
  await refused(t, tweak((m) => void (m.blobs[0]!.dictSha256 = wrong)), { code: 'ERR_SOURCE_HASH' });
  await refused(t, tweak((m) => void (m.target.sha256 = wrong)), { code: 'ERR_TARGET_HASH' });
  await refused(t, tweak((m) => void (m.source!.sha256 = wrong)), { code: 'ERR_SOURCE_MISMATCH' });
  await refused(t, tweak((m) => void (m.blobs[0]!.sha256 = wrong)), { code: 'ERR_BLOB_HASH' });
});

// ---- Kinds ------------------------------------------------------------------------

test('SOURCE_COPY, PATCH or a source in a full payload are refused', async (t) => {
  const full = (ops: unknown[], blobs: ReturnType<typeof blobOf>[] = [], data: Buffer[] = []) =>
    craftPayload(trust, manifestOf({ kind: 'full', target: { bytes: TARGET }, blobs, operations: ops }), data);
  await refused(t, full([{ op: 'SOURCE_COPY', src: [[0, TARGET.length]], dst: [[0, TARGET.length]], sha256: sha256Hex(TARGET) }]), {
    code: 'ERR_MANIFEST_INVALID',
    says: /SOURCE_COPY in a full payload/,
  });
  const frame = rawFrame(TARGET);
  await refused(t, full([{ op: 'PATCH', blob: 0, dst: [[0, TARGET.length]], sha256: sha256Hex(TARGET) }], [blobOf(frame, TARGET.length, { extents: [[0, 4096]], source: SOURCE })], [frame]), {
    code: 'ERR_MANIFEST_INVALID',
  });
  const withSource = { ...manifestOf({ kind: 'full', target: { bytes: TARGET }, operations: [{ op: 'REPLACE', blob: 0, dst: [[0, TARGET.length]], sha256: sha256Hex(TARGET) }], blobs: [blobOf(frame, TARGET.length)] }), source: { version: '1.0.0', size: SOURCE.length, sha256: sha256Hex(SOURCE) } };
  await refused(t, craftPayload(trust, withSource, [frame]), { code: 'ERR_MANIFEST_INVALID' });
  const deltaWithout = { ...manifestOf({ kind: 'delta', target: { bytes: TARGET }, operations: zeros(TARGET.length) }), target: { size: TARGET.length, sha256: sha256Hex(TARGET) } };
  await refused(t, craftPayload(trust, deltaWithout), { code: 'ERR_MANIFEST_INVALID' });
});

test('PATCH without a dictionary blob, and REPLACE with one, are refused', async (t) => {
  const frame = rawFrame(TARGET);
  const op = (kind: 'PATCH' | 'REPLACE') => [{ op: kind, blob: 0, dst: [[0, TARGET.length]], sha256: sha256Hex(TARGET) }];
  await refused(t, craftPayload(trust, manifestOf({ source: { bytes: SOURCE }, target: { bytes: TARGET }, blobs: [blobOf(frame, TARGET.length)], operations: op('PATCH') }), [frame]), {
    code: 'ERR_MANIFEST_INVALID',
    says: /PATCH needs a blob with a source dictionary/,
  });
  await refused(
    t,
    craftPayload(trust, manifestOf({ source: { bytes: SOURCE }, target: { bytes: TARGET }, blobs: [blobOf(frame, TARGET.length, { extents: [[0, 4096]], source: SOURCE })], operations: op('REPLACE') }), [frame]),
    { code: 'ERR_MANIFEST_INVALID', says: /REPLACE needs a blob without/ },
  );
  // A dictionary above 2 MiB (the decoder's heap holds no more).
  const bigDict: Extent[] = [[0, 2 * MiB + 4096]];
  await refused(
    t,
    craftPayload(
      trust,
      manifestOf({
        source: { size: 4 * MiB, sha256: sha256Hex(SOURCE) },
        target: { bytes: TARGET },
        blobs: [{ ...blobOf(frame, TARGET.length), dict: bigDict, dictSha256: sha256Hex(SOURCE) }],
        operations: op('PATCH'),
      }),
      [frame],
    ),
    { code: 'ERR_MANIFEST_INVALID', says: /dictionary is/ },
  );
});

// ---- Sizes ------------------------------------------------------------------------

test('sizes beyond 2^32 that are consistent pass every check (nothing truncates to 32 bits)', async (t) => {
  // 2^32 + 4 KiB of ZERO operations: valid. Stop at the accept hook so nothing is written.
  const size = TWO_32 + 4096;
  let seen: ManifestView | undefined;
  const err = await refused(t, craftPayload(trust, zeroManifest(size, zeros(size))), {
    code: 'ERR_WRONG_BOARD',
    declaredSize: 0,
    options: {
      accept: (verified) => {
        seen = verified.manifest;
        throw new TandemError('ERR_WRONG_BOARD', 'test: stop after verification');
      },
    },
  });
  t.regex(err.message, /stop after verification/);
  t.is(seen?.target.size, size);
  t.is(seen?.operations.length, 2049);
});

test('sizes beyond 2^32 that are inconsistent are refused', async (t) => {
  const size = TWO_32 + 4096;
  const ops = zeros(size);
  // Shift the last operation 2^32 further: a gap, and an extent past the end.
  ops[ops.length - 1] = { op: 'ZERO', dst: [[TWO_32 * 2, 4096]] };
  await refused(t, craftPayload(trust, zeroManifest(size, ops)), { code: 'ERR_MANIFEST_INVALID', declaredSize: 0 });
  // An extent at 2^32 + 2^32 - 4096 would alias 2^32 - 4096 in 32-bit arithmetic.
  const aliased = zeros(TWO_32);
  aliased[aliased.length - 1] = { op: 'ZERO', dst: [[TWO_32 * 2 - MAX_OPERATION_SIZE, MAX_OPERATION_SIZE]] };
  await refused(t, craftPayload(trust, zeroManifest(TWO_32, aliased)), { code: 'ERR_MANIFEST_INVALID', declaredSize: 0 });
});

test('numbers beyond 2^53 in the signed manifest are refused by the safe parser', async (t) => {
  const base = zeroManifest(4096, [{ op: 'ZERO', dst: [[0, 4096]] }]);
  const json = canonicalBytes({ ...base, dataSize: 123456789 }).toString();
  for (const unsafe of ['9007199254740992', '9007199254740993', '18446744073709551616', '1e300', `1${'0'.repeat(400)}`]) {
    const text = Buffer.from(json.replace('123456789', unsafe));
    await refused(t, craftPayload(trust, undefined, [], { manifestBytes: text }), { code: 'ERR_JSON_UNSAFE_NUMBER', declaredSize: 0 });
  }
  // In an extent, too.
  const extentJson = canonicalBytes(base).toString().replace('[[0,4096]]', '[[0,9007199254740993]]');
  await refused(t, craftPayload(trust, undefined, [], { manifestBytes: Buffer.from(extentJson) }), { code: 'ERR_JSON_UNSAFE_NUMBER', declaredSize: 0 });
  // 2^53 - 1 is a safe integer but no image is that large: the extent checks refuse it.
  await refused(t, craftPayload(trust, zeroManifest(4096, [{ op: 'ZERO', dst: [[0, Number.MAX_SAFE_INTEGER]] }])), { code: 'ERR_MANIFEST_INVALID', declaredSize: 0 });
});

// ---- The manifest's bytes ----------------------------------------------------------

test('a manifest above the size limit is refused from the header, before a byte of it is read', async (t) => {
  // Only the header is there: reading the manifest would fail as truncated instead.
  for (const [stored, raw] of [
    [MANIFEST_MAX_BYTES + 1, 100],
    [100, MANIFEST_MAX_BYTES + 1],
    [2 ** 40, 100],
    [100, 2 ** 53],
  ]) {
    await refused(t, encodeHeader(stored!, 100, raw!), { code: 'ERR_MANIFEST_TOO_LARGE', declaredSize: 0 });
  }
  const header = encodeHeader(100, 100, 100);
  header.writeBigUInt64BE(2n ** 64n - 1n, 16);
  await refused(t, header, { code: 'ERR_MANIFEST_TOO_LARGE', declaredSize: 0 });
});

test.serial('a stored manifest that decodes beyond its declared length, or is a bomb, is refused', async (t) => {
  const json = canonicalBytes(zeroManifest(4096, [{ op: 'ZERO', dst: [[0, 4096]] }]));
  await refused(t, craftPayload(trust, undefined, [], { manifestBytes: json, manifestRawLength: json.length - 1 }), { code: 'ERR_MANIFEST_INVALID', declaredSize: 0 });
  await refused(t, craftPayload(trust, undefined, [], { manifestBytes: json, manifestRawLength: json.length + 1 }), { code: 'ERR_MANIFEST_INVALID', declaredSize: 0 });
  // 8,192 RLE blocks: 32 KiB that would decode to 1 GiB, against a declared 1 MiB.
  const started = performance.now();
  await refused(t, craftPayload(trust, undefined, [], { storedManifest: rleFrame(0x20, 8192), manifestRawLength: MiB }), {
    code: 'ERR_MANIFEST_INVALID',
    declaredSize: 0,
    rssBudget: 64 * MiB,
  });
  t.true(performance.now() - started < 3000);
  // A manifest frame with a 16 MiB window.
  await refused(t, craftPayload(trust, undefined, [], { storedManifest: rawFrame(json, { windowLog: 24 }), manifestRawLength: json.length }), {
    code: 'ERR_MANIFEST_INVALID',
    says: /window/,
    declaredSize: 0,
  });
  // The same JSON in a hand-made frame is fine: only the decoded bytes matter.
  const target = join(dir, `ok-${seq++}`);
  await applyPayload(chunksOf(craftPayload(trust, undefined, [], { storedManifest: rawFrame(json), manifestRawLength: json.length })), { target, trust: trust.trust });
  t.is((await stat(target)).size, 4096);
});

test('non-canonical manifest bytes are refused even with a valid signature', async (t) => {
  const manifest = zeroManifest(4096, [{ op: 'ZERO', dst: [[0, 4096]] }]);
  const canonical = canonicalBytes(manifest).toString();
  const variants = [
    JSON.stringify(manifest, null, 1), // whitespace
    `${canonical} `, // trailing whitespace
    JSON.stringify(Object.fromEntries(Object.entries(manifest).reverse())), // key order
    canonical.replace('"test-board"', '"test\\u002dboard"'), // an escape that decodes to the same string
    canonical.replace('"blockSize":4096', '"blockSize":4096.0'),
    canonical.replace('"blockSize":4096', '"blockSize":4.096e3'),
  ];
  for (const text of variants) {
    t.not(text, canonical);
    await refused(t, craftPayload(trust, undefined, [], { manifestBytes: Buffer.from(text) }), { code: 'ERR_MANIFEST_INVALID', says: /canonical/, declaredSize: 0 });
  }
});

test('duplicate keys, prototype keys and unknown fields in the signed manifest are refused', async (t) => {
  const canonical = canonicalBytes(zeroManifest(4096, [{ op: 'ZERO', dst: [[0, 4096]] }])).toString();
  const cases: [string, ErrorCode][] = [
    [canonical.replace('"board":"test-board"', '"board":"test-board","board":"other-board"'), 'ERR_JSON_DUPLICATE_KEY'],
    [canonical.replace('{"blobs"', '{"__proto__":{},"blobs"'), 'ERR_JSON_FORBIDDEN_KEY'],
    [canonical.replace('{"blobs"', '{"admin":true,"blobs"'), 'ERR_MANIFEST_INVALID'],
    [canonical.replace('"blockSize":4096,', ''), 'ERR_MANIFEST_INVALID'],
    [canonical.replace('"blockSize":4096', '"blockSize":512'), 'ERR_MANIFEST_INVALID'],
    [canonical.replace('"formatVersion":1', '"formatVersion":2'), 'ERR_MANIFEST_INVALID'],
    [canonical.replace('"ZERO"', '"ERASE"'), 'ERR_MANIFEST_INVALID'],
    ['[]', 'ERR_MANIFEST_INVALID'],
    ['{', 'ERR_JSON_SYNTAX'],
    ['['.repeat(100) + ']'.repeat(100), 'ERR_JSON_TOO_DEEP'],
  ];
  for (const [text, code] of cases) {
    await refused(t, craftPayload(trust, undefined, [], { manifestBytes: Buffer.from(text) }), { code, declaredSize: 0 });
  }
});

test('a delta whose operations read source bytes is refused without the source slot', async (t) => {
  const { payload } = await planPayload(trust, plan([{ op: 'SOURCE_COPY', src: [[8192, 16384]], dst: [[0, 16384]] }, { op: 'ZERO', dst: [[16384, TARGET.length - 16384]] }], { target: Buffer.concat([TARGET.subarray(0, 16384), Buffer.alloc(TARGET.length - 16384)]) }));
  const err = await t.throwsAsync(applyPayload(chunksOf(payload), { target: join(dir, `nosource-${seq++}`), trust: trust.trust }));
  t.true(isTandemError(err, 'ERR_SOURCE_MISMATCH'), String(err));
});

test('the hostile cases leave the PRNG-built fixtures as they were', (t) => {
  // Sanity: the fixtures the cases above hash against are what they were built from.
  t.is(TARGET.length, 65536);
  t.true(bytesAt(TARGET, [[0, 16384]]).equals(SOURCE.subarray(8192, 8192 + 16384)));
});
