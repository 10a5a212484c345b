/**
 * Resume (issue 3, tests): with a checkpoint after every operation, stop the
 * apply right after checkpoint k (an AbortController fired from onCheckpoint),
 * then resume from that checkpoint with a stream that starts at its
 * payloadOffset (what an HTTP Range would give). For every k the slot must end
 * byte-identical to an uninterrupted run, and the resumed run must report the
 * same later checkpoints.
 */
import test, { type ExecutionContext } from 'ava';
import { createReadStream } from 'node:fs';
import { copyFile, mkdtemp, readFile, rm, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { isTandemError } from '../../shared/errors.ts';
import { applyPayload, resumePayload, type ApplyOptions, type Checkpoint } from '../../payloads/apply.ts';
import { createPayload } from '../../payloads/generate.ts';
import { planPayload } from '../helpers/craft-payload.ts';
import { makeTrust } from '../helpers/trust.ts';
import { baseSeed, Prng, randomImage } from './random-images.ts';

const SEED = baseSeed();
const trust = makeTrust();
let dir = '';
let seq = 0;

interface Fixture {
  name: string;
  payload: string;
  source?: string;
  image: Buffer;
  /** What the target slot holds before the first apply: leftovers of an older release. */
  garbage: string;
}

const fixtures: Fixture[] = [];

test.before(async () => {
  dir = await mkdtemp(join(tmpdir(), 'tandem-resume-'));
  const rng = new Prng(SEED);
  const old = randomImage(rng, 700 * 1024);
  // Alternating runs (literal, copied from the source, zero, repeated), cut into operations of at most
  // 8 KiB, and literal runs share one blob: resumes land at the start, the middle and the end of a blob.
  const parts: Buffer[] = [];
  // About 15 operations: each checkpoint costs an fdatasync, and every one is resumed from.
  for (let i = 0; i < 5; i++) {
    parts.push(rng.bytes(rng.range(1, 6) * 4096 + (i === 4 ? 123 : 0)));
    parts.push(old.subarray(i * 65536, i * 65536 + rng.range(1, 4) * 4096));
    parts.push(Buffer.alloc(rng.range(1, 3) * 4096));
    if (i > 0) parts.push(parts[0]!.subarray(0, 4096));
  }
  const image = Buffer.concat(parts);
  await writeFile(join(dir, 'old.img'), old);
  await writeFile(join(dir, 'new.img'), image);
  await writeFile(join(dir, 'garbage.img'), rng.bytes(image.length + 5000));
  const common = { image: join(dir, 'new.img'), version: '2.0.0', board: 'test-board', signer: trust.release.privateKey, keyring: trust.keyring, level: 3, maxOperationSize: 8192 };
  await createPayload({ ...common, source: { path: join(dir, 'old.img'), version: '1.0.0' }, out: join(dir, 'delta') });
  await createPayload({ ...common, out: join(dir, 'full') });
  fixtures.push({ name: 'delta', payload: join(dir, 'delta'), source: join(dir, 'old.img'), image, garbage: join(dir, 'garbage.img') });
  fixtures.push({ name: 'full', payload: join(dir, 'full'), image, garbage: join(dir, 'garbage.img') });

  // Several small blobs, each spanning several operations, PATCH included: what the generator makes
  // only for images too large for a quick test.
  const target = Buffer.concat([rng.bytes(40_000), old.subarray(0, 10_000), rng.bytes(20_000), Buffer.alloc(9000), rng.bytes(50_001)]);
  target.copy(target, 79_000, 0, 5000); // what the TARGET_COPY below copies
  const { payload } = await planPayload(trust, {
    target,
    source: old,
    ops: [
      { op: 'REPLACE', dst: [[0, 10_000]], blob: 0 },
      { op: 'REPLACE', dst: [[10_000, 10_000]], blob: 0 },
      { op: 'SOURCE_COPY', src: [[0, 10_000]], dst: [[40_000, 10_000]] },
      { op: 'REPLACE', dst: [[20_000, 20_000]], blob: 0 },
      { op: 'REPLACE', dst: [[50_000, 20_000]], blob: 1 },
      { op: 'ZERO', dst: [[70_000, 9000]] },
      { op: 'TARGET_COPY', src: [[0, 5000]], dst: [[79_000, 5000]] },
      { op: 'PATCH', dst: [[84_000, 25_000]], blob: 2 },
      { op: 'PATCH', dst: [[109_000, 20_001]], blob: 2 },
    ],
    dicts: { 2: [[100_000, 60_000]] },
  });
  await writeFile(join(dir, 'crafted'), payload);
  fixtures.push({ name: 'crafted multi-blob delta', payload: join(dir, 'crafted'), source: join(dir, 'old.img'), image: target, garbage: join(dir, 'garbage.img') });
});
test.after.always(async () => {
  await rm(dir, { recursive: true, force: true });
});

function optionsFor(f: Fixture, target: string): ApplyOptions {
  return { target, ...(f.source ? { source: f.source } : {}), trust: trust.trust, checkpointEveryBytes: 0 };
}

/** A fresh target slot holding leftovers, as an inactive slot does. */
async function freshTarget(f: Fixture): Promise<string> {
  const target = join(dir, `target-${seq++}`);
  await copyFile(f.garbage, target);
  return target;
}

async function imageOf(target: string, f: Fixture): Promise<Buffer> {
  return (await readFile(target)).subarray(0, f.image.length);
}

/** Applies until checkpoint `stopAfter` (0-based) has been reported, then aborts; returns the checkpoints seen. */
async function applyUntil(t: ExecutionContext, f: Fixture, target: string, stopAfter: number): Promise<void> {
  const controller = new AbortController();
  let seen = 0;
  let err: unknown;
  try {
    await applyPayload(createReadStream(f.payload), {
      ...optionsFor(f, target),
      signal: controller.signal,
      onCheckpoint: () => {
        if (seen++ === stopAfter) controller.abort();
      },
    });
  } catch (caught) {
    // The signal's reason, a DOMException (not an Error subclass on Node 20), or its TandemError form.
    err = caught;
  }
  t.true((err as { name?: string } | undefined)?.name === 'AbortError' || isTandemError(err, 'ERR_ABORTED'), `stopping after checkpoint ${stopAfter}: ${String(err)}`);
}

for (const name of ['delta', 'full', 'crafted multi-blob delta']) {
  test(`${name}: resuming from every checkpoint gives the uninterrupted result`, async (t) => {
    t.log(`seed ${SEED}`);
    const f = fixtures.find((x) => x.name === name)!;
    const checkpoints: Checkpoint[] = [];
    let prelude: Buffer | undefined;
    const whole = await freshTarget(f);
    const result = await applyPayload(createReadStream(f.payload), {
      ...optionsFor(f, whole),
      onCheckpoint: (checkpoint, verified) => {
        checkpoints.push(checkpoint);
        prelude = verified.prelude.raw;
      },
    });
    t.true((await imageOf(whole, f)).equals(f.image), 'the uninterrupted run is wrong');
    // checkpointEveryBytes 0: one checkpoint after every operation, offsets never going back.
    t.is(checkpoints.length, result.manifest.operations.length);
    t.true(checkpoints.length >= 8, `only ${checkpoints.length} operations: the fixture does not exercise resume`);
    checkpoints.forEach((c, i) => t.is(c.nextOp, i + 1));
    for (let i = 1; i < checkpoints.length; i++) t.true(checkpoints[i]!.payloadOffset >= checkpoints[i - 1]!.payloadOffset);
    t.is(checkpoints.at(-1)!.payloadOffset, (await readFile(f.payload)).length);
    t.log(`${name}: ${checkpoints.length} checkpoints, ${result.manifest.blobs.length} blob(s)`);

    for (let k = 0; k < checkpoints.length; k++) {
      const checkpoint = checkpoints[k]!;
      const target = await freshTarget(f);
      await applyUntil(t, f, target, k);
      const later: Checkpoint[] = [];
      const resumed = await resumePayload(prelude!, checkpoint, createReadStream(f.payload, { start: checkpoint.payloadOffset }), {
        ...optionsFor(f, target),
        onCheckpoint: (c) => void later.push(c),
      });
      t.true((await imageOf(target, f)).equals(f.image), `resume from checkpoint ${k} (${JSON.stringify(checkpoint)}) gave other bytes`);
      t.deepEqual(later, checkpoints.slice(k + 1), `resume from checkpoint ${k} reported other checkpoints`);
      t.is(resumed.operations, checkpoints.length - checkpoint.nextOp);
      await rm(target);
    }
  });

  test(`${name}: resuming from an older checkpoint than the slot's state (crash before the checkpoint was saved) still converges`, async (t) => {
    const f = fixtures.find((x) => x.name === name)!;
    const checkpoints: Checkpoint[] = [];
    let prelude: Buffer | undefined;
    await applyPayload(createReadStream(f.payload), {
      ...optionsFor(f, await freshTarget(f)),
      onCheckpoint: (c, v) => {
        checkpoints.push(c);
        prelude = v.prelude.raw;
      },
    });
    for (const [stateAt, resumeFrom] of [
      [2, 0],
      [checkpoints.length - 1, 1],
      [Math.floor(checkpoints.length / 2), Math.floor(checkpoints.length / 2) - 2],
    ] as const) {
      const target = await freshTarget(f);
      await applyUntil(t, f, target, stateAt);
      const checkpoint = checkpoints[resumeFrom]!;
      await resumePayload(prelude!, checkpoint, createReadStream(f.payload, { start: checkpoint.payloadOffset }), optionsFor(f, target));
      t.true((await imageOf(target, f)).equals(f.image), `state after ${stateAt}, resumed from ${resumeFrom}`);
    }
  });
}

test('a checkpoint whose offset does not match its operation is refused with ERR_CHECKPOINT', async (t) => {
  const f = fixtures.find((x) => x.name === 'crafted multi-blob delta')!;
  const checkpoints: Checkpoint[] = [];
  let prelude: Buffer | undefined;
  await applyPayload(createReadStream(f.payload), {
    ...optionsFor(f, await freshTarget(f)),
    onCheckpoint: (c, v) => {
      checkpoints.push(c);
      prelude = v.prelude.raw;
    },
  });
  const mid = checkpoints[4]!;
  const target = await freshTarget(f);
  const before = await readFile(target);
  for (const bad of [
    { ...mid, payloadOffset: mid.payloadOffset + 1 },
    { ...mid, payloadOffset: mid.payloadOffset - 1 },
    { ...mid, payloadOffset: 0 },
    { nextOp: mid.nextOp, payloadOffset: checkpoints.at(-1)!.payloadOffset },
    { nextOp: 0, payloadOffset: mid.payloadOffset + 1 },
  ]) {
    const err = await t.throwsAsync(resumePayload(prelude!, bad, createReadStream(f.payload, { start: Math.max(0, bad.payloadOffset) }), optionsFor(f, target)));
    t.true(isTandemError(err, 'ERR_CHECKPOINT'), `${JSON.stringify(bad)}: ${String(err)}`);
  }
  t.true((await readFile(target)).equals(before), 'a refused checkpoint wrote to the slot');
});

test('a checkpoint naming an operation outside the payload is refused with ERR_CHECKPOINT, not a crash', async (t) => {
  const f = fixtures.find((x) => x.name === 'crafted multi-blob delta')!;
  let prelude: Buffer | undefined;
  let last: Checkpoint | undefined;
  await applyPayload(createReadStream(f.payload), {
    ...optionsFor(f, await freshTarget(f)),
    onCheckpoint: (c, v) => {
      last = c;
      prelude = v.prelude.raw;
    },
  });
  const end = last!.payloadOffset;
  const target = await freshTarget(f);
  const before = await readFile(target);
  for (const bad of [
    { nextOp: -1, payloadOffset: end },
    { nextOp: -1, payloadOffset: 0 },
    { nextOp: 1.5, payloadOffset: end },
    { nextOp: Number.NaN, payloadOffset: end },
    { nextOp: last!.nextOp + 1, payloadOffset: end },
    { nextOp: 2 ** 53, payloadOffset: end },
  ]) {
    const err = await t.throwsAsync(resumePayload(prelude!, bad, createReadStream(f.payload, { start: end }), optionsFor(f, target)));
    t.true(isTandemError(err, 'ERR_CHECKPOINT'), `${JSON.stringify(bad)}: ${String(err)}`);
  }
  t.true((await readFile(target)).equals(before), 'a refused checkpoint wrote to the slot');
});

test('a resume stream that does not start where the checkpoint says is caught by the blob hash', async (t) => {
  const f = fixtures.find((x) => x.name === 'crafted multi-blob delta')!;
  const checkpoints: Checkpoint[] = [];
  let prelude: Buffer | undefined;
  const done = await freshTarget(f);
  await applyPayload(createReadStream(f.payload), {
    ...optionsFor(f, done),
    onCheckpoint: (c, v) => {
      checkpoints.push(c);
      prelude = v.prelude.raw;
    },
  });
  const checkpoint = checkpoints[3]!; // the next operation reads blob 1
  for (const shift of [1, -1]) {
    const err = await t.throwsAsync(resumePayload(prelude!, checkpoint, createReadStream(f.payload, { start: checkpoint.payloadOffset + shift }), optionsFor(f, await freshTarget(f))));
    t.true(isTandemError(err) && ['ERR_BLOB_HASH', 'ERR_PAYLOAD_TRUNCATED'].includes(err.code), `shift ${shift}: ${String(err)}`);
  }
  // A byte appended after the last blob is refused on resume too (into a slot in the checkpoint's state).
  const payload = await readFile(f.payload);
  async function* withTrailer() {
    yield payload.subarray(checkpoint.payloadOffset);
    yield Buffer.from([0]);
  }
  const target = join(dir, `target-${seq++}`);
  await copyFile(done, target);
  const err = await t.throwsAsync(resumePayload(prelude!, checkpoint, withTrailer(), optionsFor(f, target)));
  t.true(isTandemError(err, 'ERR_PAYLOAD_TRAILING_DATA'), String(err));
});

test('a stored prelude that was altered on disk is verified again and refused', async (t) => {
  const f = fixtures.find((x) => x.name === 'full')!;
  let prelude: Buffer | undefined;
  let first: Checkpoint | undefined;
  await applyPayload(createReadStream(f.payload), {
    ...optionsFor(f, await freshTarget(f)),
    onCheckpoint: (c, v) => {
      first ??= c;
      prelude = v.prelude.raw;
    },
  });
  for (const at of [3, 50, prelude!.length - 30]) {
    const altered = Buffer.from(prelude!);
    altered[at]! ^= 0x01;
    const err = await t.throwsAsync(resumePayload(altered, first!, createReadStream(f.payload, { start: first!.payloadOffset }), optionsFor(f, await freshTarget(f))));
    t.true(isTandemError(err), String(err));
  }
  const err = await t.throwsAsync(resumePayload(Buffer.concat([prelude!, Buffer.from([0])]), first!, createReadStream(f.payload, { start: first!.payloadOffset }), optionsFor(f, await freshTarget(f))));
  t.true(isTandemError(err), String(err));
});
