/**
 * The signature block follows the manifest: the keyring that names the release
 * keys (signed by the root keys a device pins) and the release-key signatures
 * over the manifest bytes. Carrying the keyring makes a payload verifiable with
 * nothing but the root public key.
 */
import { canonicalBytes } from '../shared/canonical-json.ts';
import type { KeyringDocument, KeyringSignature } from '../shared/keyring.ts';
import { TandemError } from '../shared/errors.ts';
import { parseSafeJson } from '../shared/safe-json.ts';
import { compileValidator, BASE64, KEY_ID } from '../shared/schema-validator.ts';

export interface SignatureBlock {
  keyring: KeyringDocument;
  signatures: KeyringSignature[];
}

const schema = {
  type: 'object',
  required: ['keyring', 'signatures'],
  properties: {
    // The keyring's own schema is applied by verifyKeyring.
    keyring: { type: 'object' },
    signatures: {
      type: 'array',
      minItems: 1,
      maxItems: 16,
      items: {
        type: 'object',
        required: ['keyId', 'signature'],
        properties: { keyId: KEY_ID, signature: BASE64(100) },
        additionalProperties: false,
      },
    },
  },
  additionalProperties: false,
} as const;

export const validateSignatureBlock = compileValidator<SignatureBlock>(schema, 'ERR_MANIFEST_UNSIGNED');

export function encodeSignatureBlock(block: SignatureBlock): Buffer {
  return canonicalBytes(block);
}

export function signatureBlockOf(bytes: Buffer): SignatureBlock {
  let parsed;
  try {
    parsed = parseSafeJson(bytes, { maxBytes: bytes.length, maxDepth: 8 });
  } catch (cause) {
    throw new TandemError('ERR_MANIFEST_UNSIGNED', 'The payload signature block is not valid JSON.', { cause });
  }
  return validateSignatureBlock(parsed, 'signature block');
}
