/**
 * The device protocol (DESIGN.md "Device protocol"): every body either side
 * sends, validated by ajv on both ends. Check responses travel in a signed
 * envelope: the server's online key (listed in the root-signed keyring as a
 * server key) signs canonical JSON of the body, which carries the device's
 * nonce and a short expiry, so a replayed or frozen response is refused.
 */
import type { KeyringDocument, KeyringSignature } from '../keyring.ts';
import { BASE64, compileValidator, NAME, SAFE_UINT, SEMVER, SHA256_HEX, TIMESTAMP } from '../schema-validator.ts';

export const CHECK_RESPONSE_DOMAIN = 'tandem-check-response-v1\n';

/** Device ids: printable, path- and log-safe. */
export const DEVICE_ID = { type: 'string', minLength: 1, maxLength: 128, pattern: '^[A-Za-z0-9][A-Za-z0-9._:-]*$' } as const;
const NONCE = { type: 'string', minLength: 16, maxLength: 128, pattern: '^[A-Za-z0-9_-]+$' } as const;
const SLOT = { enum: ['A', 'B'] } as const;

export interface CheckRequest {
  deviceId: string;
  product: string;
  board: string;
  channel: string;
  /** Version the device runs now (the booted slot). */
  version: string;
  slot: 'A' | 'B';
  /** Versions that failed on this device (install errors, rollbacks, bootloader fallbacks). */
  failedVersions: string[];
  /** Set after repeated delta failures: the server then offers full payloads only. */
  deltaFailed?: boolean;
  /** Newest keyring version the device trusts, so the server never sends an older one. */
  keyringVersion?: number;
  nonce: string;
}

export const checkRequestSchema = {
  type: 'object',
  required: ['deviceId', 'product', 'board', 'channel', 'version', 'slot', 'failedVersions', 'nonce'],
  properties: {
    deviceId: DEVICE_ID,
    product: NAME,
    board: NAME,
    channel: NAME,
    version: SEMVER,
    slot: SLOT,
    failedVersions: { type: 'array', items: SEMVER, maxItems: 64 },
    deltaFailed: { type: 'boolean' },
    keyringVersion: { type: 'integer', minimum: 1, maximum: Number.MAX_SAFE_INTEGER },
    nonce: NONCE,
  },
  additionalProperties: false,
} as const;

export interface PayloadOffer {
  kind: 'full' | 'delta';
  /** Absolute URL, or a path relative to the server (content-addressed: /v1/payloads/<sha256>). */
  url: string;
  size: number;
  sha256: string;
  sourceVersion?: string;
  /** Bytes of header + manifest + signature block: what to re-fetch to resume. */
  preludeSize: number;
}

export interface UpdateOffer {
  version: string;
  channel: string;
  /** A release manager marked this release as an allowed rollback target (downgrade). */
  allowDowngrade: boolean;
  payload: PayloadOffer;
  /** The manifest bytes (base64) and their release-key signatures, checkable before any download. */
  manifest: string;
  signatures: KeyringSignature[];
}

export interface CheckResponseBody {
  type: 'tandem-check-response';
  deviceId: string;
  nonce: string;
  issuedAt: string;
  expires: string;
  /** Seconds until the next check, jitter already applied by the server. */
  pollAfterSeconds: number;
  keyring: KeyringDocument;
  result: 'noUpdate' | 'update';
  update?: UpdateOffer;
}

export interface CheckResponse {
  body: CheckResponseBody;
  signature: KeyringSignature;
}

const SIGNATURE = {
  type: 'object',
  required: ['keyId', 'signature'],
  properties: { keyId: SHA256_HEX, signature: BASE64(100) },
  additionalProperties: false,
} as const;

export const checkResponseSchema = {
  type: 'object',
  required: ['body', 'signature'],
  properties: {
    body: {
      type: 'object',
      required: ['type', 'deviceId', 'nonce', 'issuedAt', 'expires', 'pollAfterSeconds', 'keyring', 'result'],
      properties: {
        type: { const: 'tandem-check-response' },
        deviceId: DEVICE_ID,
        nonce: NONCE,
        issuedAt: TIMESTAMP,
        expires: TIMESTAMP,
        pollAfterSeconds: { type: 'integer', minimum: 1, maximum: 7 * 24 * 3600 },
        // Validated in full by verifyKeyring.
        keyring: { type: 'object' },
        result: { enum: ['noUpdate', 'update'] },
        update: {
          type: 'object',
          required: ['version', 'channel', 'allowDowngrade', 'payload', 'manifest', 'signatures'],
          properties: {
            version: SEMVER,
            channel: NAME,
            allowDowngrade: { type: 'boolean' },
            payload: {
              type: 'object',
              required: ['kind', 'url', 'size', 'sha256', 'preludeSize'],
              properties: {
                kind: { enum: ['full', 'delta'] },
                url: { type: 'string', minLength: 1, maxLength: 2048 },
                size: { type: 'integer', minimum: 1, maximum: Number.MAX_SAFE_INTEGER },
                sha256: SHA256_HEX,
                sourceVersion: SEMVER,
                preludeSize: { type: 'integer', minimum: 1, maximum: Number.MAX_SAFE_INTEGER },
              },
              additionalProperties: false,
            },
            manifest: BASE64(96 * 1024 * 1024),
            signatures: { type: 'array', items: SIGNATURE, minItems: 1, maxItems: 16 },
          },
          additionalProperties: false,
        },
      },
      additionalProperties: false,
      if: { required: ['result'], properties: { result: { const: 'update' } } },
      then: { required: ['update'] },
      else: { not: { required: ['update'] } },
    },
    signature: SIGNATURE,
  },
  additionalProperties: false,
} as const;

export const EVENT_TYPES = ['downloading', 'installed', 'rebooting', 'committed', 'rolledBack', 'error'] as const;
export type EventType = (typeof EVENT_TYPES)[number];

export interface DeviceEvent {
  /** Unique per event (a UUID): a retried report is counted once. */
  id: string;
  type: EventType;
  /** The release the event is about. */
  version: string;
  channel: string;
  at: string;
  /** Stable error code (ERR_*) for `error` and `rolledBack`. */
  code?: string;
  message?: string;
  /** Download/apply progress in bytes, for `downloading`. */
  progress?: { done: number; total: number };
  /** Payload kind the event concerns (so delta failures can be told from full ones). */
  payloadKind?: 'full' | 'delta';
}

export interface EventsRequest {
  deviceId: string;
  events: DeviceEvent[];
}

export const eventsRequestSchema = {
  type: 'object',
  required: ['deviceId', 'events'],
  properties: {
    deviceId: DEVICE_ID,
    events: {
      type: 'array',
      minItems: 1,
      maxItems: 100,
      items: {
        type: 'object',
        required: ['id', 'type', 'version', 'channel', 'at'],
        properties: {
          id: { type: 'string', minLength: 8, maxLength: 64, pattern: '^[A-Za-z0-9_-]+$' },
          type: { enum: EVENT_TYPES },
          version: SEMVER,
          channel: NAME,
          at: TIMESTAMP,
          code: { type: 'string', maxLength: 64, pattern: '^ERR_[A-Z0-9_]+$' },
          message: { type: 'string', maxLength: 1024 },
          progress: {
            type: 'object',
            required: ['done', 'total'],
            properties: { done: SAFE_UINT, total: SAFE_UINT },
            additionalProperties: false,
          },
          payloadKind: { enum: ['full', 'delta'] },
        },
        additionalProperties: false,
      },
    },
  },
  additionalProperties: false,
} as const;

export interface EnrollRequest {
  token: string;
  deviceId: string;
  product: string;
  board: string;
  channel: string;
}

export interface EnrollResponse {
  deviceId: string;
  /** Secret the device presents as `Authorization: Bearer <credential>` on device calls. */
  credential: string;
  channel: string;
}

export const enrollRequestSchema = {
  type: 'object',
  required: ['token', 'deviceId', 'product', 'board', 'channel'],
  properties: {
    token: { type: 'string', minLength: 16, maxLength: 256, pattern: '^[A-Za-z0-9_.-]+$' },
    deviceId: DEVICE_ID,
    product: NAME,
    board: NAME,
    channel: NAME,
  },
  additionalProperties: false,
} as const;

export const enrollResponseSchema = {
  type: 'object',
  required: ['deviceId', 'credential', 'channel'],
  properties: {
    deviceId: DEVICE_ID,
    credential: { type: 'string', minLength: 16, maxLength: 256, pattern: '^[A-Za-z0-9_.-]+$' },
    channel: NAME,
  },
  additionalProperties: false,
} as const;

export const validateCheckRequest = compileValidator<CheckRequest>(checkRequestSchema);
export const validateCheckResponse = compileValidator<CheckResponse>(checkResponseSchema);
export const validateEventsRequest = compileValidator<EventsRequest>(eventsRequestSchema);
export const validateEnrollRequest = compileValidator<EnrollRequest>(enrollRequestSchema);
export const validateEnrollResponse = compileValidator<EnrollResponse>(enrollResponseSchema);
