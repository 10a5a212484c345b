/**
 * Typed errors with stable codes (STYLE.md 5). Codes are API: add, never rename.
 * One table holds each code's HTTP status, so the wire shape is trivial:
 * `{"error":{"code","message","details"}}`.
 */

export const ERROR_STATUS = {
  ERR_INTERNAL: 500,
  ERR_INVALID_ARGUMENT: 400,
  // Safe JSON and schemas
  ERR_JSON_SYNTAX: 400,
  ERR_JSON_TOO_LARGE: 413,
  ERR_JSON_DUPLICATE_KEY: 400,
  ERR_JSON_FORBIDDEN_KEY: 400,
  ERR_JSON_UNSAFE_NUMBER: 400,
  ERR_JSON_TOO_DEEP: 400,
  ERR_SCHEMA: 400,
  ERR_CANONICAL_JSON: 400,
  // Keys and trust
  ERR_BAD_KEY: 422,
  ERR_BAD_SIGNATURE: 422,
  ERR_UNKNOWN_KEY: 422,
  ERR_KEY_EXPIRED: 422,
  ERR_KEY_REVOKED: 422,
  ERR_KEYRING_UNTRUSTED: 422,
  ERR_KEYRING_EXPIRED: 422,
  ERR_KEYRING_ROLLBACK: 422,
  ERR_KEYRING_INVALID: 422,
  ERR_BAD_VERSION: 400,
  // Payload format
  ERR_PAYLOAD_MAGIC: 422,
  ERR_PAYLOAD_FORMAT_VERSION: 422,
  ERR_PAYLOAD_HEADER: 422,
  ERR_PAYLOAD_TRUNCATED: 422,
  ERR_PAYLOAD_TRAILING_DATA: 422,
  ERR_MANIFEST_TOO_LARGE: 422,
  ERR_MANIFEST_INVALID: 422,
  ERR_MANIFEST_UNSIGNED: 422,
  ERR_BLOB_HASH: 422,
  ERR_BLOB_DECODE: 422,
  ERR_OPERATION_HASH: 422,
  ERR_SOURCE_HASH: 422,
  ERR_SOURCE_MISMATCH: 422,
  ERR_TARGET_HASH: 422,
  ERR_TARGET_IS_SOURCE: 400,
  ERR_WRONG_BOARD: 422,
  ERR_DOWNGRADE: 422,
  ERR_CHECKPOINT: 400,
  ERR_ABORTED: 499,
  ERR_IO: 500,
  ERR_ENCODER: 500,
  ERR_DECODER: 500,
  // Boot control (agent/boot-control): the message starts with the backend's name
  ERR_BOOTENV_MISSING: 500,
  ERR_BOOTENV_CORRUPT: 500,
  ERR_BOOTENV_TOO_LARGE: 500,
  ERR_BOOTENV_INVALID: 400,
  ERR_BOOTENV_IO: 500,
  ERR_BOOTENV_CONFIG: 400,
  // Device agent (agent/); it also uses ERR_CONFIG, ERR_NETWORK, ERR_DEVICE_MISMATCH below
  ERR_STATE_CORRUPT: 500,
  ERR_STATE_TRANSITION: 500,
  ERR_AGENT_LOCKED: 409,
  ERR_SLOT_IS_ROOT: 400,
  ERR_SLOT_UNKNOWN: 500,
  ERR_SLOT_TOO_SMALL: 422,
  ERR_NOT_ENROLLED: 401,
  ERR_HTTP_STATUS: 502,
  ERR_RESPONSE_TOO_LARGE: 502,
  ERR_NONCE_MISMATCH: 422,
  ERR_RESPONSE_EXPIRED: 422,
  ERR_OFFER_MISMATCH: 422,
  ERR_VERSION_FAILED: 422,
  ERR_DOWNLOAD_STALLED: 504,
  ERR_DOWNLOAD_TOO_LARGE: 502,
  ERR_CONTENT_RANGE: 502,
  ERR_PAYLOAD_CHANGED: 409,
  ERR_HEALTH_CHECK: 500,
  ERR_BOOT_FALLBACK: 500,
  ERR_REBOOT_FAILED: 500,
  ERR_ROLLBACK_UNSAFE: 409,
  ERR_MANUAL_ROLLBACK: 409,
  // Server (device API, admin API, payload serving)
  ERR_NOT_FOUND: 404,
  ERR_METHOD_NOT_ALLOWED: 405,
  ERR_UNAUTHORIZED: 401,
  ERR_FORBIDDEN: 403,
  ERR_CONFLICT: 409,
  ERR_BODY_TOO_LARGE: 413,
  ERR_UNSUPPORTED_MEDIA_TYPE: 415,
  ERR_RANGE_NOT_SATISFIABLE: 416,
  ERR_UNAVAILABLE: 503,
  ERR_NETWORK: 502,
  ERR_CONFIG: 400,
  ERR_ENROLLMENT_TOKEN: 401,
  ERR_DEVICE_EXISTS: 409,
  ERR_DEVICE_MISMATCH: 403,
  ERR_EVENT_CONFLICT: 409,
  ERR_RELEASE_EXISTS: 409,
  ERR_AMBIGUOUS: 409,
  ERR_ROLLOUT_STATE: 409,
} as const;

export type ErrorCode = keyof typeof ERROR_STATUS;

export interface TandemErrorOptions {
  details?: Record<string, unknown>;
  cause?: unknown;
  status?: number;
}

export class TandemError extends Error {
  override name = 'TandemError';
  readonly code: ErrorCode;
  readonly status: number;
  readonly details: Record<string, unknown> | undefined;

  constructor(code: ErrorCode, message: string, options: TandemErrorOptions = {}) {
    super(message, options.cause === undefined ? undefined : { cause: options.cause });
    this.code = code;
    this.status = options.status ?? ERROR_STATUS[code];
    this.details = options.details;
  }

  /** The one JSON shape every error takes on the wire. */
  toJSON(): ErrorBody {
    const error: ErrorBody['error'] = { code: this.code, message: this.message };
    if (this.details !== undefined) error.details = this.details;
    return { error };
  }
}

export interface ErrorBody {
  error: { code: string; message: string; details?: Record<string, unknown> };
}

export function isTandemError(err: unknown, code?: ErrorCode): err is TandemError {
  return err instanceof TandemError && (code === undefined || err.code === code);
}

/** Anything thrown becomes a TandemError; unknown failures become ERR_INTERNAL with no internals exposed. */
export function toTandemError(err: unknown): TandemError {
  if (err instanceof TandemError) return err;
  // On Node 20 an abort reason is a DOMException, which is not an instance of Error.
  if ((err as { name?: unknown } | null)?.name === 'AbortError') {
    return new TandemError('ERR_ABORTED', 'The operation was aborted.', { cause: err });
  }
  return new TandemError('ERR_INTERNAL', 'Internal error.', { cause: err });
}
