/**
 * PATCH operations in generated deltas: blocks edited in place (a few bytes of
 * a config file, a database page) compress against the source bytes they
 * replaced; the patch planner picks them, the apply engine decodes them with
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
  await writeFile(join(dir, 'old.img'), old);
  await writeFile(join(dir, 'new.img'), next);
  const delta = await createPayload({
    image: join(dir, 'new.img'),
    source: { path: join(dir, 'old.img'), version: '1.0.0' },
    version: '1.1.0',
    board: 'test-board',
    signer: trust.release.privateKey,
    keyring: trust.keyring,
    out: join(dir, 'delta.tpl'),
    level: 19,
    encoder: 'native',
  });
  const patches = delta.manifest.operations.filter((op) => op.op === 'PATCH');
  t.true(patches.length >= 10, `expected the edited blocks as PATCH operations, got ${patches.length}`);
  t.true(delta.manifest.blobs.some((b) => b.dict !== undefined));
  // PATCH blobs come after every REPLACE blob, so PATCH operations come after every REPLACE.
  const lastReplace = delta.manifest.operations.map((op) => op.op).lastIndexOf('REPLACE');
  const firstPatch = delta.manifest.operations.findIndex((op) => op.op === 'PATCH');
  t.true(lastReplace < firstPatch);
  // Twelve edited 4 KiB blocks cost far less than their 48 KiB.
  t.true(delta.stats.compressedBytes < 12 * 1024, `compressed ${delta.stats.compressedBytes} bytes`);

  const target = join(dir, 'slot.img');
  const result = await applyPayload(createReadStream(join(dir, 'delta.tpl')), { target, source: join(dir, 'old.img'), trust: trust.trust });
  t.is(result.manifest.target.size, next.length);
  t.true((await readFile(target)).subarray(0, next.length).equals(next));
});
