/**
 * Signed check responses (DESIGN.md "Device protocol"), assembled from parts
 * made once. Most of a response never changes between check-ins: the keyring
 * (fixed while the server runs) and, for an update, the offer with its
 * base64 manifest (fixed until the candidates are invalidated, see
 * store/candidate-cache.ts). Re-encoding, re-canonicalising and re-validating
 * them on every check-in cost more than the database work, so:
 *
 * - an offer is built, validated against the offer part of the shared check
 *   response schema and canonicalised once per payload record, and frozen;
 * - the keyring's canonical JSON is made once per keyring document;
 * - per request, only the small fields (device, nonce, times, poll interval,
 *   result) are canonicalised and validated (the shared schema with the offer
 *   taken as validated), the body's canonical JSON is joined from the parts,
 *   signed, and sent as is: `{"body":<canonical body>,"signature":{...}}`
 *   is the same JSON value the object would serialise to;
 * - the signature is computed in libuv's thread pool (node:crypto's callback
 *   form), not on the event loop: Ed25519 hashes the whole body twice, about
 *   0.1 ms for a small response and 1 ms for one carrying a 90 KB manifest,
 *   and the event loop meanwhile serves other check-ins. The key id is the one
 *   derived once at start (signBytes would derive it on every call).
 *
 * The bytes signed are exactly signBytes(canonicalBytes(body), serverKey,
 * CHECK_RESPONSE_DOMAIN): test/server/check-response.test.ts compares the
 * joined canonical JSON with canonicalize(body), and the other tests verify
 * the signatures with verifySignedBytes.
 */
import { sign, type KeyObject } from 'node:crypto';
import { canonicalize } from '../../shared/canonical-json.ts';
import { TandemError } from '../../shared/errors.ts';
import type { KeyringDocument, KeyringSignature } from '../../shared/keyring.ts';
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
  readonly canonical: string;
}

interface OfferEntry extends PreparedOffer {
  readonly release: Release;
  readonly config: ServerContext['config'];
}

// Keyed by the cached (frozen) payload record: a new snapshot of the candidates brings new records, so
// entries of invalidated snapshots are dropped with them. The release and config are checked too, since
// the offer carries fields of both.
const offers = new WeakMap<PayloadRecord, OfferEntry>();
const keyrings = new WeakMap<KeyringDocument, string>();

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
  const entry: OfferEntry = { offer: deepFreeze(offer), canonical: canonicalize(offer), release, config: sc.config };
  offers.set(payload, entry);
  return entry;
}

function canonicalKeyring(keyring: KeyringDocument): string {
  let canonical = keyrings.get(keyring);
  if (canonical === undefined) {
    canonical = canonicalize(keyring);
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

const DOMAIN_LENGTH = Buffer.byteLength(CHECK_RESPONSE_DOMAIN, 'utf8');
const JSON_HEAD = Buffer.from('{"body":', 'utf8');

export async function signCheckResponse(sc: Pick<ServerContext, 'keys'>, fields: CheckResponseFields, offer: PreparedOffer | null): Promise<SignedCheckResponse> {
  const body: CheckResponseBody = {
    type: 'tandem-check-response',
    ...fields,
    keyring: sc.keys.keyring,
    result: offer === null ? 'noUpdate' : 'update',
    ...(offer === null ? {} : { update: offer.offer }),
  };
  // The domain, then the canonical body: the signed message, whose tail is also the body sent (encoded once).
  const message = Buffer.from(CHECK_RESPONSE_DOMAIN + canonicalBody(body, canonicalKeyring(sc.keys.keyring), offer?.canonical), 'utf8');
  const signature: KeyringSignature = { keyId: sc.keys.serverKeyId, signature: (await signInThreadPool(sc.keys.serverKey, message)).toString('base64') };
  const response = validateEnvelope({ body, signature }, 'check response');
  const json = Buffer.concat([JSON_HEAD, message.subarray(DOMAIN_LENGTH), Buffer.from(`,"signature":${canonicalize(signature)}}`, 'utf8')]);
  return { response, json };
}

/** canonicalize(body), with the keyring's and the offer's canonical JSON made beforehand. Exported for its test. */
export function canonicalBody(body: CheckResponseBody, keyring: string, update: string | undefined): string {
  const record = body as unknown as Record<string, unknown>;
  // Plain sort compares UTF-16 code units, RFC 8785's order (as in shared/canonical-json.ts).
  const keys = Object.keys(record).filter((k) => record[k] !== undefined).sort();
  const parts = keys.map((k) => `${JSON.stringify(k)}:${k === 'keyring' ? keyring : k === 'update' ? update! : canonicalize(record[k])}`);
  return `{${parts.join(',')}}`;
}

const checkedKeys = new WeakSet<KeyObject>();

/** shared/keys.ts sign(), in the thread pool; the key is checked as sign() checks it, once per key. */
function signInThreadPool(key: KeyObject, message: Buffer): Promise<Buffer> {
  if (!checkedKeys.has(key)) {
    if (key.type !== 'private' || key.asymmetricKeyType !== 'ed25519') {
      throw new TandemError('ERR_BAD_KEY', `Expected an Ed25519 private key, got ${key.type} ${key.asymmetricKeyType ?? 'key'}.`);
    }
    checkedKeys.add(key);
  }
  return new Promise((resolve, reject) => sign(null, message, key, (err, signature) => (err ? reject(err) : resolve(signature))));
}

function deepFreeze<T>(value: T): T {
  if (value !== null && typeof value === 'object' && !Object.isFrozen(value)) {
    for (const v of Object.values(value)) deepFreeze(v);
    Object.freeze(value);
  }
  return value;
}
