/**
 * Signed check responses (DESIGN.md "Device protocol"), assembled from parts
 * made once. Most of a response never changes between check-ins: the keyring
 * (fixed while the server runs) and, for an update, the offer with its
 * base64 manifest (fixed until the candidates are invalidated, see
 * store/candidate-cache.ts). Re-encoding, re-canonicalising and re-validating
 * them on every check-in cost more than the database work, so:
 *
 * - an offer is built, validated against the offer part of the shared check
 *   response schema, canonicalised and encoded once per payload record, and
 *   frozen;
 * - the keyring's canonical JSON is made and encoded once per keyring document;
 * - per request, only the small fields (device, nonce, times, poll interval,
 *   result) are canonicalised and validated (the shared schema with the offer
 *   taken as validated), and the body's canonical JSON is written once, from
 *   the parts, into one buffer that is first the signed message (domain,
 *   body) and then, with `{"body":` written over the domain's last bytes and
 *   the signature after the body, the response sent as is:
 *   `{"body":<canonical body>,"signature":{...}}` is the same JSON value the
 *   object would serialise to. Encoding a 10 KB offer again, and copying it
 *   twice more into new buffers, cost as much as the rest of the response;
 * - a small response is signed on the event loop, a big one in libuv's thread
 *   pool (node:crypto's callback form), where the event loop meanwhile serves
 *   other check-ins. Ed25519 hashes the whole message twice; measured on
 *   Node 20 (x86-64): about 57 µs for a 1.2 KB message (a noUpdate answer),
 *   85 µs for 10 KB (an offer with a 4 MiB image's manifest), 100 µs for
 *   16 KB and 0.5 ms for 128 KB. Handing a job to the pool costs 10–30 µs
 *   of CPU on top, on the event loop, whatever the size: more than the
 *   event loop would save on a small message, less than it saves on a big
 *   one. SIGN_IN_POOL_ABOVE_BYTES puts the cut where signing in place
 *   holds the event loop for about 0.1 ms at most. The key id is the one
 *   derived once at start (signBytes would derive it on every call).
 *
 * The bytes signed are exactly signBytes(canonicalBytes(body), serverKey,
 * CHECK_RESPONSE_DOMAIN): test/server/check-response.test.ts compares the
 * joined parts with canonicalize(body), and the other tests verify the
 * signatures with verifySignedBytes.
 */
import { sign, type KeyObject } from 'node:crypto';
import { canonicalize } from '../../shared/canonical-json.ts';
import { TandemError } from '../../shared/errors.ts';
import type { KeyringDocument, KeyringSignature } from '../../shared/keyring.ts';
import { SIGNATURE_BYTES } from '../../shared/keys.ts';
import { compileValidator } from '../../shared/schema-validator.ts';
import {
  CHECK_RESPONSE_DOMAIN,
  checkResponseSchema,
  type CheckResponse,
  type CheckResponseBody,
  type UpdateOffer,
} from '../../shared/schemas/protocol.ts';
import type { ServerContext } from '../context.ts';
import type { PayloadRecord, Release } from '../store/store.ts';
import { payloadUrl } from '../views.ts';

const { update: offerSchema, ...perRequestFields } = checkResponseSchema.properties.body.properties;
/** The offer part of the shared schema, for an offer made once. */
const validateOffer = compileValidator<UpdateOffer>(offerSchema);
/** The shared schema with the offer (already validated by validateOffer) only required to be an object. */
const validateEnvelope = compileValidator<CheckResponse>({
  ...checkResponseSchema,
  properties: {
    ...checkResponseSchema.properties,
    body: { ...checkResponseSchema.properties.body, properties: { ...perRequestFields, update: { type: 'object' } } },
  },
});

export interface PreparedOffer {
  readonly offer: UpdateOffer;
  /** canonicalize(offer) as UTF-8, copied into each response carrying the offer. */
  readonly canonical: Buffer;
}

interface OfferEntry extends PreparedOffer {
  readonly release: Release;
  readonly config: ServerContext['config'];
}

// Keyed by the cached (frozen) payload record: a new snapshot of the candidates brings new records, so
// entries of invalidated snapshots are dropped with them. The release and config are checked too, since
// the offer carries fields of both.
const offers = new WeakMap<PayloadRecord, OfferEntry>();
const keyrings = new WeakMap<KeyringDocument, Buffer>();

export function prepareOffer(sc: Pick<ServerContext, 'config'>, release: Release, payload: PayloadRecord): PreparedOffer {
  const hit = offers.get(payload);
  if (hit && hit.release === release && hit.config === sc.config) return hit;
  const offer = validateOffer(
    {
      version: release.version,
      channel: release.channel,
      allowDowngrade: release.allowDowngrade,
      payload: {
        kind: payload.kind,
        url: payloadUrl(sc, payload.sha256),
        size: payload.size,
        sha256: payload.sha256,
        ...(payload.sourceVersion === null ? {} : { sourceVersion: payload.sourceVersion }),
        preludeSize: payload.preludeSize,
      },
      manifest: payload.manifest.toString('base64'),
      signatures: JSON.parse(payload.signatures) as KeyringSignature[],
    },
    'check response update',
  );
  const entry: OfferEntry = { offer: deepFreeze(offer), canonical: Buffer.from(canonicalize(offer), 'utf8'), release, config: sc.config };
  offers.set(payload, entry);
  return entry;
}

function canonicalKeyring(keyring: KeyringDocument): Buffer {
  let canonical = keyrings.get(keyring);
  if (canonical === undefined) {
    canonical = Buffer.from(canonicalize(keyring), 'utf8');
    keyrings.set(keyring, canonical);
  }
  return canonical;
}

export interface CheckResponseFields {
  deviceId: string;
  nonce: string;
  issuedAt: string;
  expires: string;
  pollAfterSeconds: number;
}

export interface SignedCheckResponse {
  response: CheckResponse;
  /** The response as JSON bytes, ready to send. */
  json: Buffer;
}

const DOMAIN = Buffer.from(CHECK_RESPONSE_DOMAIN, 'utf8');
const JSON_HEAD = Buffer.from('{"body":', 'utf8');
// An Ed25519 signature is always SIGNATURE_BYTES long, so the signature part's length is known before signing.
const SIGNATURE_PLACEHOLDER = 'A'.repeat(Math.ceil(SIGNATURE_BYTES / 3) * 4);
const signatureTail = (signature: KeyringSignature): string => `,"signature":${canonicalize(signature)}}`;
const tailBytesByKeyId = new Map<string, number>();

function signatureTailBytes(keyId: string): number {
  let bytes = tailBytesByKeyId.get(keyId);
  if (bytes === undefined) {
    bytes = Buffer.byteLength(signatureTail({ keyId, signature: SIGNATURE_PLACEHOLDER }), 'utf8');
    tailBytesByKeyId.set(keyId, bytes);
  }
  return bytes;
}

export async function signCheckResponse(sc: Pick<ServerContext, 'keys'>, fields: CheckResponseFields, offer: PreparedOffer | null): Promise<SignedCheckResponse> {
  const body: CheckResponseBody = { type: 'tandem-check-response', ...fields, keyring: sc.keys.keyring, result: offer === null ? 'noUpdate' : 'update' };
  if (offer !== null) body.update = offer.offer;
  const parts = canonicalBodyParts(body, canonicalKeyring(sc.keys.keyring), offer?.canonical);
  let bodyBytes = 0;
  for (const part of parts) bodyBytes += typeof part === 'string' ? Buffer.byteLength(part, 'utf8') : part.length;
  const tailBytes = signatureTailBytes(sc.keys.serverKeyId);
  // The message is DOMAIN ‖ body; the response, written over it once signed, starts JSON_HEAD's length before the body.
  const buffer = Buffer.allocUnsafe(DOMAIN.length + bodyBytes + tailBytes);
  let at = DOMAIN.copy(buffer, 0);
  for (const part of parts) at += typeof part === 'string' ? buffer.write(part, at, 'utf8') : part.copy(buffer, at);
  const signature: KeyringSignature = { keyId: sc.keys.serverKeyId, signature: (await signMessage(sc.keys.serverKey, buffer.subarray(0, at))).toString('base64') };
  const response = validateEnvelope({ body, signature }, 'check response');
  const start = DOMAIN.length - JSON_HEAD.length;
  JSON_HEAD.copy(buffer, start);
  const tail = signatureTail(signature);
  // Never a truncated response: write() stops silently at the end of the buffer.
  if (Buffer.byteLength(tail, 'utf8') !== tailBytes) throw new TandemError('ERR_INTERNAL', 'The check response signature has an unexpected length.');
  at += buffer.write(tail, at, 'utf8');
  return { response, json: buffer.subarray(start, at) };
}

/**
 * canonicalize(body) in parts, in order: the small fields' canonical JSON as strings, and the keyring's and the
 * offer's canonical JSON as the bytes made beforehand. Exported for its test.
 */
export function canonicalBodyParts(body: CheckResponseBody, keyring: Buffer, update: Buffer | undefined): (string | Buffer)[] {
  const record = body as unknown as Record<string, unknown>;
  // Plain sort compares UTF-16 code units, RFC 8785's order (as in shared/canonical-json.ts).
  const keys = Object.keys(record).filter((k) => record[k] !== undefined).sort();
  const parts: (string | Buffer)[] = [];
  let text = '{';
  for (let i = 0; i < keys.length; i++) {
    const k = keys[i]!;
    text += `${i === 0 ? '' : ','}${JSON.stringify(k)}:`;
    const made = k === 'keyring' ? keyring : k === 'update' ? update : undefined;
    if (made === undefined) {
      text += canonicalize(record[k]);
    } else {
      parts.push(text, made);
      text = '';
    }
  }
  parts.push(`${text}}`);
  return parts;
}

/** Messages up to this size are signed on the event loop, bigger ones in the thread pool (see the top of this file). */
export const SIGN_IN_POOL_ABOVE_BYTES = 16 * 1024;

const checkedKeys = new WeakSet<KeyObject>();

/** shared/keys.ts sign(), in place or in the thread pool by size; the key is checked as sign() checks it, once per key. */
function signMessage(key: KeyObject, message: Buffer): Buffer | Promise<Buffer> {
  if (!checkedKeys.has(key)) {
    if (key.type !== 'private' || key.asymmetricKeyType !== 'ed25519') {
      throw new TandemError('ERR_BAD_KEY', `Expected an Ed25519 private key, got ${key.type} ${key.asymmetricKeyType ?? 'key'}.`);
    }
    checkedKeys.add(key);
  }
  if (message.length <= SIGN_IN_POOL_ABOVE_BYTES) return sign(null, message, key);
  return new Promise((resolve, reject) => sign(null, message, key, (err, signature) => (err ? reject(err) : resolve(signature))));
}

function deepFreeze<T>(value: T): T {
  if (value !== null && typeof value === 'object' && !Object.isFrozen(value)) {
    for (const v of Object.values(value)) deepFreeze(v);
    Object.freeze(value);
  }
  return value;
}
