/**
 * The keyring (DESIGN.md "Keys and trust"): offline root keys sign the list of
 * release keys that may sign manifests. Modelled on TUF's root metadata: a
 * threshold of pinned roots must sign, a new root set must also sign itself
 * (so rotation needs old and new), versions never go back, and it expires.
 */
import type { KeyObject } from 'node:crypto';
import { canonicalBytes } from './canonical-json.ts';
import { TandemError, type ErrorCode } from './errors.ts';
import { SIGNATURE_BYTES, decodeBase64Strict, importPublicKey, keyIdOf, rawPublicKeyOf, sign, verifySignature } from './keys.ts';
import {
  MAX_KEYRING_SIGNATURES,
  validateKeyringDocument,
  type KeyringDocument,
  type KeyringKey,
  type KeyringSignature,
  type KeyringSigned,
} from './schemas/keyring.ts';
import { isoTime } from './iso-time.ts';

export type { KeyringDocument, KeyringSigned, KeyringSignature } from './schemas/keyring.ts';

/**
 * Prefixed to whatever is signed, so a signature made for one kind of document can
 * never verify as another (a keyring signature replayed as a manifest's, or back).
 * Domains end in their only newline, which keeps them prefix-free.
 */
export const KEYRING_DOMAIN = 'tandem-keyring-v1\n';
const DOMAIN_PATTERN = /^[a-z][a-z0-9.-]{0,62}\n$/;
/** Bounds the verifies one signed object can cost, whatever its own schema allows. */
export const MAX_SIGNATURES = 32;

export interface KeyringInput {
  version: number;
  expires: Date;
  roots: { threshold: number; keys: Uint8Array[] };
  releaseKeys: { publicKey: Uint8Array; expires: Date; revoked?: boolean }[];
  serverKeys?: { publicKey: Uint8Array; expires: Date; revoked?: boolean }[];
}

export interface RootTrust {
  rootKeys: Uint8Array[];
  threshold: number;
}

export interface ReleaseKey {
  publicKey: Buffer;
  expires: Date;
  revoked: boolean;
}

export interface VerifiedKeyring {
  version: number;
  expires: Date;
  /** What a device pins next, once it adopts this keyring. */
  roots: { threshold: number; keys: Buffer[] };
  releaseKeys: ReadonlyMap<string, ReleaseKey>;
  /** Online keys that sign check-in responses (DESIGN.md, trust). */
  serverKeys: ReadonlyMap<string, ReleaseKey>;
}

export function createKeyring(input: KeyringInput, signers: KeyObject[]): KeyringDocument {
  const signed: KeyringSigned = {
    type: 'tandem-keyring',
    version: input.version,
    expires: isoOf(input.expires),
    roots: { threshold: input.roots.threshold, keys: input.roots.keys.map(keyEntryOf) },
    releaseKeys: input.releaseKeys.map((k) => ({
      ...keyEntryOf(k.publicKey),
      expires: isoOf(k.expires),
      ...(k.revoked === true ? { revoked: true as const } : {}),
    })),
    ...(input.serverKeys
      ? {
          serverKeys: input.serverKeys.map((k) => ({
            ...keyEntryOf(k.publicKey),
            expires: isoOf(k.expires),
            ...(k.revoked === true ? { revoked: true as const } : {}),
          })),
        }
      : {}),
  };
  return signKeyring(signed, signers);
}

/**
 * Signers need not be listed in `signed.roots`: when rotating, the outgoing roots sign
 * a keyring that no longer names them. Refuses to sign what `verifyKeyring` would refuse.
 */
export function signKeyring(signed: KeyringSigned, signers: KeyObject[]): KeyringDocument {
  readSigned(validateKeyringDocument({ signed, signatures: [] }, 'keyring').signed);
  const message = withDomain(KEYRING_DOMAIN, canonicalBytes(signed));
  const signatures = new Map<string, KeyringSignature>();
  for (const key of signers) {
    const keyId = keyIdOf(rawPublicKeyOf(key));
    if (!signatures.has(keyId)) signatures.set(keyId, { keyId, signature: sign(key, message).toString('base64') });
  }
  if (signatures.size > MAX_KEYRING_SIGNATURES) {
    throw new TandemError('ERR_INVALID_ARGUMENT', `A keyring carries at most ${MAX_KEYRING_SIGNATURES} signatures.`);
  }
  return { signed, signatures: [...signatures.values()] };
}

export function verifyKeyring(doc: unknown, trust: RootTrust, opts: { now: Date; minVersion?: number }): VerifiedKeyring {
  const pinned = readTrust(trust);
  // A NaN minVersion would compare false and silently allow any rollback: fail closed.
  if (opts.minVersion !== undefined && !Number.isSafeInteger(opts.minVersion)) {
    throw new TandemError('ERR_INVALID_ARGUMENT', `minVersion must be an integer, not ${String(opts.minVersion)}.`);
  }
  const { signed, signatures } = validateKeyringDocument(doc, 'keyring');
  const message = withDomain(KEYRING_DOMAIN, canonicalBytes(signed));

  // A keyId is only a claim; each counts once, and only if its signature verifies.
  const valid = new Set<string>();
  const countValid = (keys: Map<string, Buffer>): number => {
    for (const { keyId, signature } of signatures) {
      const key = keys.get(keyId);
      if (key === undefined || valid.has(keyId)) continue;
      const bytes = decodeBase64Strict(signature, SIGNATURE_BYTES);
      if (bytes !== undefined && verifySignature(key, message, bytes)) valid.add(keyId);
    }
    return [...keys.keys()].filter((id) => valid.has(id)).length;
  };

  // Pinned keys first: nothing an unauthenticated document says is decoded before this passes.
  const byPinned = countValid(pinned.keys);
  if (byPinned < pinned.threshold) {
    throw new TandemError('ERR_KEYRING_UNTRUSTED', `The keyring has ${byPinned} valid signature(s) from trusted root keys; ${pinned.threshold} needed.`, {
      details: { valid: byPinned, threshold: pinned.threshold },
    });
  }
  const content = readSigned(signed);
  // When the roots are unchanged this is redundant or the keyring's own stricter threshold;
  // when they rotate, it proves the incoming roots hold their keys (TUF 5.3.4), so a device
  // never pins a root set that could not sign its next keyring.
  const byOwn = countValid(content.roots);
  if (byOwn < signed.roots.threshold) {
    throw new TandemError('ERR_KEYRING_UNTRUSTED', `The keyring's own root set has ${byOwn} valid signature(s); ${signed.roots.threshold} needed.`, {
      details: { valid: byOwn, threshold: signed.roots.threshold, rootsChanged: !sameKeys(pinned.keys, content.roots) },
    });
  }
  // Rollback before expiry: an old replayed keyring is usually expired too, and rollback says more.
  if (opts.minVersion !== undefined && signed.version < opts.minVersion) {
    throw new TandemError('ERR_KEYRING_ROLLBACK', `Keyring version ${signed.version} is older than version ${opts.minVersion} already trusted.`, {
      details: { version: signed.version, minVersion: opts.minVersion },
    });
  }
  if (isExpired(content.expires, opts.now)) {
    throw new TandemError('ERR_KEYRING_EXPIRED', `The keyring expired at ${signed.expires}.`, { details: { expires: signed.expires } });
  }
  return {
    version: signed.version,
    expires: content.expires,
    roots: { threshold: signed.roots.threshold, keys: [...content.roots.values()] },
    releaseKeys: content.releaseKeys,
    serverKeys: content.serverKeys,
  };
}

// Deriving the key id exports the public key (about 1 ms); a signing server does it once per key, not per response.
const keyIds = new WeakMap<KeyObject, string>();

export function signBytes(bytes: Uint8Array, privateKey: KeyObject, domain: string): KeyringSignature {
  const message = withDomain(checkDetachedDomain(domain), bytes);
  let keyId = keyIds.get(privateKey);
  if (keyId === undefined) {
    keyId = keyIdOf(rawPublicKeyOf(privateKey));
    keyIds.set(privateKey, keyId);
  }
  return { keyId, signature: sign(privateKey, message).toString('base64') };
}

// How far a signature got before it failed: the furthest is the most specific error.
const FAILURE_RANK: Partial<Record<ErrorCode, number>> = { ERR_UNKNOWN_KEY: 0, ERR_KEY_REVOKED: 1, ERR_KEY_EXPIRED: 2, ERR_BAD_SIGNATURE: 3 };

/**
 * Succeeds when any one signature is by a known, unrevoked, unexpired release key and
 * verifies; otherwise throws the most specific failure. No signature at all is
 * ERR_UNKNOWN_KEY: nothing known signed it.
 */
export function verifySignedBytes(
  bytes: Uint8Array,
  signatures: readonly KeyringSignature[],
  keyring: VerifiedKeyring,
  domain: string,
  now: Date,
  role: 'release' | 'server' = 'release',
): { keyId: string } {
  const message = withDomain(checkDetachedDomain(domain), bytes);
  // The keyring may have been verified long ago; a stale release-key list must not keep signing.
  if (isExpired(keyring.expires, now)) {
    throw new TandemError('ERR_KEYRING_EXPIRED', `The keyring expired at ${isoTime(keyring.expires)}.`);
  }
  if (signatures.length > MAX_SIGNATURES) {
    throw new TandemError('ERR_BAD_SIGNATURE', `At most ${MAX_SIGNATURES} signatures are checked; got ${signatures.length}.`);
  }
  let failure: TandemError | undefined;
  const fail = (code: ErrorCode, message: string, keyId: string) => {
    if (failure === undefined || FAILURE_RANK[code]! > FAILURE_RANK[failure.code]!) failure = new TandemError(code, message, { details: { keyId } });
  };
  for (const { keyId, signature } of signatures) {
    const key = (role === 'server' ? keyring.serverKeys : keyring.releaseKeys).get(keyId);
    if (key === undefined) fail('ERR_UNKNOWN_KEY', `Key ${keyId} is not a ${role} key in keyring version ${keyring.version}.`, keyId);
    else if (key.revoked) fail('ERR_KEY_REVOKED', `${role} key ${keyId} is revoked.`, keyId);
    else if (isExpired(key.expires, now)) fail('ERR_KEY_EXPIRED', `${role} key ${keyId} expired at ${isoTime(key.expires)}.`, keyId);
    else {
      const sig = decodeBase64Strict(signature, SIGNATURE_BYTES);
      if (sig !== undefined && verifySignature(key.publicKey, message, sig)) return { keyId };
      fail('ERR_BAD_SIGNATURE', `The signature by ${role} key ${keyId} does not verify.`, keyId);
    }
  }
  throw failure ?? new TandemError('ERR_UNKNOWN_KEY', 'No signature to verify.');
}

// ---- Internals ----------------------------------------------------------------

interface SignedContent {
  expires: Date;
  roots: Map<string, Buffer>;
  releaseKeys: Map<string, ReleaseKey>;
  serverKeys: Map<string, ReleaseKey>;
}

/** The checks a schema cannot express; throws ERR_KEYRING_INVALID (or ERR_BAD_KEY for a bad key). */
function readSigned(signed: KeyringSigned): SignedContent {
  const roots = new Map<string, Buffer>();
  for (const entry of signed.roots.keys) {
    if (roots.has(entry.keyId)) throw invalid(`Root key ${entry.keyId} is listed twice.`);
    roots.set(entry.keyId, decodeKey(entry, 'root'));
  }
  if (signed.roots.threshold > roots.size) {
    throw invalid(`The root threshold ${signed.roots.threshold} exceeds the ${roots.size} root key(s).`);
  }
  const releaseKeys = new Map<string, ReleaseKey>();
  for (const entry of signed.releaseKeys) {
    if (releaseKeys.has(entry.keyId)) throw invalid(`Release key ${entry.keyId} is listed twice.`);
    // Root keys stay offline; one that also signs releases would be online, and one leak would own the fleet.
    if (roots.has(entry.keyId)) throw invalid(`Key ${entry.keyId} cannot be both a root key and a release key.`);
    releaseKeys.set(entry.keyId, { publicKey: decodeKey(entry, 'release'), expires: parseTimestamp(entry.expires), revoked: entry.revoked === true });
  }
  const serverKeys = new Map<string, ReleaseKey>();
  for (const entry of signed.serverKeys ?? []) {
    if (serverKeys.has(entry.keyId)) throw invalid(`Server key ${entry.keyId} is listed twice.`);
    // A server key signs online, so it must never also be a root or a release key.
    if (roots.has(entry.keyId) || releaseKeys.has(entry.keyId)) throw invalid(`Key ${entry.keyId} cannot be a server key and a root or release key.`);
    serverKeys.set(entry.keyId, { publicKey: decodeKey(entry, 'server'), expires: parseTimestamp(entry.expires), revoked: entry.revoked === true });
  }
  return { expires: parseTimestamp(signed.expires), roots, releaseKeys, serverKeys };
}

function decodeKey(entry: KeyringKey, role: string): Buffer {
  const raw = decodeBase64Strict(entry.publicKey);
  if (raw === undefined) throw invalid(`The ${role} key ${entry.keyId} is not canonical base64.`);
  importPublicKey(raw);
  // Keys are looked up by keyId, so a keyId naming another key would let one key pose as two.
  if (keyIdOf(raw) !== entry.keyId) throw invalid(`The ${role} keyId ${entry.keyId} is not the sha256 of its key.`);
  return raw;
}

function readTrust(trust: RootTrust): { keys: Map<string, Buffer>; threshold: number } {
  const keys = new Map<string, Buffer>();
  for (const raw of trust.rootKeys) {
    importPublicKey(raw);
    keys.set(keyIdOf(raw), Buffer.from(raw));
  }
  // Duplicated pinned keys would let one signature satisfy a threshold of two.
  if (!Number.isSafeInteger(trust.threshold) || trust.threshold < 1 || trust.threshold > keys.size) {
    throw new TandemError('ERR_INVALID_ARGUMENT', `The trusted root threshold must be between 1 and the ${keys.size} distinct pinned root key(s).`);
  }
  return { keys, threshold: trust.threshold };
}

function checkDetachedDomain(domain: string): string {
  if (domain === KEYRING_DOMAIN) {
    throw new TandemError('ERR_INVALID_ARGUMENT', 'The keyring domain is reserved for root signatures over keyrings.');
  }
  return domain;
}

function withDomain(domain: string, bytes: Uint8Array): Buffer {
  if (!DOMAIN_PATTERN.test(domain)) {
    throw new TandemError('ERR_INVALID_ARGUMENT', `Signature domain ${JSON.stringify(domain)} must be lowercase, end in "\\n" and hold no other newline.`);
  }
  return Buffer.concat([Buffer.from(domain, 'utf8'), bytes]);
}

/** Written so an invalid Date counts as expired: fail closed. */
function isExpired(expires: Date, now: Date): boolean {
  return !(now.getTime() < expires.getTime());
}

/** The schema fixes the shape; this refuses dates that only look valid (Feb 30, 24:00). */
function parseTimestamp(text: string): Date {
  const date = new Date(text);
  if (Number.isNaN(date.getTime()) || isoTime(date).slice(0, 19) !== text.slice(0, 19)) {
    throw invalid(`${JSON.stringify(text)} is not a real UTC time.`);
  }
  return date;
}

function isoOf(date: Date): string {
  if (Number.isNaN(date.getTime())) throw new TandemError('ERR_INVALID_ARGUMENT', 'Invalid date.');
  return isoTime(date);
}

function keyEntryOf(raw: Uint8Array): KeyringKey {
  importPublicKey(raw);
  return { keyId: keyIdOf(raw), publicKey: Buffer.from(raw).toString('base64') };
}

function sameKeys(a: Map<string, Buffer>, b: Map<string, Buffer>): boolean {
  return a.size === b.size && [...a.keys()].every((id) => b.has(id));
}

function invalid(message: string): TandemError {
  return new TandemError('ERR_KEYRING_INVALID', message);
}
