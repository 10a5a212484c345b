/**
 * Ed25519 keys, signatures and key files (DESIGN.md "Keys and trust"), on
 * node:crypto alone. Public keys travel as 32 raw bytes and are named by the
 * sha256 of those bytes; every raw key from outside passes `importPublicKey`.
 */
import { createHash, createPrivateKey, createPublicKey, generateKeyPairSync, sign as cryptoSign, verify as cryptoVerify, type KeyObject } from 'node:crypto';
import { TandemError } from './errors.ts';
import { parseSafeJson } from './safe-json.ts';
import { BASE64, KEY_ID, compileValidator } from './schema-validator.ts';

export const PUBLIC_KEY_BYTES = 32;
export const SIGNATURE_BYTES = 64;

// An Ed25519 SubjectPublicKeyInfo is always these 12 bytes then the raw key (RFC 8410),
// so a public key PEM is checked byte for byte rather than trusted to a lenient ASN.1 parser.
const SPKI_PREFIX = Buffer.from('302a300506032b6570032100', 'hex');

const P = (1n << 255n) - 19n;
const D = mod(-121665n * modPow(121666n, P - 2n));
// The y-coordinates of the 8 torsion points: identity (1), order 2 (p-1), order 4 (0),
// order 8 (the two values below). Ignoring the sign bit covers both x of each y, and with
// y < p enforced separately, the non-canonical aliases p and p+1 are refused too: together
// this is libsodium's `has_small_order` blacklist.
const SMALL_ORDER_Y = new Set([
  0n,
  1n,
  P - 1n,
  2707385501144840649318225287225658788936804267575313519463743609750303402022n,
  55188659117513257062467267217118295137698188065244968500265048394206261417927n,
]);

export interface KeyPair {
  publicKey: Buffer;
  privateKey: KeyObject;
}

export interface DecodedPublicKey {
  publicKey: Buffer;
  keyId: string;
}

export interface DecodedPrivateKey extends DecodedPublicKey {
  privateKey: KeyObject;
}

export function generateKeyPair(): KeyPair {
  const { privateKey } = generateKeyPairSync('ed25519');
  return { publicKey: rawPublicKeyOf(privateKey), privateKey };
}

export function keyIdOf(rawPublicKey: Uint8Array): string {
  return createHash('sha256').update(rawPublicKey).digest('hex');
}

/**
 * Refuses anything but a canonical encoding of a point of large order.
 * Why: with a small-order public key A, [h]A is one of 8 points whatever the message,
 * so a signature can be forged without the private key. With the identity as A,
 * R = identity and S = 0 verifies for every message; OpenSSL 3.0 (node 20) accepts it,
 * and some libraries accept an all-zero key (order 4) the same way. Non-canonical
 * encodings (y >= p) are refused so one key has exactly one encoding and one keyId.
 */
export function importPublicKey(raw: Uint8Array): KeyObject {
  if (raw.byteLength !== PUBLIC_KEY_BYTES) {
    throw new TandemError('ERR_BAD_KEY', `An Ed25519 public key is ${PUBLIC_KEY_BYTES} bytes, not ${raw.byteLength}.`);
  }
  let y = 0n;
  for (let i = PUBLIC_KEY_BYTES - 1; i >= 0; i--) y = (y << 8n) | BigInt(raw[i]!);
  y &= (1n << 255n) - 1n; // the top bit is the sign of x
  if (y >= P) throw new TandemError('ERR_BAD_KEY', 'The Ed25519 public key is not canonically encoded (y >= p).');
  if (SMALL_ORDER_Y.has(y)) throw new TandemError('ERR_BAD_KEY', 'The Ed25519 public key is a small-order point.');
  // x^2 = u / v with u = y^2 - 1, v = d y^2 + 1 must have a root, else the bytes name no
  // curve point; u / v is a square exactly when u * v is (Euler's criterion), saving an inversion.
  const y2 = mod(y * y);
  if (modPow((y2 - 1n) * (D * y2 + 1n), (P - 1n) / 2n) !== 1n) throw new TandemError('ERR_BAD_KEY', 'The Ed25519 public key is not a point on the curve.');
  return createPublicKey({ key: Buffer.concat([SPKI_PREFIX, raw]), format: 'der', type: 'spki' });
}

export function sign(privateKey: KeyObject, bytes: Uint8Array): Buffer {
  assertPrivateKey(privateKey);
  return cryptoSign(null, bytes, privateKey);
}

/** False for any bad signature; throws ERR_BAD_KEY only when the key itself is unacceptable. */
export function verifySignature(publicKeyRaw: Uint8Array, bytes: Uint8Array, signature: Uint8Array): boolean {
  const key = importPublicKey(publicKeyRaw);
  if (signature.byteLength !== SIGNATURE_BYTES) return false;
  try {
    // OpenSSL also refuses S >= L, so a signature has one valid encoding (no malleability).
    return cryptoVerify(null, bytes, key, signature);
  } catch {
    return false;
  }
}

export function rawPublicKeyOf(privateKey: KeyObject): Buffer {
  assertPrivateKey(privateKey);
  return createPublicKey(privateKey).export({ format: 'der', type: 'spki' }).subarray(SPKI_PREFIX.length);
}

/**
 * Base64 that re-encodes to exactly the same text: no whitespace, no URL alphabet,
 * no missing padding, no stray bits, so signed strings and bytes map one to one.
 */
export function decodeBase64Strict(text: string, expectedBytes?: number): Buffer | undefined {
  const bytes = Buffer.from(text, 'base64');
  if (bytes.toString('base64') !== text) return undefined;
  if (expectedBytes !== undefined && bytes.byteLength !== expectedBytes) return undefined;
  return bytes;
}

// ---- Key files ----------------------------------------------------------------

export function encodePrivateKeyFile(privateKey: KeyObject): string {
  assertPrivateKey(privateKey);
  return privateKey.export({ format: 'pem', type: 'pkcs8' }).toString();
}

export function decodePrivateKeyFile(text: string): DecodedPrivateKey {
  if (/-----BEGIN ENCRYPTED PRIVATE KEY-----/.test(text)) {
    throw new TandemError('ERR_BAD_KEY', 'Encrypted private key files are not supported; decrypt it first (openssl pkey).');
  }
  const der = decodePem(text, 'PRIVATE KEY');
  let privateKey: KeyObject;
  try {
    privateKey = createPrivateKey({ key: der, format: 'der', type: 'pkcs8' });
  } catch (cause) {
    throw new TandemError('ERR_BAD_KEY', 'The private key file is not a readable PKCS#8 key.', { cause });
  }
  assertPrivateKey(privateKey);
  const publicKey = rawPublicKeyOf(privateKey);
  importPublicKey(publicKey);
  return { privateKey, publicKey, keyId: keyIdOf(publicKey) };
}

interface PublicKeyFile {
  type: 'tandem-public-key';
  algorithm: 'ed25519';
  keyId: string;
  publicKey: string;
}

const validatePublicKeyFile = compileValidator<PublicKeyFile>({
  type: 'object',
  additionalProperties: false,
  required: ['type', 'algorithm', 'keyId', 'publicKey'],
  properties: {
    type: { const: 'tandem-public-key' },
    algorithm: { const: 'ed25519' },
    keyId: KEY_ID,
    publicKey: { ...BASE64(44), minLength: 44 },
  },
}, 'ERR_BAD_KEY');

export function encodePublicKeyFile(raw: Uint8Array): string {
  importPublicKey(raw);
  const file: PublicKeyFile = {
    type: 'tandem-public-key',
    algorithm: 'ed25519',
    keyId: keyIdOf(raw),
    publicKey: Buffer.from(raw).toString('base64'),
  };
  return `${JSON.stringify(file, null, 2)}\n`;
}

/** Accepts our JSON key file or an SPKI PEM (`openssl pkey -pubout`). */
export function decodePublicKeyFile(text: string): DecodedPublicKey {
  if (/^\s*-----BEGIN /.test(text)) {
    const der = decodePem(text, 'PUBLIC KEY');
    if (der.byteLength !== SPKI_PREFIX.length + PUBLIC_KEY_BYTES || !der.subarray(0, SPKI_PREFIX.length).equals(SPKI_PREFIX)) {
      throw new TandemError('ERR_BAD_KEY', 'The PEM public key is not an Ed25519 key.');
    }
    const publicKey = Buffer.from(der.subarray(SPKI_PREFIX.length));
    importPublicKey(publicKey);
    return { publicKey, keyId: keyIdOf(publicKey) };
  }
  let json: unknown;
  try {
    json = parseSafeJson(text, { maxBytes: 4096, maxDepth: 2 });
  } catch (cause) {
    // One code for "this key file is unusable", whatever layer noticed.
    const why = cause instanceof Error ? ` (${cause.message})` : '';
    throw new TandemError('ERR_BAD_KEY', `The public key file is neither an SPKI PEM nor a Tandem JSON key file${why}.`, { cause });
  }
  const file = validatePublicKeyFile(json, 'public key file');
  const publicKey = decodeBase64Strict(file.publicKey, PUBLIC_KEY_BYTES);
  if (!publicKey) throw new TandemError('ERR_BAD_KEY', 'The public key file holds malformed base64.');
  importPublicKey(publicKey);
  const keyId = keyIdOf(publicKey);
  // A mismatch means a hand-edited or corrupted file; pinning the wrong id would lock a device out.
  if (keyId !== file.keyId) {
    throw new TandemError('ERR_BAD_KEY', 'The public key file names a keyId that is not its key\'s.', {
      details: { stated: file.keyId, actual: keyId },
    });
  }
  return { publicKey, keyId };
}

// ---- Internals ----------------------------------------------------------------

function assertPrivateKey(key: KeyObject): void {
  if (key.type !== 'private' || key.asymmetricKeyType !== 'ed25519') {
    throw new TandemError('ERR_BAD_KEY', `Expected an Ed25519 private key, got ${key.type} ${key.asymmetricKeyType ?? 'key'}.`);
  }
}

/** Exactly one PEM block with the expected label, nothing around it but whitespace. */
function decodePem(text: string, label: string): Buffer {
  const m = new RegExp(`^-----BEGIN ${label}-----\\r?\\n([A-Za-z0-9+/=\\r\\n]{1,8192})-----END ${label}-----$`).exec(text.trim());
  const der = m ? Buffer.from(m[1]!.replace(/\r?\n/g, ''), 'base64') : undefined;
  if (!der || der.byteLength === 0) {
    throw new TandemError('ERR_BAD_KEY', `Expected a PEM file with one "${label}" block.`);
  }
  return der;
}

function mod(a: bigint): bigint {
  const r = a % P;
  return r < 0n ? r + P : r;
}

function modPow(base: bigint, exp: bigint): bigint {
  let result = 1n;
  let b = mod(base);
  for (let e = exp; e > 0n; e >>= 1n) {
    if (e & 1n) result = (result * b) % P;
    b = (b * b) % P;
  }
  return result;
}
