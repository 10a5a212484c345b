import test from 'ava';
import { createPublicKey, verify as cryptoVerify, type KeyObject } from 'node:crypto';
import { canonicalBytes } from '../../shared/canonical-json.ts';
import { isTandemError, type ErrorCode } from '../../shared/errors.ts';
import { generateKeyPair, keyIdOf, sign, type KeyPair } from '../../shared/keys.ts';
import {
  KEYRING_DOMAIN,
  createKeyring,
  signBytes,
  signKeyring,
  verifyKeyring,
  verifySignedBytes,
  type KeyringDocument,
  type KeyringInput,
  type KeyringSigned,
  type VerifiedKeyring,
} from '../../shared/keyring.ts';
import { parseSafeJson } from '../../shared/safe-json.ts';

const NOW = new Date('2026-06-01T00:00:00Z');
const YEAR_LATER = new Date('2027-06-01T00:00:00Z');
const YEAR_AGO = new Date('2025-06-01T00:00:00Z');
const MANIFEST_DOMAIN = 'tandem-manifest-v1\n';
const MANIFEST = Buffer.from('{"board":"x86","version":"1.2.3"}');

const [r1, r2, r3] = [generateKeyPair(), generateKeyPair(), generateKeyPair()] as [KeyPair, KeyPair, KeyPair];
const [valid, revoked, expired, stranger] = [generateKeyPair(), generateKeyPair(), generateKeyPair(), generateKeyPair()] as [KeyPair, KeyPair, KeyPair, KeyPair];

const code = (c: ErrorCode) => ({ code: c });
const trustOf = (keys: KeyPair[], threshold = 1) => ({ rootKeys: keys.map((k) => k.publicKey), threshold });

function input(patch: Partial<KeyringInput> = {}): KeyringInput {
  return {
    version: 1,
    expires: YEAR_LATER,
    roots: { threshold: 1, keys: [r1.publicKey] },
    releaseKeys: [
      { publicKey: valid.publicKey, expires: YEAR_LATER },
      { publicKey: revoked.publicKey, expires: YEAR_LATER, revoked: true },
      { publicKey: expired.publicKey, expires: YEAR_AGO },
    ],
    ...patch,
  };
}

/** What a device does: bytes off the wire through the strict parser, then verify. */
function wire(doc: KeyringDocument): unknown {
  return parseSafeJson(JSON.stringify(doc));
}

/** Signs like signKeyring but without its checks, to build documents only an attacker would. */
function rawSign(signed: unknown, signers: KeyObject[]): KeyringDocument {
  const message = Buffer.concat([Buffer.from(KEYRING_DOMAIN), canonicalBytes(signed)]);
  return {
    signed: signed as KeyringSigned,
    signatures: signers.map((k) => ({ keyId: keyIdOf(Buffer.from(createPublicKey(k).export({ format: 'jwk' }).x!, 'base64url')), signature: sign(k, message).toString('base64') })),
  };
}

test('a valid keyring verifies and yields its roots and release keys', (t) => {
  const doc = createKeyring(input(), [r1.privateKey]);
  const ring = verifyKeyring(wire(doc), trustOf([r1]), { now: NOW });
  t.is(ring.version, 1);
  t.deepEqual(ring.expires, YEAR_LATER);
  t.deepEqual(ring.roots, { threshold: 1, keys: [r1.publicKey] });
  t.deepEqual([...ring.releaseKeys.keys()], [valid, revoked, expired].map((k) => keyIdOf(k.publicKey)));
  t.deepEqual(ring.releaseKeys.get(keyIdOf(revoked.publicKey)), { publicKey: revoked.publicKey, expires: YEAR_LATER, revoked: true });
  t.false(ring.releaseKeys.get(keyIdOf(valid.publicKey))!.revoked);
});

test('the keyring signature is plain Ed25519 over the domain and the canonical signed part', (t) => {
  const doc = createKeyring(input(), [r1.privateKey]);
  const message = Buffer.concat([Buffer.from('tandem-keyring-v1\n'), canonicalBytes(doc.signed)]);
  const spki = createPublicKey({ key: Buffer.concat([Buffer.from('302a300506032b6570032100', 'hex'), r1.publicKey]), format: 'der', type: 'spki' });
  t.true(cryptoVerify(null, message, spki, Buffer.from(doc.signatures[0]!.signature, 'base64')));
});

test('a keyring signed by another root is untrusted', (t) => {
  const doc = createKeyring(input({ roots: { threshold: 1, keys: [r2.publicKey] } }), [r2.privateKey]);
  t.throws(() => verifyKeyring(wire(doc), trustOf([r1]), { now: NOW }), code('ERR_KEYRING_UNTRUSTED'));
  const noSigs = { ...createKeyring(input(), [r1.privateKey]), signatures: [] };
  t.throws(() => verifyKeyring(wire(noSigs), trustOf([r1]), { now: NOW }), code('ERR_KEYRING_UNTRUSTED'));
});

test('threshold 2 of 3: one signature is refused, two are enough', (t) => {
  const roots = { threshold: 2, keys: [r1.publicKey, r2.publicKey, r3.publicKey] };
  const trust = trustOf([r1, r2, r3], 2);
  const one = createKeyring(input({ roots }), [r1.privateKey]);
  t.throws(() => verifyKeyring(wire(one), trust, { now: NOW }), code('ERR_KEYRING_UNTRUSTED'));
  const two = createKeyring(input({ roots }), [r1.privateKey, r3.privateKey]);
  t.is(verifyKeyring(wire(two), trust, { now: NOW }).roots.threshold, 2);
});

test('duplicate signatures by one key count once; a mislabelled signature counts for nobody', (t) => {
  const roots = { threshold: 2, keys: [r1.publicKey, r2.publicKey, r3.publicKey] };
  const trust = trustOf([r1, r2, r3], 2);
  const doc = createKeyring(input({ roots }), [r1.privateKey]);
  const sig = doc.signatures[0]!;
  const duplicated = { ...doc, signatures: [sig, { ...sig }, { ...sig }] };
  t.throws(() => verifyKeyring(wire(duplicated), trust, { now: NOW }), code('ERR_KEYRING_UNTRUSTED'));
  const relabelled = { ...doc, signatures: [sig, { keyId: keyIdOf(r2.publicKey), signature: sig.signature }] };
  t.throws(() => verifyKeyring(wire(relabelled), trust, { now: NOW }), code('ERR_KEYRING_UNTRUSTED'));
  // signKeyring itself dedupes repeated signers.
  t.is(createKeyring(input({ roots }), [r1.privateKey, r1.privateKey]).signatures.length, 1);
});

test('pinned trust must be sound: duplicated pinned keys do not make a threshold of two', (t) => {
  const doc = createKeyring(input(), [r1.privateKey]);
  t.throws(() => verifyKeyring(wire(doc), trustOf([r1, r1], 2), { now: NOW }), code('ERR_INVALID_ARGUMENT'));
  t.throws(() => verifyKeyring(wire(doc), trustOf([r1], 0), { now: NOW }), code('ERR_INVALID_ARGUMENT'));
  t.throws(() => verifyKeyring(wire(doc), { rootKeys: [Buffer.alloc(32)], threshold: 1 }, { now: NOW }), code('ERR_BAD_KEY'));
});

test('an expired keyring is refused', (t) => {
  const doc = createKeyring(input({ expires: NOW }), [r1.privateKey]);
  t.throws(() => verifyKeyring(wire(doc), trustOf([r1]), { now: NOW }), code('ERR_KEYRING_EXPIRED'));
  t.throws(() => verifyKeyring(wire(doc), trustOf([r1]), { now: YEAR_LATER }), code('ERR_KEYRING_EXPIRED'));
  t.notThrows(() => verifyKeyring(wire(doc), trustOf([r1]), { now: new Date(NOW.getTime() - 1) }));
  t.throws(() => verifyKeyring(wire(doc), trustOf([r1]), { now: new Date(NaN) }), code('ERR_KEYRING_EXPIRED'), 'fails closed');
});

test('an older version than the one trusted is a rollback', (t) => {
  const doc = createKeyring(input({ version: 3 }), [r1.privateKey]);
  t.throws(() => verifyKeyring(wire(doc), trustOf([r1]), { now: NOW, minVersion: 4 }), code('ERR_KEYRING_ROLLBACK'));
  t.is(verifyKeyring(wire(doc), trustOf([r1]), { now: NOW, minVersion: 3 }).version, 3);
  t.throws(() => verifyKeyring(wire(doc), trustOf([r1]), { now: NOW, minVersion: NaN }), code('ERR_INVALID_ARGUMENT'), 'fails closed');
});

test('root rotation needs the old and the new roots', (t) => {
  const rotated = input({ version: 2, roots: { threshold: 1, keys: [r2.publicKey] } });
  const both = createKeyring(rotated, [r1.privateKey, r2.privateKey]);
  const ring = verifyKeyring(wire(both), trustOf([r1]), { now: NOW, minVersion: 1 });
  t.deepEqual(ring.roots.keys, [r2.publicKey]);

  t.throws(() => verifyKeyring(wire(createKeyring(rotated, [r1.privateKey])), trustOf([r1]), { now: NOW }), code('ERR_KEYRING_UNTRUSTED'), 'only old');
  t.throws(() => verifyKeyring(wire(createKeyring(rotated, [r2.privateKey])), trustOf([r1]), { now: NOW }), code('ERR_KEYRING_UNTRUSTED'), 'only new');

  // The device adopts the new root set; the next keyring needs only the new root.
  const next = createKeyring(input({ version: 3, roots: { threshold: 1, keys: [r2.publicKey] } }), [r2.privateKey]);
  const adopted = { rootKeys: ring.roots.keys, threshold: ring.roots.threshold };
  t.is(verifyKeyring(wire(next), adopted, { now: NOW, minVersion: ring.version }).version, 3);
  t.throws(() => verifyKeyring(wire(createKeyring(input({ version: 4 }), [r1.privateKey])), adopted, { now: NOW }), code('ERR_KEYRING_UNTRUSTED'), 'the old root is out');
});

test('a keyring whose own root threshold is not met is refused even when the pinned threshold is', (t) => {
  const roots = { threshold: 2, keys: [r1.publicKey, r2.publicKey] };
  const doc = createKeyring(input({ roots }), [r1.privateKey]);
  t.throws(() => verifyKeyring(wire(doc), trustOf([r1]), { now: NOW }), code('ERR_KEYRING_UNTRUSTED'));
});

test('tampering with any character of the signed part invalidates the keyring', (t) => {
  const text = JSON.stringify(createKeyring(input(), [r1.privateKey]));
  const start = text.indexOf('"signed":') + '"signed":'.length;
  const end = text.indexOf(',"signatures":');
  t.true(start > 0 && end > start);
  const trust = trustOf([r1]);
  t.notThrows(() => verifyKeyring(parseSafeJson(text), trust, { now: NOW }));
  const tweak = (c: string) => (/[0-8]/.test(c) ? String(Number(c) + 1) : c === '9' ? '0' : /[a-y]/i.test(c) ? String.fromCharCode(c.charCodeAt(0) + 1) : /[zZ]/.test(c) ? 'a' : 'x');
  let refused = 0;
  for (let i = start; i < end; i++) {
    const tampered = text.slice(0, i) + tweak(text[i]!) + text.slice(i + 1);
    try {
      verifyKeyring(parseSafeJson(tampered), trust, { now: NOW });
      t.fail(`accepted with character ${i} changed`);
    } catch (err) {
      // Pinned signatures are checked before anything else is read, so past the parser and the
      // schema every change meets the signature.
      const ok = isTandemError(err) && (err.code === 'ERR_KEYRING_UNTRUSTED' || err.code === 'ERR_JSON_SYNTAX' || (err.code === 'ERR_KEYRING_INVALID' && err.message.startsWith('Invalid keyring:')));
      t.true(ok, String(err));
      refused++;
    }
  }
  t.is(refused, end - start);
});

test('tampering that leaves a well-formed keyring is caught by the signature', (t) => {
  const doc = createKeyring(input(), [r1.privateKey]);
  const edits: [string, (s: KeyringSigned) => void][] = [
    ['version', (s) => { s.version += 1; }],
    ['expires', (s) => { s.expires = '2099-01-01T00:00:00.000Z'; }],
    ['unrevoke', (s) => { delete s.releaseKeys[1]!.revoked; }],
    ['extend a release key', (s) => { s.releaseKeys[2]!.expires = '2099-01-01T00:00:00.000Z'; }],
    ['add a release key', (s) => { s.releaseKeys.push({ keyId: keyIdOf(stranger.publicKey), publicKey: stranger.publicKey.toString('base64'), expires: s.expires }); }],
    ['drop a release key', (s) => { s.releaseKeys.pop(); }],
    ['reorder release keys', (s) => { s.releaseKeys.reverse(); }],
    ['swap the root', (s) => { s.roots.keys = [{ keyId: keyIdOf(r2.publicKey), publicKey: r2.publicKey.toString('base64') }]; }],
  ];
  for (const [name, edit] of edits) {
    const signed = structuredClone(doc.signed);
    edit(signed);
    t.throws(() => verifyKeyring(wire({ signed, signatures: doc.signatures }), trustOf([r1]), { now: NOW }), code('ERR_KEYRING_UNTRUSTED'), name);
  }
});

test('semantic checks a schema cannot make', (t) => {
  const good = createKeyring(input(), [r1.privateKey]);
  const variant = (edit: (s: KeyringSigned) => void): unknown => {
    const signed = structuredClone(good.signed);
    edit(signed);
    return wire(rawSign(signed, [r1.privateKey]));
  };
  const trust = trustOf([r1]);
  const cases: [string, (s: KeyringSigned) => void, ErrorCode][] = [
    ['keyId not the key\'s hash', (s) => { s.releaseKeys[0]!.keyId = keyIdOf(stranger.publicKey); }, 'ERR_KEYRING_INVALID'],
    ['duplicate root', (s) => { s.roots.keys.push({ ...s.roots.keys[0]! }); }, 'ERR_KEYRING_INVALID'],
    ['duplicate release key', (s) => { s.releaseKeys.push({ ...s.releaseKeys[0]! }); }, 'ERR_KEYRING_INVALID'],
    ['threshold above key count', (s) => { s.roots.threshold = 2; }, 'ERR_KEYRING_INVALID'],
    ['root also a release key', (s) => { s.releaseKeys.push({ ...s.roots.keys[0]!, expires: s.expires }); }, 'ERR_KEYRING_INVALID'],
    ['February 30', (s) => { s.expires = '2027-02-30T00:00:00Z'; }, 'ERR_KEYRING_INVALID'],
    ['unknown field', (s) => { (s as unknown as Record<string, unknown>).note = 'x'; }, 'ERR_KEYRING_INVALID'],
    ['revoked: false', (s) => { (s.releaseKeys[0] as unknown as Record<string, unknown>).revoked = false; }, 'ERR_KEYRING_INVALID'],
    ['version 0', (s) => { s.version = 0; }, 'ERR_KEYRING_INVALID'],
    ['65 release keys', (s) => { s.releaseKeys = Array.from({ length: 65 }, () => s.releaseKeys[0]!); }, 'ERR_KEYRING_INVALID'],
    ['all-zero release key', (s) => { s.releaseKeys[0] = { keyId: keyIdOf(Buffer.alloc(32)), publicKey: Buffer.alloc(32).toString('base64'), expires: s.expires }; }, 'ERR_BAD_KEY'],
  ];
  for (const [name, edit, expected] of cases) t.throws(() => verifyKeyring(variant(edit), trust, { now: NOW }), code(expected), name);
  t.throws(() => verifyKeyring(null, trust, { now: NOW }), code('ERR_KEYRING_INVALID'));
  // The signing side refuses the same documents, and small-order keys up front.
  t.throws(() => createKeyring(input({ roots: { threshold: 2, keys: [r1.publicKey] } }), [r1.privateKey]), code('ERR_KEYRING_INVALID'));
  t.throws(() => createKeyring(input({ releaseKeys: [{ publicKey: r1.publicKey, expires: YEAR_LATER }] }), [r1.privateKey]), code('ERR_KEYRING_INVALID'));
  t.throws(() => createKeyring(input({ releaseKeys: [{ publicKey: Buffer.alloc(32), expires: YEAR_LATER }] }), [r1.privateKey]), code('ERR_BAD_KEY'));
  t.throws(() => signKeyring({ ...good.signed, version: 1.5 }, [r1.privateKey]), code('ERR_KEYRING_INVALID'));
});

// ---- Manifest signatures -------------------------------------------------------

function releaseRing(): VerifiedKeyring {
  return verifyKeyring(wire(createKeyring(input(), [r1.privateKey])), trustOf([r1]), { now: NOW });
}

test('a signature by a valid release key verifies', (t) => {
  const ring = releaseRing();
  const sig = signBytes(MANIFEST, valid.privateKey, MANIFEST_DOMAIN);
  t.is(sig.keyId, keyIdOf(valid.publicKey));
  t.deepEqual(verifySignedBytes(MANIFEST, [sig], ring, MANIFEST_DOMAIN, NOW), { keyId: sig.keyId });
});

test('each release-key failure has its own code', (t) => {
  const ring = releaseRing();
  const verify = (sigs: { keyId: string; signature: string }[], bytes = MANIFEST) => () => verifySignedBytes(bytes, sigs, ring, MANIFEST_DOMAIN, NOW);
  const cases: [string, () => unknown, ErrorCode][] = [
    ['unknown', verify([signBytes(MANIFEST, stranger.privateKey, MANIFEST_DOMAIN)]), 'ERR_UNKNOWN_KEY'],
    ['root key is not a release key', verify([signBytes(MANIFEST, r1.privateKey, MANIFEST_DOMAIN)]), 'ERR_UNKNOWN_KEY'],
    ['revoked', verify([signBytes(MANIFEST, revoked.privateKey, MANIFEST_DOMAIN)]), 'ERR_KEY_REVOKED'],
    ['expired', verify([signBytes(MANIFEST, expired.privateKey, MANIFEST_DOMAIN)]), 'ERR_KEY_EXPIRED'],
    ['other bytes', verify([signBytes(MANIFEST, valid.privateKey, MANIFEST_DOMAIN)], Buffer.from('{"board":"arm"}')), 'ERR_BAD_SIGNATURE'],
    ['wrong domain', verify([signBytes(MANIFEST, valid.privateKey, 'tandem-checkin-v1\n')]), 'ERR_BAD_SIGNATURE'],
    ['no domain', verify([{ keyId: keyIdOf(valid.publicKey), signature: sign(valid.privateKey, MANIFEST).toString('base64') }]), 'ERR_BAD_SIGNATURE'],
    ['keyring domain', verify([{ keyId: keyIdOf(valid.publicKey), signature: sign(valid.privateKey, Buffer.concat([Buffer.from(KEYRING_DOMAIN), MANIFEST])).toString('base64') }]), 'ERR_BAD_SIGNATURE'],
    ['malformed base64', verify([{ keyId: keyIdOf(valid.publicKey), signature: 'AAAA' }]), 'ERR_BAD_SIGNATURE'],
    ['no signature', verify([]), 'ERR_UNKNOWN_KEY'],
  ];
  for (const [name, run, expected] of cases) t.throws(run, code(expected), name);
});

test('a root signature over a keyring cannot be replayed as a manifest signature', (t) => {
  const doc = createKeyring(input(), [r1.privateKey]);
  // Even if the root key were a release key, the domains differ.
  const ring = releaseRing();
  const asRelease = new Map(ring.releaseKeys).set(keyIdOf(r1.publicKey), { publicKey: r1.publicKey, expires: YEAR_LATER, revoked: false });
  t.throws(() => verifySignedBytes(canonicalBytes(doc.signed), doc.signatures, { ...ring, releaseKeys: asRelease }, MANIFEST_DOMAIN, NOW), code('ERR_BAD_SIGNATURE'));
  // And the keyring domain is not available for detached signatures at all.
  t.throws(() => signBytes(MANIFEST, valid.privateKey, KEYRING_DOMAIN), code('ERR_INVALID_ARGUMENT'));
  t.throws(() => verifySignedBytes(MANIFEST, [], ring, KEYRING_DOMAIN, NOW), code('ERR_INVALID_ARGUMENT'));
  for (const bad of ['tandem-manifest-v1', 'tandem\nmanifest\n', 'Tandem-manifest-v1\n', '']) {
    t.throws(() => signBytes(MANIFEST, valid.privateKey, bad), code('ERR_INVALID_ARGUMENT'), JSON.stringify(bad));
  }
});

test('several signatures: any one that verifies wins, else the most specific failure', (t) => {
  const ring = releaseRing();
  const by = (k: KeyPair) => signBytes(MANIFEST, k.privateKey, MANIFEST_DOMAIN);
  const forged = { keyId: keyIdOf(valid.publicKey), signature: by(stranger).signature };
  const run = (sigs: { keyId: string; signature: string }[]) => () => verifySignedBytes(MANIFEST, sigs, ring, MANIFEST_DOMAIN, NOW);
  t.deepEqual(run([by(stranger), by(revoked), forged, by(valid)])(), { keyId: keyIdOf(valid.publicKey) });
  t.throws(run([by(stranger), by(revoked)]), code('ERR_KEY_REVOKED'));
  t.throws(run([by(revoked), by(expired), by(stranger)]), code('ERR_KEY_EXPIRED'));
  t.throws(run([forged, by(stranger), by(expired)]), code('ERR_BAD_SIGNATURE'));
  t.throws(run(Array.from({ length: 33 }, () => by(stranger))), code('ERR_BAD_SIGNATURE'));
});

test('release keys expire with time, and so does the keyring that lists them', (t) => {
  const ring = releaseRing();
  const sig = signBytes(MANIFEST, valid.privateKey, MANIFEST_DOMAIN);
  t.throws(() => verifySignedBytes(MANIFEST, [sig], ring, MANIFEST_DOMAIN, YEAR_LATER), code('ERR_KEYRING_EXPIRED'));
  const shortKey = verifyKeyring(
    wire(createKeyring(input({ releaseKeys: [{ publicKey: valid.publicKey, expires: new Date('2026-07-01T00:00:00Z') }] }), [r1.privateKey])),
    trustOf([r1]),
    { now: NOW },
  );
  t.notThrows(() => verifySignedBytes(MANIFEST, [sig], shortKey, MANIFEST_DOMAIN, NOW));
  t.throws(() => verifySignedBytes(MANIFEST, [sig], shortKey, MANIFEST_DOMAIN, new Date('2026-07-01T00:00:00Z')), code('ERR_KEY_EXPIRED'));
});

test('server keys sign check responses and are not release keys', (t) => {
  const root = generateKeyPair();
  const release = generateKeyPair();
  const server = generateKeyPair();
  const now = new Date();
  const expires = new Date(now.getTime() + 86_400_000);
  const doc = createKeyring(
    { version: 1, expires, roots: { threshold: 1, keys: [root.publicKey] }, releaseKeys: [{ publicKey: release.publicKey, expires }], serverKeys: [{ publicKey: server.publicKey, expires }] },
    [root.privateKey],
  );
  const keyring = verifyKeyring(doc, { rootKeys: [root.publicKey], threshold: 1 }, { now });
  const bytes = Buffer.from('{"body":1}');
  const bySserver = signBytes(bytes, server.privateKey, 'tandem-check-response-v1\n');
  t.deepEqual(verifySignedBytes(bytes, [bySserver], keyring, 'tandem-check-response-v1\n', now, 'server'), { keyId: bySserver.keyId });
  // The server's online key must not be able to sign a manifest, nor a release key a check response.
  t.throws(() => verifySignedBytes(bytes, [bySserver], keyring, 'tandem-check-response-v1\n', now, 'release'), { code: 'ERR_UNKNOWN_KEY' } as never);
  const byRelease = signBytes(bytes, release.privateKey, 'tandem-check-response-v1\n');
  t.throws(() => verifySignedBytes(bytes, [byRelease], keyring, 'tandem-check-response-v1\n', now, 'server'), { code: 'ERR_UNKNOWN_KEY' } as never);
});
