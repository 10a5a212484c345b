/**
 * The payload manifest (payloads/FORMAT.md): what the agent holds whole, so
 * every array and string is bounded here and the reader refuses a manifest
 * above MANIFEST_MAX_BYTES before parsing it. Semantic checks that a schema
 * cannot express (extents in range, no overlap, 2 MiB per operation, blob
 * order) live in payloads/manifest-check.ts.
 */
import { compileValidator, NAME, SAFE_UINT, SEMVER, SHA256_HEX, TIMESTAMP } from '../schema-validator.ts';

export type Extent = [offset: number, length: number];

export interface ImageRef {
  size: number;
  sha256: string;
}

export interface SourceRef extends ImageRef {
  version: string;
}

export interface Blob {
  /** Compressed bytes in the data section (blobs are back to back, in apply order). */
  size: number;
  sha256: string;
  /** Decoded bytes: the outputs of the blob's operations, concatenated in order. */
  rawSize: number;
  /** Source extents whose bytes are the zstd raw-content dictionary (PATCH blobs only). */
  dict?: Extent[];
  dictSha256?: string;
}

export type Operation =
  | { op: 'REPLACE' | 'PATCH'; blob: number; dst: Extent[]; sha256: string }
  | { op: 'SOURCE_COPY' | 'TARGET_COPY'; src: Extent[]; dst: Extent[]; sha256: string }
  | { op: 'ZERO'; dst: Extent[] };

export type OperationKind = Operation['op'];

/** Every field of a manifest but its operations: what a reader keeps as parsed (payloads/operation-table.ts holds the operations). */
export interface ManifestHeader {
  type: 'tandem-manifest';
  formatVersion: 1;
  product: string;
  board: string;
  version: string;
  kind: 'full' | 'delta';
  createdAt: string;
  blockSize: 4096;
  source?: SourceRef;
  target: ImageRef;
  dataSize: number;
  blobs: Blob[];
}

/** The plain form, as the generator builds and serialises it. */
export interface Manifest extends ManifestHeader {
  operations: Operation[];
}

/** Limits that bound what a device holds; FORMAT.md explains the figures. */
export const MANIFEST_LIMITS = {
  maxOperations: 1 << 20,
  maxBlobs: 1 << 18,
  maxExtentsPerOperation: 512,
  maxDictExtents: 512,
} as const;

const EXTENT = {
  type: 'array',
  items: [
    SAFE_UINT,
    { type: 'integer', minimum: 1, maximum: Number.MAX_SAFE_INTEGER },
  ],
  minItems: 2,
  maxItems: 2,
} as const;

const EXTENTS = { type: 'array', items: EXTENT, minItems: 1, maxItems: MANIFEST_LIMITS.maxExtentsPerOperation } as const;

const OPERATION = {
  type: 'object',
  required: ['op', 'dst'],
  properties: {
    op: { enum: ['REPLACE', 'PATCH', 'SOURCE_COPY', 'TARGET_COPY', 'ZERO'] },
    blob: SAFE_UINT,
    src: EXTENTS,
    dst: EXTENTS,
    sha256: SHA256_HEX,
  },
  additionalProperties: false,
  allOf: [
    {
      if: { properties: { op: { enum: ['REPLACE', 'PATCH'] } } },
      then: { required: ['blob', 'sha256'], not: { required: ['src'] } },
    },
    {
      if: { properties: { op: { enum: ['SOURCE_COPY', 'TARGET_COPY'] } } },
      then: { required: ['src', 'sha256'], not: { required: ['blob'] } },
    },
    {
      if: { properties: { op: { const: 'ZERO' } } },
      then: { not: { anyOf: [{ required: ['src'] }, { required: ['blob'] }, { required: ['sha256'] }] } },
    },
  ],
} as const;

const BLOB = {
  type: 'object',
  required: ['size', 'sha256', 'rawSize'],
  properties: {
    size: { type: 'integer', minimum: 1, maximum: Number.MAX_SAFE_INTEGER },
    sha256: SHA256_HEX,
    rawSize: { type: 'integer', minimum: 1, maximum: Number.MAX_SAFE_INTEGER },
    dict: { type: 'array', items: EXTENT, minItems: 1, maxItems: MANIFEST_LIMITS.maxDictExtents },
    dictSha256: SHA256_HEX,
  },
  dependencies: { dict: ['dictSha256'], dictSha256: ['dict'] },
  additionalProperties: false,
} as const;

const IMAGE_REF = {
  type: 'object',
  required: ['size', 'sha256'],
  properties: { size: { type: 'integer', minimum: 1, maximum: Number.MAX_SAFE_INTEGER }, sha256: SHA256_HEX },
  additionalProperties: false,
} as const;

export const manifestSchema = {
  type: 'object',
  required: ['type', 'formatVersion', 'product', 'board', 'version', 'kind', 'createdAt', 'blockSize', 'target', 'dataSize', 'blobs', 'operations'],
  properties: {
    type: { const: 'tandem-manifest' },
    formatVersion: { const: 1 },
    product: NAME,
    board: NAME,
    version: SEMVER,
    kind: { enum: ['full', 'delta'] },
    createdAt: TIMESTAMP,
    blockSize: { const: 4096 },
    source: {
      type: 'object',
      required: ['version', 'size', 'sha256'],
      properties: { version: SEMVER, size: IMAGE_REF.properties.size, sha256: SHA256_HEX },
      additionalProperties: false,
    },
    target: IMAGE_REF,
    dataSize: SAFE_UINT,
    blobs: { type: 'array', items: BLOB, maxItems: MANIFEST_LIMITS.maxBlobs },
    operations: { type: 'array', items: OPERATION, minItems: 1, maxItems: MANIFEST_LIMITS.maxOperations },
  },
  additionalProperties: false,
  if: { required: ['kind'], properties: { kind: { const: 'delta' } } },
  then: { required: ['source'] },
  else: { not: { required: ['source'] } },
} as const;

/**
 * The reader never holds the operations as objects (payloads/manifest-parser.ts):
 * it validates each one on its own with validateOperation, and the rest of the
 * manifest with its operations spliced out (`"operations":[]`) with this schema.
 */
export const manifestHeaderSchema = {
  ...manifestSchema,
  properties: { ...manifestSchema.properties, operations: { type: 'array', maxItems: 0 } },
} as const;

export const validateManifestHeader = compileValidator<ManifestHeader & { operations: [] }>(manifestHeaderSchema, 'ERR_MANIFEST_INVALID');
/** Call with the operation's path for the message, e.g. `validateOperation(value, 'manifest', '/operations/7')`. */
export const validateOperation = compileValidator<Operation>(OPERATION, 'ERR_MANIFEST_INVALID');
