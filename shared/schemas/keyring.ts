/**
 * The keyring document (DESIGN.md "Keys and trust"): TUF-like, a `signed` part
 * naming the root set and the release keys, plus root signatures over it.
 * Every array is bounded so a hostile keyring costs a bounded number of verifies.
 */
import { BASE64, KEY_ID, TIMESTAMP, compileValidator } from '../schema-validator.ts';

export const MAX_ROOT_KEYS = 16;
export const MAX_RELEASE_KEYS = 64;
export const MAX_SERVER_KEYS = 16;
export const MAX_KEYRING_SIGNATURES = 32;

export interface KeyringKey {
  keyId: string;
  publicKey: string;
}

export interface KeyringReleaseKey extends KeyringKey {
  expires: string;
  revoked?: true;
}

export interface KeyringSigned {
  type: 'tandem-keyring';
  version: number;
  expires: string;
  roots: { threshold: number; keys: KeyringKey[] };
  releaseKeys: KeyringReleaseKey[];
  serverKeys?: KeyringReleaseKey[];
}

export interface KeyringSignature {
  keyId: string;
  signature: string;
}

export interface KeyringDocument {
  signed: KeyringSigned;
  signatures: KeyringSignature[];
}

// 32 bytes are exactly 44 base64 characters, 64 bytes exactly 88.
const PUBLIC_KEY_B64 = { ...BASE64(44), minLength: 44 };
const SIGNATURE_B64 = { ...BASE64(88), minLength: 88 };

const KEY = {
  type: 'object',
  additionalProperties: false,
  required: ['keyId', 'publicKey'],
  properties: { keyId: KEY_ID, publicKey: PUBLIC_KEY_B64 },
} as const;

export const SIGNATURE_SCHEMA = {
  type: 'object',
  additionalProperties: false,
  required: ['keyId', 'signature'],
  properties: { keyId: KEY_ID, signature: SIGNATURE_B64 },
} as const;

export const KEYRING_SCHEMA = {
  type: 'object',
  additionalProperties: false,
  required: ['signed', 'signatures'],
  properties: {
    signed: {
      type: 'object',
      additionalProperties: false,
      required: ['type', 'version', 'expires', 'roots', 'releaseKeys'],
      properties: {
        type: { const: 'tandem-keyring' },
        version: { type: 'integer', minimum: 1, maximum: Number.MAX_SAFE_INTEGER },
        expires: TIMESTAMP,
        roots: {
          type: 'object',
          additionalProperties: false,
          required: ['threshold', 'keys'],
          properties: {
            threshold: { type: 'integer', minimum: 1, maximum: MAX_ROOT_KEYS },
            keys: { type: 'array', minItems: 1, maxItems: MAX_ROOT_KEYS, items: KEY },
          },
        },
        releaseKeys: {
          type: 'array',
          maxItems: MAX_RELEASE_KEYS,
          items: {
            type: 'object',
            additionalProperties: false,
            required: ['keyId', 'publicKey', 'expires'],
            properties: {
              keyId: KEY_ID,
              publicKey: PUBLIC_KEY_B64,
              expires: TIMESTAMP,
              // Only `true` or absent: one encoding per meaning, so one canonical signed form.
              revoked: { type: 'boolean', const: true },
            },
          },
        },
        // Online keys of the update server: they sign check-in responses, never manifests.
        serverKeys: {
          type: 'array',
          maxItems: MAX_SERVER_KEYS,
          items: {
            type: 'object',
            additionalProperties: false,
            required: ['keyId', 'publicKey', 'expires'],
            properties: {
              keyId: KEY_ID,
              publicKey: PUBLIC_KEY_B64,
              expires: TIMESTAMP,
              // Only `true` or absent: one encoding per meaning, so one canonical signed form.
              revoked: { type: 'boolean', const: true },
            },
          },
        },
      },
    },
    signatures: { type: 'array', maxItems: MAX_KEYRING_SIGNATURES, items: SIGNATURE_SCHEMA },
  },
} as const;

export const validateKeyringDocument = compileValidator<KeyringDocument>(KEYRING_SCHEMA, 'ERR_KEYRING_INVALID');
