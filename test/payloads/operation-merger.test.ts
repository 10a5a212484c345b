/**
 * Runs merged into operations (payloads/operation-merger.ts and the
 * generator): an operation writes at most its size limit and 512 extents,
 * its sha256 covers its output in dst order, and a generated payload with
 * merged operations applies byte-exact, with operations far fewer than runs.
 */
import test from 'ava';
import { createHash } from 'node:crypto';
import { createReadStream } from 'node:fs';
import { mkdtemp, readFile, rm, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { isTandemError } from '../../shared/errors.ts';
import type { Operation } from '../../shared/schemas/manifest.ts';
import { applyPayload } from '../../payloads/apply.ts';
import { createPayload } from '../../payloads/generate.ts';
import { OperationMerger } from '../../payloads/operation-merger.ts';
import { makeTrust } from '../helpers/trust.ts';
import { Prng } from './random-images.ts';

const trust = makeTrust();
let dir = '';

test.before(async () => {
  dir = await mkdtemp(join(tmpdir(), 'tandem-merge-'));
});
test.after.always(async () => {
  await rm(dir, { recursive: true, force: true });
});

const written = (op: Operation): number => op.dst.reduce((n, [, l]) => n + l, 0);

test('runs merge up to the size limit, contiguous extents join, the hash covers the output in order', (t) => {
  const ops: Operation[] = [];
  const merger = new OperationMerger('SOURCE_COPY', (op) => ops.push(op), 16384);
  const a = Buffer.alloc(4096, 1);
  const b = Buffer.alloc(8192, 2);
  const c = Buffer.alloc(8192, 3);
  merger.add([0, 4096], [a], [[100, 4096]]);
  merger.add([4096, 8192], [b], [[4196, 4096], [40000, 4096]]); // dst and first src extent continue
  merger.add([20000, 8192], [c], [[0, 8192]]); // 20,480 bytes: a new operation
  merger.close();
  t.is(ops.length, 2);
  t.deepEqual(ops[0], {
    op: 'SOURCE_COPY',
    src: [
      [100, 8192],
      [40000, 4096],
    ],
    dst: [[0, 12288]],
    sha256: createHash('sha256').update(a).update(b).digest('hex'),
  });
  t.deepEqual(ops[1], { op: 'SOURCE_COPY', src: [[0, 8192]], dst: [[20000, 8192]], sha256: createHash('sha256').update(c).digest('hex') });
});

test('an operation holds at most 512 dst extents, and blob operations never span two blobs', (t) => {
  const zeros: Operation[] = [];
  const z = new OperationMerger('ZERO', (op) => zeros.push(op));
  for (let i = 0; i < 1000; i++) z.add([i * 8192, 4096], []);
  z.close();
  t.deepEqual(
    zeros.map((op) => op.dst.length),
    [512, 488],
  );
  t.false(zeros.some((op) => 'sha256' in op));

  const replaces: Operation[] = [];
  const r = new OperationMerger('REPLACE', (op) => replaces.push(op));
  r.add([0, 10], [Buffer.alloc(10)], [], 0);
  r.add([20, 10], [Buffer.alloc(10)], [], 0);
  r.add([40, 10], [Buffer.alloc(10)], [], 1);
  r.close();
  t.deepEqual(
    replaces.map((op) => [op.op === 'REPLACE' && op.blob, op.dst]),
    [
      [
        0,
        [
          [0, 10],
          [20, 10],
        ],
      ],
      [1, [[40, 10]]],
    ],
  );
});

/** Alternating literal, copied, zero and repeated runs: one run of each kind every 12–40 KiB. */
async function alternatingImages(prng: Prng): Promise<{ old: string; next: string; image: Buffer }> {
  const old = prng.bytes(1024 * 1024);
  const parts: Buffer[] = [];
  for (let i = 0; i < 60; i++) {
    parts.push(prng.bytes(prng.range(1, 3) * 4096));
    parts.push(old.subarray(i * 16384, i * 16384 + prng.range(1, 4) * 4096));
    parts.push(Buffer.alloc(prng.range(1, 2) * 4096));
    if (i > 0) parts.push(parts[0]!.subarray(0, 4096));
  }
  const image = Buffer.concat(parts);
  const name = `images-${prng.seed}`;
  await writeFile(join(dir, `${name}-old.img`), old);
  await writeFile(join(dir, `${name}-new.img`), image);
  return { old: join(dir, `${name}-old.img`), next: join(dir, `${name}-new.img`), image };
}

test('a generated delta merges its runs into few operations within the limits, and applies byte-exact', async (t) => {
  const { old, next, image } = await alternatingImages(new Prng(5));
  const common = { image: next, source: { path: old, version: '1.0.0' }, version: '1.1.0', board: 'test-board', signer: trust.release.privateKey, keyring: trust.keyring, level: 3 };
  for (const maxOperationSize of [undefined, 8192]) {
    const out = join(dir, `delta-${maxOperationSize ?? 'default'}`);
    const delta = await createPayload({ ...common, out, ...(maxOperationSize ? { maxOperationSize } : {}) });
    const ops = delta.manifest.operations;
    const limit = maxOperationSize ?? 2 * 1024 * 1024;
    t.true(
      ops.every((op) => written(op) <= limit && op.dst.length <= 512),
      `an operation over ${limit} bytes`,
    );
    // 60 × 4 runs; merged, one operation per kind (the whole image is under 2 MiB).
    if (maxOperationSize === undefined) t.is(ops.length, new Set(ops.map((op) => op.op)).size);
    else t.true(ops.length >= image.length / 8192);
    // TARGET_COPY operations come after every other.
    const kinds = ops.map((op) => op.op);
    t.true(kinds.lastIndexOf('TARGET_COPY') === -1 || kinds.indexOf('TARGET_COPY') > Math.max(kinds.lastIndexOf('REPLACE'), kinds.lastIndexOf('SOURCE_COPY'), kinds.lastIndexOf('ZERO'), kinds.lastIndexOf('PATCH')));
    const target = join(dir, `slot-${maxOperationSize ?? 'default'}`);
    await applyPayload(createReadStream(out), { target, source: old, trust: trust.trust });
    t.true((await readFile(target)).subarray(0, image.length).equals(image));
  }
});

test('maxOperationSize outside 4 KiB … 2 MiB is refused', async (t) => {
  const { next } = await alternatingImages(new Prng(6));
  for (const maxOperationSize of [4095, 2 * 1024 * 1024 + 1, 8192.5]) {
    const err = await t.throwsAsync(
      createPayload({ image: next, version: '1.1.0', board: 'test-board', signer: trust.release.privateKey, keyring: trust.keyring, out: join(dir, 'refused'), maxOperationSize }),
    );
    t.true(isTandemError(err, 'ERR_INVALID_ARGUMENT'), String(err));
  }
});
