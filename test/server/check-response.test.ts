/**
 * The check response built from prepared parts (server/routes/check-response.ts)
 * must be byte for byte what canonicalize() makes of the whole body, since
 * devices verify the signature over canonicalBytes(body) of what they parse.
 */
import test from 'ava';
import { canonicalize } from '../../shared/canonical-json.ts';
import { verifyKeyring, verifySignedBytes } from '../../shared/keyring.ts';
import { CHECK_RESPONSE_DOMAIN, validateCheckResponse, type CheckResponseBody } from '../../shared/schemas/protocol.ts';
import { buildConfig } from '../../server/config.ts';
import { canonicalBodyParts, prepareOffer, SIGN_IN_POOL_ABOVE_BYTES, signCheckResponse } from '../../server/routes/check-response.ts';
import { loadServerKeys } from '../../server/server-keys.ts';
import type { PayloadRecord, Release } from '../../server/store/store.ts';
import { removeDir } from './helpers.ts';
import { mkdtemp } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';

const release: Release = {
  id: 'r1', product: 'acme', channel: 'stable', version: '1.2.0-rc.1', steppingStone: false, allowDowngrade: true,
  createdAt: '2026-01-01T00:00:00.000Z', createdBy: 'test', notes: 'ünïcode "quoted" \\ notes',
};
const payload: PayloadRecord = {
  sha256: 'a'.repeat(64), releaseId: 'r1', board: 'rpi4', kind: 'delta', sourceVersion: '1.1.0', size: 123_456, preludeSize: 789,
  manifest: Buffer.from(Array.from({ length: 3000 }, (_, i) => i % 251)), signatures: JSON.stringify([{ keyId: 'b'.repeat(64), signature: 'c'.repeat(86) + '==' }]),
  targetSha256: 'd'.repeat(64), targetSize: 1, createdAt: '2026-01-01T00:00:00.000Z',
};
// A manifest big enough that its response is signed in the thread pool, not on the event loop.
const joined = (parts: (string | Buffer)[]): string => parts.map((p) => p.toString()).join('');
const bigPayload: PayloadRecord = { ...payload, sha256: 'e'.repeat(64), manifest: Buffer.from(Array.from({ length: SIGN_IN_POOL_ABOVE_BYTES }, (_, i) => i % 253)) };

test('the joined canonical body equals canonicalize(body), and the response verifies and parses to the same value, signed in place or in the pool', async (t) => {
  const dataDir = await mkdtemp(join(tmpdir(), 'tandem-check-response-'));
  t.teardown(() => removeDir(dataDir));
  const config = buildConfig({ dataDir });
  const keys = await loadServerKeys(config);
  const sc = { config, keys };
  const fields = { deviceId: 'dev:1.a_b-c', nonce: 'n0nce-with_dash0123', issuedAt: '2026-01-01T00:00:00.000Z', expires: '2026-01-01T00:05:00.000Z', pollAfterSeconds: 3599 };
  const sizes: number[] = [];
  for (const offer of [null, prepareOffer(sc, release, payload), prepareOffer(sc, release, bigPayload)]) {
    const signed = await signCheckResponse(sc, fields, offer);
    sizes.push(signed.json.length);
    const body = signed.response.body;
    t.is(joined(canonicalBodyParts(body, Buffer.from(canonicalize(keys.keyring)), offer?.canonical)), canonicalize(body));
    const parsed = JSON.parse(signed.json.toString('utf8')) as typeof signed.response;
    t.deepEqual(parsed, JSON.parse(JSON.stringify(signed.response)));
    validateCheckResponse(parsed);
    const keyring = verifyKeyring(parsed.body.keyring, { rootKeys: [keys.rootPublicKey], threshold: 1 }, { now: new Date('2026-01-01T00:00:00.000Z') });
    t.notThrows(() => verifySignedBytes(Buffer.from(canonicalize(parsed.body), 'utf8'), [parsed.signature], keyring, CHECK_RESPONSE_DOMAIN, new Date('2026-01-01T00:00:00.000Z'), 'server'));
    t.is(parsed.body.result, offer ? 'update' : 'noUpdate');
  }
  // Both ways of signing were taken: in place for the small responses, in the thread pool for the big one.
  t.true(sizes[0]! < SIGN_IN_POOL_ABOVE_BYTES && sizes[1]! < SIGN_IN_POOL_ABOVE_BYTES && sizes[2]! > SIGN_IN_POOL_ABOVE_BYTES, sizes.join(' '));
  // The offer is made once per payload record and frozen: every check-in shares it.
  const offer = prepareOffer(sc, release, payload);
  t.is(prepareOffer(sc, release, payload), offer);
  t.true(Object.isFrozen(offer.offer.payload));
  t.is(offer.offer.manifest, payload.manifest.toString('base64'));
  t.is(offer.canonical.toString(), canonicalize(offer.offer));
  // A changed release (a new snapshot after an admin write) gets a new offer.
  const patched = { ...release, allowDowngrade: false };
  t.false(prepareOffer(sc, patched, payload).offer.allowDowngrade);
});

test('canonicalBodyParts sorts keys as RFC 8785 does, skips undefined fields, and puts the prepared bytes in place', (t) => {
  const body = { type: 'tandem-check-response', result: 'noUpdate', deviceId: 'd', nonce: 'n', issuedAt: 'i', expires: 'e', pollAfterSeconds: 1, keyring: {}, update: undefined } as unknown as CheckResponseBody;
  const keyring = Buffer.from('{"k":1}');
  const parts = canonicalBodyParts(body, keyring, undefined);
  t.is(parts[1], keyring, 'the keyring bytes as made, not a copy');
  t.is(joined(parts), '{"deviceId":"d","expires":"e","issuedAt":"i","keyring":{"k":1},"nonce":"n","pollAfterSeconds":1,"result":"noUpdate","type":"tandem-check-response"}');
  const update = Buffer.from('{"u":"ü"}');
  t.true(joined(canonicalBodyParts({ ...body, result: 'update', update: {} } as unknown as CheckResponseBody, keyring, update)).endsWith(',"type":"tandem-check-response","update":{"u":"ü"}}'));
});
