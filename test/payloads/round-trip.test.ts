/**
 * Round trips (issue 3, tests): for seeded random images and random edits,
 * applying delta(old, new) to old gives new byte for byte, and so does the full
 * payload of new. A failure prints its seed; rerun it with TANDEM_TEST_SEED.
 */
import test, { type ExecutionContext } from 'ava';
import { createReadStream } from 'node:fs';
import { mkdtemp, readFile, rm, stat, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { applyPayload } from '../../payloads/apply.ts';
import { createPayload } from '../../payloads/generate.ts';
import { makeTrust } from '../helpers/trust.ts';
import { baseSeed, editImage, Prng, randomImage } from './random-images.ts';

const trust = makeTrust();
const SEED = baseSeed();
const MAX_SIZE = 3 * 1024 * 1024;
let dir = '';

test.before(async () => {
  dir = await mkdtemp(join(tmpdir(), 'tandem-round-trip-'));
});
test.after.always(async () => {
  await rm(dir, { recursive: true, force: true });
});

interface Case {
  name: string;
  old: Buffer;
  new: Buffer;
  log: string[];
  /** Bytes the target slot holds before the apply (a previous release's leftovers), or none: no file. */
  targetBefore?: Buffer;
}

async function roundTrip(t: ExecutionContext, c: Case, label: string): Promise<void> {
  const at = join(dir, label);
  const oldPath = `${at}.old`;
  const newPath = `${at}.new`;
  await writeFile(oldPath, c.old);
  await writeFile(newPath, c.new);
  const context = `${c.name} (seed ${SEED}; old ${c.old.length} B, new ${c.new.length} B; edits: ${c.log.join('; ')})`;
  const common = { version: '2.0.0', board: 'test-board', signer: trust.release.privateKey, keyring: trust.keyring, level: 3 };

  const delta = await createPayload({ ...common, image: newPath, source: { path: oldPath, version: '1.0.0' }, out: `${at}.delta` });
  const full = await createPayload({ ...common, image: newPath, out: `${at}.full` });
  t.is(delta.manifest.kind, 'delta', context);
  t.is(full.manifest.kind, 'full', context);
  t.is(full.manifest.operations.filter((op) => op.op === 'SOURCE_COPY').length, 0, context);

  for (const [kind, payload, source] of [
    ['delta', `${at}.delta`, oldPath],
    ['full', `${at}.full`, undefined],
  ] as const) {
    const target = `${at}.${kind}.target`;
    if (c.targetBefore) await writeFile(target, c.targetBefore);
    const result = await applyPayload(createReadStream(payload, { highWaterMark: 37 * 1024 }), {
      target,
      ...(source ? { source } : {}),
      trust: trust.trust,
    });
    t.is(result.bytesWritten, c.new.length, `${kind}: ${context}`);
    const written = await readFile(target);
    // The slot keeps whatever lies beyond the image; the image itself must be exact.
    t.is(written.length, Math.max(c.new.length, c.targetBefore?.length ?? 0), `${kind}: ${context}`);
    t.true(written.subarray(0, c.new.length).equals(c.new), `${kind} payload did not reproduce the image: ${context}`);
    t.true((await readFile(oldPath)).equals(c.old), `${kind}: the source slot changed: ${context}`);
  }
  t.log(`${c.name}: delta ${(await stat(`${at}.delta`)).size} B (${delta.manifest.operations.length} ops), full ${(await stat(`${at}.full`)).size} B`);
}

const RANDOM_CASES = 10;

for (let i = 0; i < RANDOM_CASES; i++) {
  test(`random image and random edits #${i}`, async (t) => {
    const rng = new Prng(SEED + i);
    t.log(`seed ${SEED} case ${i}`);
    const size = rng.pick([rng.range(1, 8191), rng.range(8192, 512 * 1024), rng.range(512 * 1024, MAX_SIZE)]);
    const old = randomImage(rng, size);
    const edited = editImage(rng, old, rng.range(1, 12), MAX_SIZE);
    const targetBefore = rng.int(3) === 0 ? rng.bytes(rng.range(1, MAX_SIZE)) : undefined;
    await roundTrip(t, { name: `case ${i}`, old, new: edited.image, log: edited.log, ...(targetBefore ? { targetBefore } : {}) }, `random-${i}`);
  });
}

// The edges every random run might miss: each one shape of change, at sizes off the block grid.
const EDGE_CASES: { name: string; make: (rng: Prng) => Omit<Case, 'name' | 'log'> }[] = [
  {
    name: 'identical images',
    make: (rng) => {
      const old = randomImage(rng, 300_001);
      return { old, new: Buffer.from(old) };
    },
  },
  {
    name: 'one byte changed in the middle of a block',
    make: (rng) => {
      const old = randomImage(rng, 256 * 1024);
      const next = Buffer.from(old);
      next[100_003] = (next[100_003]! + 1) & 0xff;
      return { old, new: next };
    },
  },
  {
    name: 'data inserted at an unaligned offset shifts everything after it',
    make: (rng) => {
      const old = Buffer.concat([rng.bytes(700_000), Buffer.alloc(50_000), rng.bytes(300_000)]);
      return { old, new: Buffer.concat([old.subarray(0, 12_345), rng.bytes(777), old.subarray(12_345)]) };
    },
  },
  {
    name: 'a region zeroed and blocks repeated many times',
    make: (rng) => {
      const old = rng.bytes(1024 * 1024);
      const next = Buffer.from(old);
      next.fill(0, 10_000, 400_001);
      for (let b = 500 * 1024; b < 900 * 1024; b += 4096) old.copy(next, b, 0, 4096);
      return { old, new: next };
    },
  },
  {
    name: 'the new image is much smaller and not a multiple of 4096',
    make: (rng) => {
      const old = randomImage(rng, 2 * 1024 * 1024);
      return { old, new: Buffer.concat([old.subarray(4096, 204_800), rng.bytes(13)]) };
    },
  },
  {
    name: 'the new image is much larger than the source',
    make: (rng) => {
      const old = randomImage(rng, 40_000);
      return { old, new: Buffer.concat([old, randomImage(rng, 2_500_000), old.subarray(0, 4095)]) };
    },
  },
  {
    name: 'one-byte images',
    make: () => ({ old: Buffer.from([7]), new: Buffer.from([9]) }),
  },
  {
    name: 'an all-zero image from a random one, into a slot full of garbage',
    make: (rng) => ({ old: rng.bytes(100_000), new: Buffer.alloc(3 * 4096 + 1), targetBefore: rng.bytes(70_000) }),
  },
  {
    name: 'an image larger than one 2 MiB operation of literal data, over a larger slot',
    make: (rng) => ({ old: rng.bytes(4096), new: rng.bytes(2 * 1024 * 1024 + 4097), targetBefore: rng.bytes(3 * 1024 * 1024) }),
  },
];

EDGE_CASES.forEach(({ name, make }, i) => {
  test(`edge: ${name}`, async (t) => {
    const rng = new Prng(SEED ^ (0x5eed0000 + i));
    t.log(`seed ${SEED}`);
    await roundTrip(t, { name, log: [name], ...make(rng) }, `edge-${i}`);
  });
});
