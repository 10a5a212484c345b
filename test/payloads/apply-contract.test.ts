/**
 * The apply engine's contract beyond bytes (issue 3, apply engine): it never
 * writes the slot it reads from, refuses a delta for another source before
 * writing anything, leaves the slot alone when the caller's accept hook says
 * no, and reads payloads made by either encoder.
 */
import test, { type ExecutionContext } from 'ava';
import { createReadStream } from 'node:fs';
import { copyFile, link, mkdtemp, readFile, rm, stat, symlink, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { isTandemError, TandemError } from '../../shared/errors.ts';
import { applyPayload, type ApplyOptions, type ApplyProgress } from '../../payloads/apply.ts';
import { createPayload } from '../../payloads/generate.ts';
import { toolTest } from '../helpers/tool-test.ts';
import { makeTrust } from '../helpers/trust.ts';
import { baseSeed, editImage, Prng, randomImage } from './random-images.ts';

const SEED = baseSeed();
const trust = makeTrust();
let dir = '';
let oldImage: Buffer;
let newImage: Buffer;
let seq = 0;
const path = (name: string) => join(dir, name);

test.before(async () => {
  dir = await mkdtemp(join(tmpdir(), 'tandem-apply-contract-'));
  const rng = new Prng(SEED);
  // Random edits may shift everything off the block grid; 64 KiB of random bytes leading both images
  // (never zero, never repeated, unlike randomImage's runs) guarantee the delta reads the source
  // (SOURCE_COPY), which the per-operation source hash test needs.
  const lead = rng.bytes(64 * 1024);
  oldImage = Buffer.concat([lead, randomImage(rng, 900 * 1024)]);
  newImage = Buffer.concat([lead, editImage(rng, oldImage, 6, 1024 * 1024).image]);
  await writeFile(path('old.img'), oldImage);
  await writeFile(path('new.img'), newImage);
  const common = { image: path('new.img'), version: '2.0.0', board: 'test-board', signer: trust.release.privateKey, keyring: trust.keyring, level: 3 };
  const delta = await createPayload({ ...common, source: { path: path('old.img'), version: '1.0.0' }, out: path('delta') });
  await createPayload({ ...common, out: path('full') });
  if (!delta.manifest.operations.some((op) => op.op === 'SOURCE_COPY')) throw new Error(`seed ${SEED}: the delta has no SOURCE_COPY`);
});
test.after.always(async () => {
  await rm(dir, { recursive: true, force: true });
});

async function apply(payload: string, options: Omit<ApplyOptions, 'trust'>) {
  return applyPayload(createReadStream(payload), { trust: trust.trust, ...options });
}

/** A slot holding bytes we can recognize afterwards. */
async function slotWith(bytes: Buffer): Promise<string> {
  const slot = path(`slot-${seq++}`);
  await writeFile(slot, bytes);
  return slot;
}

test('a delta refuses a target that is its source: same path, hard link or symlink', async (t) => {
  t.log(`seed ${SEED}`);
  const source = path(`source-${seq++}`);
  await copyFile(path('old.img'), source);
  const hardLink = path(`hard-${seq++}`);
  const softLink = path(`soft-${seq++}`);
  await link(source, hardLink);
  await symlink(source, softLink);
  for (const target of [source, hardLink, softLink]) {
    const err = await t.throwsAsync(apply(path('delta'), { source, target }));
    t.true(isTandemError(err, 'ERR_TARGET_IS_SOURCE'), `${target}: ${String(err)}`);
    t.true((await readFile(source)).equals(oldImage), 'the source slot was written');
  }
  // Also when the source is given through the link and the target by its real path.
  const err = await t.throwsAsync(apply(path('delta'), { source: softLink, target: source }));
  t.true(isTandemError(err, 'ERR_TARGET_IS_SOURCE'));
  t.true((await readFile(source)).equals(oldImage));
});

test('a delta against the wrong source is refused with ERR_SOURCE_MISMATCH before any write', async (t) => {
  const rng = new Prng(SEED ^ 0xbad);
  const leftovers = rng.bytes(600_000);
  const wrongSources = [
    Buffer.concat([oldImage.subarray(0, 1000), Buffer.from([oldImage[1000]! ^ 1]), oldImage.subarray(1001)]), // one byte off
    oldImage.subarray(0, oldImage.length - 1), // one byte short
    Buffer.concat([oldImage, Buffer.from([0])]), // one byte longer (only the declared size is hashed)
    newImage,
    Buffer.alloc(0),
  ];
  for (const [i, wrong] of wrongSources.entries()) {
    const source = await slotWith(wrong);
    const target = await slotWith(leftovers);
    const before = await stat(target);
    const progress: ApplyProgress[] = [];
    let err: unknown;
    try {
      await apply(path('delta'), { source, target, onProgress: (p) => void progress.push(p) });
    } catch (caught) {
      err = caught;
    }
    if (i === 2) {
      // Extra bytes after the declared source size are not the source's business: this one applies.
      t.is(err, undefined, String(err));
      continue;
    }
    t.true(isTandemError(err, 'ERR_SOURCE_MISMATCH'), `wrong source ${i}: ${String(err)}`);
    t.true((await readFile(target)).equals(leftovers), `wrong source ${i}: the target was written`);
    t.is((await stat(target)).mtimeMs, before.mtimeMs);
    t.false(progress.some((p) => p.phase !== 'source'), `wrong source ${i}: it went past the source check`);
  }
});

test('with the whole-source check off, a wrong source is still caught by the per-operation source hashes', async (t) => {
  const wrong = Buffer.from(oldImage);
  for (let at = 0; at < wrong.length; at += 4096) wrong[at] = wrong[at]! ^ 0xff;
  const source = await slotWith(wrong);
  const target = path(`target-${seq++}`);
  const err = await t.throwsAsync(apply(path('delta'), { source, target, verifySource: false }));
  t.true(isTandemError(err, 'ERR_SOURCE_HASH'), String(err));
  const size = await stat(target).then((s) => s.size, () => 0);
  t.true(size <= newImage.length);
});

test('a delta without a source slot is refused before the target is opened', async (t) => {
  const target = path(`target-${seq++}`);
  const err = await t.throwsAsync(apply(path('delta'), { target }));
  t.true(isTandemError(err, 'ERR_SOURCE_MISMATCH'), String(err));
  await t.throwsAsync(stat(target));
});

test('the accept hook sees the verified manifest and can refuse before anything is written', async (t) => {
  const target = await slotWith(Buffer.from('untouched'));
  const err = await t.throwsAsync(
    apply(path('full'), {
      target,
      accept: (verified) => {
        t.is(verified.manifest.board, 'test-board');
        t.is(verified.manifest.version, '2.0.0');
        t.is(verified.keyId.length, 64);
        throw new TandemError('ERR_WRONG_BOARD', 'This payload is for another board.');
      },
    }),
  );
  t.true(isTandemError(err, 'ERR_WRONG_BOARD'));
  t.is(await readFile(target, 'utf8'), 'untouched');
});

test('progress runs source → apply → verify and ends at the totals', async (t) => {
  const progress: ApplyProgress[] = [];
  await apply(path('delta'), { source: path('old.img'), target: path(`target-${seq++}`), onProgress: (p) => void progress.push(p) });
  const phases = progress.map((p) => p.phase).filter((p, i, all) => p !== all[i - 1]);
  t.deepEqual(phases, ['source', 'apply', 'verify']);
  for (const phase of ['source', 'apply', 'verify'] as const) {
    const of = progress.filter((p) => p.phase === phase);
    for (let i = 1; i < of.length; i++) t.true(of[i]!.done >= of[i - 1]!.done);
    t.is(of.at(-1)!.done, of.at(-1)!.total);
  }
  t.is(progress.at(-1)!.total, newImage.length);
});

function encoderTest(encoder: 'wasm' | 'native'): void {
  const title = `payloads from the ${encoder} encoder apply byte-exact (full and delta)`;
  const fn = async (t: ExecutionContext): Promise<void> => {
    const common = { image: path('new.img'), version: '2.0.0', board: 'test-board', signer: trust.release.privateKey, keyring: trust.keyring, level: 3, encoder };
    const full = path(`${encoder}-full`);
    const delta = path(`${encoder}-delta`);
    await createPayload({ ...common, out: full });
    await createPayload({ ...common, source: { path: path('old.img'), version: '1.0.0' }, out: delta });
    for (const [payload, source] of [
      [full, undefined],
      [delta, path('old.img')],
    ] as const) {
      const target = path(`target-${seq++}`);
      await apply(payload, { target, ...(source ? { source } : {}) });
      t.true((await readFile(target)).equals(newImage), `${encoder}: ${payload}`);
    }
  };
  // The native encoder is the zstd CLI (test/helpers/tool-test.ts: skipped without it, failed in CI).
  if (encoder === 'native') toolTest(test, title, { commands: ['zstd'], packages: 'zstd' }, fn);
  else test(title, fn);
}
encoderTest('wasm');
encoderTest('native');

test('a payload applies the same whether the stream hands over 1-byte or 1 MiB chunks', async (t) => {
  const payload = await readFile(path('full'));
  for (const size of [1, 4093, 1024 * 1024]) {
    async function* chunks() {
      for (let at = 0; at < payload.length; at += size) yield payload.subarray(at, at + size);
    }
    const target = path(`target-${seq++}`);
    await applyPayload(chunks(), { target, trust: trust.trust });
    t.true((await readFile(target)).equals(newImage), `chunks of ${size}`);
  }
});
