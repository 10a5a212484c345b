import test from 'ava';
import { createHash, createPublicKey, generateKeyPairSync, verify as cryptoVerify } from 'node:crypto';
import { isTandemError } from '../../shared/errors.ts';
import {
  decodePrivateKeyFile,
  decodePublicKeyFile,
  encodePrivateKeyFile,
  encodePublicKeyFile,
  generateKeyPair,
  importPublicKey,
  keyIdOf,
  sign,
  verifySignature,
} from '../../shared/keys.ts';

const P = (1n << 255n) - 19n;
const L = (1n << 252n) + 27742317777372353535851937790883648493n;
const MESSAGE = Buffer.from('tandem test message');

function le32(n: bigint): Buffer {
  const out = Buffer.alloc(32);
  for (let i = 0; i < 32; i++, n >>= 8n) out[i] = Number(n & 0xffn);
  return out;
}

function leToBigint(bytes: Uint8Array): bigint {
  let n = 0n;
  for (let i = bytes.length - 1; i >= 0; i--) n = (n << 8n) | BigInt(bytes[i]!);
  return n;
}

const badKey = { code: 'ERR_BAD_KEY' } as const;

// libsodium's ed25519_ref10.c `has_small_order` blacklist, copied as bytes so the test
// does not share the module's arithmetic. Each is checked with the sign bit clear and set.
const LIBSODIUM_BLACKLIST = [
  '0000000000000000000000000000000000000000000000000000000000000000', // 0 (order 4)
  '0100000000000000000000000000000000000000000000000000000000000000', // 1 (identity)
  '26e8958fc2b227b045c3f489f2ef98f0d5dfac05d3c63339b13802886d53fc05', // order 8
  'c7176a703d4dd84fba3c0b760d10670f2a2053fa2c39ccc64ec7fd7792ac037a', // order 8
  'ecffffffffffffffffffffffffffffffffffffffffffffffffffffffffffff7f', // p-1 (order 2)
  'edffffffffffffffffffffffffffffffffffffffffffffffffffffffffffff7f', // p (non-canonical 0)
  'eeffffffffffffffffffffffffffffffffffffffffffffffffffffffffffff7f', // p+1 (non-canonical 1)
].map((hex) => Buffer.from(hex, 'hex'));
const SMALL_ORDER_ENCODINGS = LIBSODIUM_BLACKLIST.flatMap((b) => {
  const signed = Buffer.from(b);
  signed[31]! |= 0x80;
  return [b, signed];
});

test('generateKeyPair gives a 32-byte key named by its sha256', (t) => {
  const { publicKey } = generateKeyPair();
  t.is(publicKey.length, 32);
  t.is(keyIdOf(publicKey), createHash('sha256').update(publicKey).digest('hex'));
  t.regex(keyIdOf(publicKey), /^[0-9a-f]{64}$/);
  t.notThrows(() => importPublicKey(publicKey));
});

test('sign and verify round trip; any change fails', (t) => {
  const { publicKey, privateKey } = generateKeyPair();
  const other = generateKeyPair();
  const sig = sign(privateKey, MESSAGE);
  t.is(sig.length, 64);
  t.true(verifySignature(publicKey, MESSAGE, sig));
  t.false(verifySignature(other.publicKey, MESSAGE, sig));
  t.false(verifySignature(publicKey, Buffer.from('tandem test messagE'), sig));
  for (const i of [0, 31, 32, 63]) {
    const bad = Buffer.from(sig);
    bad[i]! ^= 1;
    t.false(verifySignature(publicKey, MESSAGE, bad), `bit flip at ${i}`);
  }
  t.false(verifySignature(publicKey, MESSAGE, sig.subarray(0, 63)));
  t.false(verifySignature(publicKey, MESSAGE, Buffer.concat([sig, Buffer.alloc(1)])));
  t.false(verifySignature(publicKey, MESSAGE, Buffer.alloc(0)));
  t.false(verifySignature(publicKey, MESSAGE, Buffer.alloc(64)));
});

test('a malleated signature (S + L) is refused', (t) => {
  const { publicKey, privateKey } = generateKeyPair();
  const sig = sign(privateKey, MESSAGE);
  const s = leToBigint(sig.subarray(32)) + L;
  t.true(s < 1n << 256n);
  t.false(verifySignature(publicKey, MESSAGE, Buffer.concat([sig.subarray(0, 32), le32(s)])));
});

test('importPublicKey refuses wrong lengths', (t) => {
  for (const n of [0, 31, 33, 64]) t.throws(() => importPublicKey(Buffer.alloc(n, 9)), badKey);
});

test('importPublicKey refuses every small-order point, canonical or not', (t) => {
  t.is(SMALL_ORDER_ENCODINGS.length, 14);
  for (const raw of SMALL_ORDER_ENCODINGS) {
    const err = t.throws(() => importPublicKey(raw), badKey);
    t.truthy(err, raw.toString('hex'));
  }
  // The all-zero key and the identity, named explicitly.
  t.throws(() => importPublicKey(Buffer.alloc(32)), { ...badKey, message: /small-order/ });
  t.throws(() => importPublicKey(le32(1n)), { ...badKey, message: /small-order/ });
});

test('importPublicKey refuses non-canonical encodings (y >= p) of valid points', (t) => {
  let checked = 0;
  for (let k = 2n; k <= 18n; k++) {
    // p + k still fits in 255 bits for k <= 18; it aliases y = k.
    t.throws(() => importPublicKey(le32(P + k)), { ...badKey, message: /canonical/ });
    try {
      importPublicKey(le32(k));
      checked++;
    } catch (err) {
      t.true(isTandemError(err, 'ERR_BAD_KEY') && /not a point/.test(err.message));
    }
  }
  t.true(checked > 0, 'at least one y in 2..18 is a valid point, so the refusal above is about the encoding');
});

test('a forged signature (R = identity, S = 0) over a small-order key cannot pass', (t) => {
  const forged = Buffer.concat([le32(1n), Buffer.alloc(32)]);
  // Why the check exists: OpenSSL itself may accept this for the identity key.
  const spki = Buffer.concat([Buffer.from('302a300506032b6570032100', 'hex'), le32(1n)]);
  t.log('OpenSSL alone accepts the forgery:', cryptoVerify(null, MESSAGE, createPublicKey({ key: spki, format: 'der', type: 'spki' }), forged));
  for (const key of SMALL_ORDER_ENCODINGS) {
    for (const R of SMALL_ORDER_ENCODINGS) {
      t.throws(() => verifySignature(key, MESSAGE, Buffer.concat([R, Buffer.alloc(32)])), badKey);
    }
  }
});

test('sign refuses anything but an Ed25519 private key', (t) => {
  const { privateKey } = generateKeyPair();
  t.throws(() => sign(createPublicKey(privateKey), MESSAGE), badKey);
  t.throws(() => sign(generateKeyPairSync('ec', { namedCurve: 'P-256' }).privateKey, MESSAGE), badKey);
  t.throws(() => sign(generateKeyPairSync('ed448').privateKey, MESSAGE), badKey);
});

test('private key file round trip', (t) => {
  const { publicKey, privateKey } = generateKeyPair();
  const text = encodePrivateKeyFile(privateKey);
  t.regex(text, /^-----BEGIN PRIVATE KEY-----\n/);
  const decoded = decodePrivateKeyFile(text);
  t.deepEqual(decoded.publicKey, publicKey);
  t.is(decoded.keyId, keyIdOf(publicKey));
  t.true(verifySignature(publicKey, MESSAGE, sign(decoded.privateKey, MESSAGE)));
  t.is(decodePrivateKeyFile(`\n${text.replace(/\n/g, '\r\n')}\n`).keyId, decoded.keyId);
});

test('malformed private key files are refused with ERR_BAD_KEY', (t) => {
  const { privateKey } = generateKeyPair();
  const good = encodePrivateKeyFile(privateKey);
  const ec = generateKeyPairSync('ec', { namedCurve: 'P-256' }).privateKey.export({ format: 'pem', type: 'pkcs8' }).toString();
  const encrypted = privateKey.export({ format: 'pem', type: 'pkcs8', cipher: 'aes-256-cbc', passphrase: 'x' }).toString();
  const publicPem = createPublicKey(privateKey).export({ format: 'pem', type: 'spki' }).toString();
  t.throws(() => decodePrivateKeyFile(ec), { ...badKey, message: /Ed25519/ });
  t.throws(() => decodePrivateKeyFile(encrypted), { ...badKey, message: /Encrypted/ });
  t.throws(() => decodePrivateKeyFile(publicPem), badKey);
  t.throws(() => decodePrivateKeyFile(good + good), badKey);
  t.throws(() => decodePrivateKeyFile(''), badKey);
  t.throws(() => decodePrivateKeyFile('not a key'), badKey);
  t.throws(() => decodePrivateKeyFile(good.replace(/\n(.)/, '\nA$1')), badKey);
});

test('public key file round trip, JSON and SPKI PEM', (t) => {
  const { publicKey, privateKey } = generateKeyPair();
  const text = encodePublicKeyFile(publicKey);
  const json = JSON.parse(text) as Record<string, unknown>;
  t.deepEqual(Object.keys(json).sort(), ['algorithm', 'keyId', 'publicKey', 'type']);
  t.is(json.type, 'tandem-public-key');
  t.deepEqual(decodePublicKeyFile(text), { publicKey, keyId: keyIdOf(publicKey) });
  const pem = createPublicKey(privateKey).export({ format: 'pem', type: 'spki' }).toString();
  t.deepEqual(decodePublicKeyFile(pem), { publicKey, keyId: keyIdOf(publicKey) });
});

test('malformed public key files are refused with ERR_BAD_KEY', (t) => {
  const { publicKey, privateKey } = generateKeyPair();
  const file = JSON.parse(encodePublicKeyFile(publicKey)) as Record<string, unknown>;
  const withField = (patch: Record<string, unknown>) => JSON.stringify({ ...file, ...patch });
  const zero = Buffer.alloc(32);
  const cases: Record<string, string> = {
    'wrong keyId': withField({ keyId: keyIdOf(generateKeyPair().publicKey) }),
    'extra field': withField({ comment: 'x' }),
    'wrong type': withField({ type: 'tandem-private-key' }),
    'wrong algorithm': withField({ algorithm: 'ed448' }),
    'missing keyId': JSON.stringify({ ...file, keyId: undefined }),
    'non-canonical base64': withField({ publicKey: (file.publicKey as string).replace(/.=$/, (m) => (m === 'B=' ? 'C=' : 'B=')) }),
    'url-safe base64': withField({ publicKey: (file.publicKey as string).replace(/=$/, '_') }),
    'all-zero key': withField({ publicKey: zero.toString('base64'), keyId: keyIdOf(zero) }),
    'identity key': withField({ publicKey: le32(1n).toString('base64'), keyId: keyIdOf(le32(1n)) }),
    'duplicate JSON key': encodePublicKeyFile(publicKey).replace('{', `{"keyId":"${file.keyId as string}",`),
    'not JSON': '{"type":',
    empty: '',
    'EC public PEM': generateKeyPairSync('ec', { namedCurve: 'P-256' }).publicKey.export({ format: 'pem', type: 'spki' }).toString(),
    'private PEM': encodePrivateKeyFile(privateKey),
    'all-zero SPKI PEM': `-----BEGIN PUBLIC KEY-----\n${Buffer.concat([Buffer.from('302a300506032b6570032100', 'hex'), zero]).toString('base64')}\n-----END PUBLIC KEY-----\n`,
  };
  for (const [name, text] of Object.entries(cases)) {
    const err = t.throws(() => decodePublicKeyFile(text), badKey, name);
    t.truthy(err?.message, name);
  }
  t.throws(() => encodePublicKeyFile(zero), badKey);
});
