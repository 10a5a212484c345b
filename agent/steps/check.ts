/**
 * Step 1, check (DESIGN.md "Device protocol", "Keys and trust"): ask the
 * server, then believe nothing it says until it is proven. The response must
 * match the protocol schema, carry a keyring signed by the pinned (or adopted)
 * root keys and not older than the newest seen, be signed by a server key of
 * that keyring over its canonical bytes, echo our nonce and device id, and be
 * unexpired. An offered manifest must be signed by a release key and pass the
 * install policy (board, product, version, failed versions, delta source)
 * before a byte is downloaded.
 */
import { randomBytes } from 'node:crypto';
import type { HttpClient as Dispatcher } from '../http-client.ts';
import { canonicalBytes, canonicalize } from '../../shared/canonical-json.ts';
import { TandemError } from '../../shared/errors.ts';
import { verifyKeyring, verifySignedBytes, type RootTrust, type VerifiedKeyring } from '../../shared/keyring.ts';
import { decodeBase64Strict } from '../../shared/keys.ts';
import type { KeyringSignature } from '../../shared/schemas/keyring.ts';
import { CHECK_RESPONSE_DOMAIN, validateCheckResponse, type CheckRequest, type CheckResponseBody, type UpdateOffer } from '../../shared/schemas/protocol.ts';
import { MANIFEST_SIGNATURE_DOMAIN } from '../../payloads/format.ts';
import { parseManifest, parseStoredManifest } from '../../payloads/manifest-parser.ts';
import type { ManifestView } from '../../payloads/operation-table.ts';
import { sha256Hex } from '../../payloads/payload-reader.ts';
import { inspectFrame, type ZstdDecoder } from '../../payloads/zstd.ts';
import { callJson } from '../http.ts';
import type { Slot } from '../boot-control/index.ts';
import { checkInstallPolicy } from './apply.ts';
import { isoTime } from '../../shared/iso-time.ts';

export interface CheckInput {
  server: string;
  credential?: string;
  request: Omit<CheckRequest, 'nonce'>;
  trust: RootTrust;
  minKeyringVersion?: number;
  maxResponseBytes: number;
  dispatcher: Dispatcher;
  now?: () => Date;
  signal?: AbortSignal;
  /** Tolerated clock difference for issuedAt in the future (seconds). */
  clockSkewSeconds?: number;
  decoder: ZstdDecoder;
}

export interface VerifiedOffer {
  offer: UpdateOffer;
  /** The signed manifest, parsed and checked whole (the payload's copy of these bytes is not parsed again). */
  view: ManifestView;
  manifestSha256: string;
  payloadUrl: string;
}

export interface CheckResult {
  pollAfterSeconds: number;
  keyring: VerifiedKeyring;
  update?: VerifiedOffer;
}

export function newNonce(): string {
  return randomBytes(24).toString('base64url');
}

export async function runCheck(input: CheckInput): Promise<CheckResult> {
  const nonce = newNonce();
  const body: CheckRequest = { ...input.request, nonce };
  const url = `${input.server}/v1/check`;
  const { json, bytes } = await callJson({
    method: 'POST',
    url,
    body,
    ...(input.credential !== undefined ? { credential: input.credential } : {}),
    maxBytes: input.maxResponseBytes,
    dispatcher: input.dispatcher,
    ...(input.signal ? { signal: input.signal } : {}),
  });
  return verifyCheckResponse(json, {
    nonce,
    deviceId: input.request.deviceId,
    trust: input.trust,
    now: (input.now ?? (() => new Date()))(),
    server: input.server,
    clockSkewSeconds: input.clockSkewSeconds ?? 300,
    decoder: input.decoder,
    ...(input.minKeyringVersion !== undefined ? { minKeyringVersion: input.minKeyringVersion } : {}),
  }, bytes);
}

export interface ResponseExpectations {
  nonce: string;
  deviceId: string;
  trust: RootTrust;
  minKeyringVersion?: number;
  now: Date;
  server: string;
  clockSkewSeconds: number;
  /** Decodes the offered manifest; the daemon's one decoder. */
  decoder: ZstdDecoder;
}

/** Every check a response must pass, in the order that reveals the least to an attacker. */
export async function verifyCheckResponse(json: unknown, expect: ResponseExpectations, raw?: Buffer): Promise<CheckResult> {
  const response = validateCheckResponse(json, 'check response');
  const { body } = response;
  const keyring = verifyKeyring(body.keyring, expect.trust, {
    now: expect.now,
    ...(expect.minKeyringVersion !== undefined ? { minVersion: expect.minKeyringVersion } : {}),
  });
  const verify = (bytes: Uint8Array) => verifySignedBytes(bytes, [response.signature], keyring, CHECK_RESPONSE_DOMAIN, expect.now, 'server');
  const received = receivedBody(raw, response.signature);
  try {
    verify(received ?? canonicalBytes(body));
  } catch (err) {
    // The received bytes had the layout but not the signed bytes (whitespace inside a re-serialized body?): the canonical form decides.
    if (received === undefined || !(err instanceof TandemError && err.code === 'ERR_BAD_SIGNATURE')) throw err;
    verify(canonicalBytes(body));
  }
  if (body.nonce !== expect.nonce) {
    throw new TandemError('ERR_NONCE_MISMATCH', 'The check response answers another request (its nonce is not ours): a replayed response.', {
      details: { expected: expect.nonce, got: body.nonce },
    });
  }
  if (body.deviceId !== expect.deviceId) {
    throw new TandemError('ERR_DEVICE_MISMATCH', `The check response is for device ${body.deviceId}, not ${expect.deviceId}.`);
  }
  checkFreshness(body, expect.now, expect.clockSkewSeconds);
  const result: CheckResult = { pollAfterSeconds: body.pollAfterSeconds, keyring };
  if (body.result === 'update' && body.update) result.update = verifyOffer(body.update, keyring, expect);
  return result;
}

const JSON_HEAD = Buffer.from('{"body":', 'utf8');

/**
 * The body's bytes as received, when the response has the server's layout
 * `{"body":<canonical body>,"signature":<canonical signature>}`
 * (server/routes/check-response.ts): the signature is checked over them
 * instead of over the body canonicalized again, which for a big offered
 * manifest (a response of several MiB) made two more copies of it. Sound: the
 * strict parser read the whole response, and with that head and tail the
 * bytes between are the body's JSON text, which is what the signature covers.
 */
function receivedBody(raw: Buffer | undefined, signature: KeyringSignature): Buffer | undefined {
  if (raw === undefined) return undefined;
  const tail = Buffer.from(`,"signature":${canonicalize(signature)}}`, 'utf8');
  if (raw.length <= JSON_HEAD.length + tail.length) return undefined;
  if (!raw.subarray(0, JSON_HEAD.length).equals(JSON_HEAD) || !raw.subarray(raw.length - tail.length).equals(tail)) return undefined;
  return raw.subarray(JSON_HEAD.length, raw.length - tail.length);
}

function checkFreshness(body: CheckResponseBody, now: Date, skewSeconds: number): void {
  const expires = Date.parse(body.expires);
  const issued = Date.parse(body.issuedAt);
  if (!(now.getTime() < expires)) {
    throw new TandemError('ERR_RESPONSE_EXPIRED', `The check response expired at ${body.expires} (now ${isoTime(now)}): a frozen or replayed response.`, {
      details: { expires: body.expires },
    });
  }
  if (!(issued <= now.getTime() + skewSeconds * 1000) || !(issued < expires)) {
    throw new TandemError('ERR_RESPONSE_EXPIRED', `The check response claims to be issued at ${body.issuedAt}, in the future or after it expires.`, {
      details: { issuedAt: body.issuedAt },
    });
  }
}

/**
 * The manifest as stored in a payload and signed: a zstd frame of its canonical
 * JSON (format v1). Decoded (in chunks, as it is parsed) only after its
 * signature verified, bounded by the content size its frame header declares.
 */
function parseOfferedManifest(stored: Buffer, decoder: ZstdDecoder): ManifestView {
  if (stored.length < 4 || stored.readUInt32LE(0) !== 0xfd2fb528) return parseManifest(stored);
  let contentSize: number | undefined;
  try {
    contentSize = inspectFrame(stored).contentSize;
  } catch (cause) {
    throw new TandemError('ERR_MANIFEST_INVALID', `Invalid manifest: ${(cause as Error).message}`, { cause });
  }
  if (contentSize === undefined) throw new TandemError('ERR_MANIFEST_INVALID', 'Invalid manifest: its zstd frame does not declare a bounded size.');
  return parseStoredManifest(stored, contentSize, decoder);
}

function verifyOffer(offer: UpdateOffer, keyring: VerifiedKeyring, expect: ResponseExpectations): VerifiedOffer {
  const { now, server } = expect;
  const manifestBytes = decodeBase64Strict(offer.manifest);
  if (manifestBytes === undefined) throw new TandemError('ERR_OFFER_MISMATCH', 'The offered manifest is not canonical base64.');
  verifySignedBytes(manifestBytes, offer.signatures, keyring, MANIFEST_SIGNATURE_DOMAIN, now, 'release');
  const manifest = parseOfferedManifest(manifestBytes, expect.decoder);
  const mismatch = (what: string): never => {
    throw new TandemError('ERR_OFFER_MISMATCH', `The offer's ${what} disagrees with its signed manifest.`, { details: { field: what } });
  };
  if (manifest.version !== offer.version) mismatch('version');
  if (manifest.kind !== offer.payload.kind) mismatch('payload kind');
  if (manifest.kind === 'delta' && offer.payload.sourceVersion !== undefined && offer.payload.sourceVersion !== manifest.source!.version) mismatch('source version');
  // The signed manifest fixes the data section; with the prelude it fixes every byte the download may carry.
  if (offer.payload.size !== offer.payload.preludeSize + manifest.dataSize) mismatch('payload size');
  let payloadUrl: string;
  try {
    payloadUrl = new URL(offer.payload.url, `${server}/`).href;
  } catch {
    return mismatch('payload url');
  }
  if (!/^https?:$/.test(new URL(payloadUrl).protocol)) mismatch('payload url');
  return { offer, view: manifest, manifestSha256: sha256Hex(manifestBytes), payloadUrl };
}

export interface PolicyContext {
  board: string;
  product: string;
  currentVersion: string;
  failedVersions: readonly string[];
  bootedSlot: Slot;
  /** Slot capacity in bytes when known (block devices). */
  targetCapacity?: number;
}

/** The install policy on a verified offer, before any download. */
export function checkOffer(verified: VerifiedOffer, ctx: PolicyContext): void {
  checkInstallPolicy(verified.view, { ...ctx, allowDowngrade: verified.offer.allowDowngrade });
}
