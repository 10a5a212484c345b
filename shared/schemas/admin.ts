/**
 * The admin API (release managers and the `tandem` CLI): request bodies and
 * query strings, validated by ajv at the server's edge, and the response
 * shapes the CLI reads. The OpenAPI document is generated from these.
 */
import { compileValidator, NAME, SEMVER } from '../schema-validator.ts';
import { DEVICE_ID } from './protocol.ts';

export const ROLE = { enum: ['admin', 'release', 'viewer'] } as const;
const LABEL = { type: 'string', minLength: 1, maxLength: 100, pattern: '^[A-Za-z0-9][A-Za-z0-9 ._@:-]*$' } as const;
const BOOL_TEXT = { enum: ['true', 'false'] } as const;
const INT_TEXT = { type: 'string', pattern: '^(0|[1-9][0-9]{0,8})$' } as const;
/** Rollout percentage as the CLI writes it: "10%", "12.5%", "0.01%". */
export const PERCENT_TEXT = { type: 'string', maxLength: 8, pattern: '^(0|[1-9][0-9]{0,2})(\\.[0-9]{1,2})?%$' } as const;

export interface TokenCreateRequest {
  role: 'admin' | 'release' | 'viewer';
  name?: string;
}
export const tokenCreateSchema = {
  type: 'object',
  required: ['role'],
  properties: { role: ROLE, name: LABEL },
  additionalProperties: false,
} as const;

export interface EnrollmentTokenCreateRequest {
  product: string;
  channel: string;
  board?: string;
  name?: string;
  maxUses?: number;
  expiresInSeconds?: number;
}
export const enrollmentTokenCreateSchema = {
  type: 'object',
  required: ['product', 'channel'],
  properties: {
    product: NAME,
    channel: NAME,
    board: NAME,
    name: LABEL,
    maxUses: { type: 'integer', minimum: 1, maximum: 100_000_000 },
    expiresInSeconds: { type: 'integer', minimum: 60, maximum: 10 * 365 * 24 * 3600 },
  },
  additionalProperties: false,
} as const;

/** Query of `POST /v1/admin/releases` (the body is the raw image). */
export interface PublishImageQuery {
  channel: string;
  version: string;
  board: string;
  product?: string;
  steppingStone?: 'true' | 'false';
  allowDowngrade?: 'true' | 'false';
  notes?: string;
}
export const publishImageQuerySchema = {
  type: 'object',
  required: ['channel', 'version', 'board'],
  properties: {
    channel: NAME,
    version: SEMVER,
    board: NAME,
    product: NAME,
    steppingStone: BOOL_TEXT,
    allowDowngrade: BOOL_TEXT,
    notes: { type: 'string', maxLength: 1000 },
  },
  additionalProperties: false,
} as const;

/** Query of `POST /v1/admin/payloads` (the body is a payload made offline). */
export interface PublishPayloadQuery {
  channel: string;
  steppingStone?: 'true' | 'false';
  allowDowngrade?: 'true' | 'false';
  notes?: string;
}
export const publishPayloadQuerySchema = {
  type: 'object',
  required: ['channel'],
  properties: { channel: NAME, steppingStone: BOOL_TEXT, allowDowngrade: BOOL_TEXT, notes: { type: 'string', maxLength: 1000 } },
  additionalProperties: false,
} as const;

export interface ReleasePatchRequest {
  steppingStone?: boolean;
  allowDowngrade?: boolean;
  notes?: string | null;
}
export const releasePatchSchema = {
  type: 'object',
  minProperties: 1,
  properties: {
    steppingStone: { type: 'boolean' },
    allowDowngrade: { type: 'boolean' },
    notes: { anyOf: [{ type: 'null' }, { type: 'string', maxLength: 1000 }] },
  },
  additionalProperties: false,
} as const;

export interface RolloutUpdateRequest {
  /** Only needed when several products share the channel and version. */
  product?: string;
  basisPoints?: number;
  percentage?: string;
  action?: 'pause' | 'resume' | 'halt';
  reason?: string;
  failureThresholdBp?: number;
  minAttempts?: number;
}
export const rolloutUpdateSchema = {
  type: 'object',
  minProperties: 1,
  properties: {
    product: NAME,
    basisPoints: { type: 'integer', minimum: 0, maximum: 10_000 },
    percentage: PERCENT_TEXT,
    action: { enum: ['pause', 'resume', 'halt'] },
    reason: { type: 'string', minLength: 1, maxLength: 500 },
    failureThresholdBp: { type: 'integer', minimum: 0, maximum: 10_000 },
    minAttempts: { type: 'integer', minimum: 1, maximum: 1_000_000 },
  },
  additionalProperties: false,
  not: { required: ['basisPoints', 'percentage'] },
} as const;

export interface DevicePinRequest {
  version: string | null;
}
export const devicePinSchema = {
  type: 'object',
  required: ['version'],
  properties: { version: { anyOf: [{ type: 'null' }, SEMVER] } },
  additionalProperties: false,
} as const;

export interface ClearFailureRequest {
  version: string;
}
export const clearFailureSchema = {
  type: 'object',
  required: ['version'],
  properties: { version: SEMVER },
  additionalProperties: false,
} as const;

export interface DeviceListQuery {
  channel?: string;
  product?: string;
  version?: string;
  after?: string;
  limit?: string;
}
export const deviceListQuerySchema = {
  type: 'object',
  properties: { channel: NAME, product: NAME, version: SEMVER, after: DEVICE_ID, limit: INT_TEXT },
  additionalProperties: false,
} as const;

export interface ReleaseListQuery {
  channel?: string;
  product?: string;
}
export const releaseListQuerySchema = {
  type: 'object',
  properties: { channel: NAME, product: NAME },
  additionalProperties: false,
} as const;

export const limitQuerySchema = {
  type: 'object',
  properties: { limit: INT_TEXT },
  additionalProperties: false,
} as const;

export const productQuerySchema = {
  type: 'object',
  properties: { product: NAME },
  additionalProperties: false,
} as const;

export const emptyQuerySchema = { type: 'object', additionalProperties: false } as const;

// ---- Responses (what the CLI reads) -------------------------------------------

export interface RolloutView {
  basisPoints: number;
  percentage: string;
  state: 'active' | 'paused' | 'halted' | 'complete';
  failureThresholdBp: number;
  minAttempts: number;
  haltReason: string | null;
  updatedAt: string;
  updatedBy: string;
}

export interface ReleaseStatsView {
  offered: number;
  downloading: number;
  installed: number;
  rebooting: number;
  committed: number;
  rolledBack: number;
  errors: number;
  attempts: number;
  failures: number;
  errorsByCode: Record<string, number>;
}

export interface PayloadView {
  sha256: string;
  board: string;
  kind: 'full' | 'delta';
  sourceVersion: string | null;
  size: number;
  url: string;
}

export interface ReleaseView {
  id: string;
  product: string;
  channel: string;
  version: string;
  steppingStone: boolean;
  allowDowngrade: boolean;
  notes: string | null;
  createdAt: string;
  createdBy: string;
  rollout: RolloutView;
  stats: ReleaseStatsView;
  payloads: PayloadView[];
}

export interface JobView {
  id: string;
  kind: string;
  state: 'queued' | 'running' | 'done' | 'failed';
  releaseId: string | null;
  progress: number;
  message: string | null;
  error: string | null;
  createdAt: string;
  updatedAt: string;
}

export interface PublishResponse {
  release: ReleaseView;
  payload: PayloadView;
  /** The background job generating delta payloads, if any. */
  job: JobView | null;
}

export interface StatusResponse {
  channel: string;
  releases: ReleaseView[];
  adoption: { product: string; version: string | null; devices: number }[];
}

export const validateTokenCreate = compileValidator<TokenCreateRequest>(tokenCreateSchema);
export const validateEnrollmentTokenCreate = compileValidator<EnrollmentTokenCreateRequest>(enrollmentTokenCreateSchema);
export const validatePublishImageQuery = compileValidator<PublishImageQuery>(publishImageQuerySchema);
export const validatePublishPayloadQuery = compileValidator<PublishPayloadQuery>(publishPayloadQuerySchema);
export const validateReleasePatch = compileValidator<ReleasePatchRequest>(releasePatchSchema);
export const validateRolloutUpdate = compileValidator<RolloutUpdateRequest>(rolloutUpdateSchema);
export const validateDevicePin = compileValidator<DevicePinRequest>(devicePinSchema);
export const validateClearFailure = compileValidator<ClearFailureRequest>(clearFailureSchema);
export const validateDeviceListQuery = compileValidator<DeviceListQuery>(deviceListQuerySchema);
export const validateReleaseListQuery = compileValidator<ReleaseListQuery>(releaseListQuerySchema);
export const validateLimitQuery = compileValidator<{ limit?: string }>(limitQuerySchema);
export const validateProductQuery = compileValidator<{ product?: string }>(productQuerySchema);
export const validateEmptyQuery = compileValidator<Record<string, never>>(emptyQuerySchema);
