/**
 * The agent parses the manifest its signed check response carries, then hands
 * that parse to the reader (TrustOptions.knownManifest) so the payload's copy of
 * the same bytes is not parsed a second time: for a big manifest that parse is
 * the costliest CPU of the update. The shortcut must apply only to identical
 * bytes, and never skip the payload's own signature check.
 */
import test from 'ava';
import { createHash } from 'node:crypto';
import { mkdtemp, readFile, rm, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { ByteReader } from '../../payloads/byte-reader.ts';
import { createPayload } from '../../payloads/generate.ts';
import { readPrelude, verifyPrelude } from '../../payloads/payload-reader.ts';
import { isTandemError } from '../../shared/errors.ts';
import { makeTrust } from '../helpers/trust.ts';
import { Prng, randomImage } from './random-images.ts';

const trust = makeTrust();

async function prelude(payload: Buffer) {
  return readPrelude(new ByteReader([payload]));
}

test('a known manifest is used for identical bytes only; signatures are still checked', async (t) => {
  const dir = await mkdtemp(join(tmpdir(), 'tandem-known-'));
  t.teardown(() => rm(dir, { recursive: true, force: true }));
  const rng = new Prng(7);
  await writeFile(join(dir, 'a.img'), randomImage(rng, 256 * 1024));
  await writeFile(join(dir, 'b.img'), randomImage(rng, 256 * 1024));
  const common = { version: '2.0.0', board: 'test-board', signer: trust.release.privateKey, keyring: trust.keyring, level: 3 };
  await createPayload({ ...common, image: join(dir, 'a.img'), out: join(dir, 'a.tpl') });
  await createPayload({ ...common, image: join(dir, 'b.img'), out: join(dir, 'b.tpl') });
  const a = await prelude(await readFile(join(dir, 'a.tpl')));
  const b = await prelude(await readFile(join(dir, 'b.tpl')));

  const parsed = (await verifyPrelude(a, { trust: trust.trust })).manifest;
  const known = { sha256: createHash('sha256').update(a.manifestBytes).digest('hex'), view: parsed };

  t.is((await verifyPrelude(a, { trust: trust.trust, knownManifest: known })).manifest, parsed, 'same bytes: the known parse');
  const other = (await verifyPrelude(b, { trust: trust.trust, knownManifest: known })).manifest;
  t.not(other, parsed, 'other bytes: parsed on their own');
  t.is(other.target.sha256, createHash('sha256').update(await readFile(join(dir, 'b.img'))).digest('hex'));

  // The same manifest bytes under a signature that does not verify: refused before the known parse is used.
  const forged = { ...a, signatureBlock: { ...a.signatureBlock, signatures: a.signatureBlock.signatures.map((s) => ({ ...s, signature: Buffer.alloc(64).toString('base64') })) } };
  const err = await t.throwsAsync(verifyPrelude(forged, { trust: trust.trust, knownManifest: known }));
  t.true(isTandemError(err) && err.code === 'ERR_BAD_SIGNATURE', `${(err as Error).message}`);
});
