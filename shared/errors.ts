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
  // Boot control (agent/boot-control): the message starts with the backend's name
  ERR_BOOTENV_MISSING: 500,
  ERR_BOOTENV_CORRUPT: 500,
  ERR_BOOTENV_TOO_LARGE: 500,
  ERR_BOOTENV_INVALID: 400,
  ERR_BOOTENV_IO: 500,
  ERR_BOOTENV_CONFIG: 400,
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
  if (err instanceof Error && err.name === 'AbortError') {
    return new TandemError('ERR_ABORTED', 'The operation was aborted.', { cause: err });
  }
  return new TandemError('ERR_INTERNAL', 'Internal error.', { cause: err });
}
