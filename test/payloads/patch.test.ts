/**
 * PATCH operations in generated deltas: blocks edited in place (a few bytes of
 * a config file, a database page) compress against the source bytes they
 * replaced, found where the previous copy left off or by resemblance wherever
 * they lie; the patch planner picks them, the apply engine decodes them with
 * the source dictionary, and the result is byte-exact.
 */
import test from 'ava';
import { createReadStream } from 'node:fs';
import { mkdtemp, readFile, rm, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { applyPayload } from '../../payloads/apply.ts';
import { createPayload } from '../../payloads/generate.ts';
import { makeTrust } from '../helpers/trust.ts';
import { Prng } from './random-images.ts';

const trust = makeTrust();
let dir = '';

test.before(async () => {
  dir = await mkdtemp(join(tmpdir(), 'tandem-patch-'));
});
test.after.always(async () => {
  await rm(dir, { recursive: true, force: true });
});

/** Writes both images, makes the delta with the native encoder at level 19, and applies it into a slot: returns both. */
async function deltaRoundTrip(name: string, old: Buffer, next: Buffer) {
  const oldPath = join(dir, `${name}-old.img`);
  const newPath = join(dir, `${name}-new.img`);
  await writeFile(oldPath, old);
  await writeFile(newPath, next);
  const delta = await createPayload({
    image: newPath,
    source: { path: oldPath, version: '1.0.0' },
    version: '1.1.0',
    board: 'test-board',
    signer: trust.release.privateKey,
    keyring: trust.keyring,
    out: join(dir, `${name}.tpl`),
    level: 19,
    encoder: 'native',
  });
  const target = join(dir, `${name}-slot.img`);
  const applied = await applyPayload(createReadStream(join(dir, `${name}.tpl`)), { target, source: oldPath, trust: trust.trust });
  return { delta, applied, slot: (await readFile(target)).subarray(0, next.length) };
}

/** Text-like blocks: like configuration files, unique per block so no block repeats. */
function textImage(blocks: number, prng: Prng): Buffer {
  const words = ['listen', 'port', 'enable', 'service', 'appliance', 'network', 'timeout', 'health', 'check', 'interval', 'path', 'user'];
  const out = Buffer.alloc(blocks * 4096);
  let at = 0;
  let line = 0;
  while (at < out.length) {
    const text = `${words[prng.int(words.length)]}_${line++} = ${words[prng.int(words.length)]}-${prng.int(100000)}\n`;
    at += out.write(text, at);
  }
  return out;
}

test('blocks edited in place become PATCH operations and apply byte-exact', async (t) => {
  const prng = new Prng(20261123);
  const old = textImage(512, prng);
  const next = Buffer.from(old);
  // Edit a few bytes in 12 blocks spread over the image: each block's old version sits right
  // where the preceding SOURCE_COPY ends in the source.
  for (let i = 0; i < 12; i++) {
    const block = 20 + i * 40;
    next.write(`edited-${i}-${prng.int(1000)}`, block * 4096 + 100 + prng.int(3000));
  }
  const { delta, applied, slot } = await deltaRoundTrip('edited', old, next);
  // Runs of one kind merge into operations of up to 2 MiB: the edited blocks make one PATCH operation or a few.
  t.true(delta.stats.patchBytes >= 10 * 4096, `expected the edited blocks as PATCH, got ${delta.stats.patchBytes} bytes`);
  t.true(delta.manifest.operations.some((op) => op.op === 'PATCH'));
  t.true(delta.manifest.blobs.some((b) => b.dict !== undefined));
  // PATCH blobs come after every REPLACE blob, so PATCH operations come after every REPLACE.
  const lastReplace = delta.manifest.operations.map((op) => op.op).lastIndexOf('REPLACE');
  const firstPatch = delta.manifest.operations.findIndex((op) => op.op === 'PATCH');
  t.true(lastReplace < firstPatch);
  // Twelve edited 4 KiB blocks cost far less than their 48 KiB.
  t.true(delta.stats.compressedBytes < 12 * 1024, `compressed ${delta.stats.compressedBytes} bytes`);

  t.is(applied.manifest.target.size, next.length);
  t.true(slot.equals(next));
});

/** Lines of random hex: every block unlike every other, as most of a real image is. */
function hexTextImage(blocks: number, prng: Prng): Buffer {
  const out = Buffer.alloc(blocks * 4096);
  let at = 0;
  while (at < out.length) at += out.write(`key_${prng.bytes(6).toString('hex')} = ${prng.bytes(10).toString('hex')}\n`, at);
  return out;
}

test('a block edited in a file that moved is patched against its look-alike in the source, wherever it lies', async (t) => {
  const prng = new Prng(20261124);
  const chunkBlocks = 16;
  const chunks = 16;
  const old = hexTextImage(chunks * chunkBlocks, prng);
  // The chunks in reverse order, the first block of each edited: the source extent where the
  // previous copy ends (the gap the planner tries first) never holds the edited block's old version.
  const parts: Buffer[] = [];
  for (let c = chunks - 1; c >= 0; c--) {
    const chunk = Buffer.from(old.subarray(c * chunkBlocks * 4096, (c + 1) * chunkBlocks * 4096));
    chunk.write(`edited-${c}`, 200 + prng.int(3000));
    parts.push(chunk);
  }
  const next = Buffer.concat(parts);
  const { delta, slot } = await deltaRoundTrip('moved', old, next);
  t.is(delta.stats.literalBytes, chunks * 4096);
  t.is(delta.stats.patchBytes, chunks * 4096, 'every edited block should be a PATCH');
  // Sixteen 4 KiB blocks of random hex (about 2.2 KB each compressed alone) cost a few hundred bytes.
  t.true(delta.stats.compressedBytes < 2048, `compressed ${delta.stats.compressedBytes} bytes`);

  t.true(slot.equals(next));
});
