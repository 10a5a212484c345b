/**
 * Payloads assembled by hand for hostile-manifest tests: any manifest object
 * (or raw manifest bytes) plus raw data-section bytes, SIGNED with the test
 * release key. The signature verifies, so only the reader's semantic checks
 * (schema, payloads/manifest-check.ts, frame inspection, hashes) stand between
 * these bytes and the apply engine — which is what the tests exercise.
 */
import { execFileSync } from 'node:child_process';
import { createHash, type KeyObject } from 'node:crypto';
import { canonicalBytes } from '../../shared/canonical-json.ts';
import { signBytes, type KeyringDocument } from '../../shared/keyring.ts';
import type { Blob, Extent, Manifest, Operation } from '../../shared/schemas/manifest.ts';
import { encodeHeader, MANIFEST_SIGNATURE_DOMAIN } from '../../payloads/format.ts';
import { encodeSignatureBlock } from '../../payloads/signature-block.ts';
import { createEncoder, type Encoder } from '../../payloads/zstd.ts';
import type { TestTrust } from './trust.ts';

export function sha256Hex(bytes: Uint8Array): string {
  return createHash('sha256').update(bytes).digest('hex');
}

/** The bytes `extents` name in `image`, concatenated. */
export function bytesAt(image: Uint8Array, extents: readonly Extent[]): Buffer {
  return Buffer.concat(extents.map(([offset, length]) => image.subarray(offset, offset + length)));
}

export interface CraftOptions {
  /** Signed and shipped instead of canonicalBytes(manifest): non-canonical text, numbers JS cannot hold. */
  manifestBytes?: Buffer;
  /** The stored (signed) manifest frame itself, instead of compressing the JSON: hostile frames. */
  storedManifest?: Buffer;
  /** The header's decoded-manifest length, instead of the JSON's length. */
  manifestRawLength?: number;
  signer?: KeyObject;
  keyring?: KeyringDocument;
}

/** Header + manifest + signature block (valid signature by the release key) + data, as one buffer. */
export function craftPayload(trust: TestTrust, manifest: unknown, data: readonly Uint8Array[] = [], options: CraftOptions = {}): Buffer {
  const json = (): Buffer => options.manifestBytes ?? canonicalBytes(manifest);
  // The format stores the manifest as one zstd frame and signs the stored bytes (FORMAT.md).
  const manifestBytes = options.storedManifest ?? compressManifest(json());
  const signatureBlock = encodeSignatureBlock({
    keyring: options.keyring ?? trust.keyring,
    signatures: [signBytes(manifestBytes, options.signer ?? trust.release.privateKey, MANIFEST_SIGNATURE_DOMAIN)],
  });
  const header = encodeHeader(manifestBytes.length, signatureBlock.length, options.manifestRawLength ?? json().length);
  return Buffer.concat([header, manifestBytes, signatureBlock, ...data]);
}

/** The manifest's stored form: canonical JSON in one zstd frame, as the generator writes it. */
export function compressManifest(json: Uint8Array): Buffer {
  return execFileSync('zstd', ['-q', '-c', '-3', `--stream-size=${json.length}`], { input: json, maxBuffer: 256 * 1024 * 1024 });
}

export interface ManifestFields {
  kind?: 'full' | 'delta';
  source?: { version?: string; bytes?: Uint8Array; size?: number; sha256?: string };
  target: { bytes?: Uint8Array; size?: number; sha256?: string };
  blobs?: Blob[];
  operations: unknown[];
  dataSize?: number;
}

/** A manifest with every field a valid one needs; sizes and hashes come from the bytes where given. */
export function manifestOf(fields: ManifestFields): Manifest {
  const blobs = fields.blobs ?? [];
  const source = fields.source;
  const kind = fields.kind ?? (source ? 'delta' : 'full');
  return {
    type: 'tandem-manifest',
    formatVersion: 1,
    product: 'tandem-test',
    board: 'test-board',
    version: '2.0.0',
    kind,
    createdAt: '2026-01-01T00:00:00.000Z',
    blockSize: 4096,
    ...(source
      ? {
          source: {
            version: source.version ?? '1.0.0',
            size: source.size ?? source.bytes!.length,
            sha256: source.sha256 ?? sha256Hex(source.bytes!),
          },
        }
      : {}),
    target: { size: fields.target.size ?? fields.target.bytes!.length, sha256: fields.target.sha256 ?? sha256Hex(fields.target.bytes!) },
    dataSize: fields.dataSize ?? blobs.reduce((sum, b) => sum + b.size, 0),
    blobs,
    operations: fields.operations as Operation[],
  };
}

/** The manifest entry for compressed blob bytes; `dict` makes it a PATCH blob against source bytes. */
export function blobOf(compressed: Uint8Array, rawSize: number, dict?: { extents: Extent[]; source: Uint8Array }): Blob {
  return {
    size: compressed.length,
    sha256: sha256Hex(compressed),
    rawSize,
    ...(dict ? { dict: dict.extents, dictSha256: sha256Hex(bytesAt(dict.source, dict.extents)) } : {}),
  };
}

// ---- zstd frames by hand (RFC 8878 §3.1.1) ------------------------------------

const ZSTD_MAGIC = Buffer.from([0x28, 0xb5, 0x2f, 0xfd]);
const MAX_BLOCK = 128 * 1024;

export interface RawFrameOptions {
  /** log2 of the window (10..41); default 17. Ignored for a single-segment frame. */
  windowLog?: number;
  /** Window mantissa 0..7: the window is 2^log * (1 + m/8). */
  windowMantissa?: number;
  /** Frame content size to declare (8-byte field); omitted when undefined. */
  contentSize?: number;
  /** Single segment: no window descriptor, the window is the content size (needs contentSize). */
  singleSegment?: boolean;
  /** Non-zero: a 4-byte dictionary id in the header. */
  dictId?: number;
}

function frameHeader(options: RawFrameOptions): Buffer {
  const fcsFlag = options.contentSize === undefined ? 0 : 3;
  const single = options.singleSegment === true ? 1 : 0;
  const dictFlag = options.dictId ? 3 : 0;
  const parts: Buffer[] = [ZSTD_MAGIC, Buffer.from([(fcsFlag << 6) | (single << 5) | dictFlag])];
  if (!single) parts.push(Buffer.from([(((options.windowLog ?? 17) - 10) << 3) | (options.windowMantissa ?? 0)]));
  if (dictFlag) {
    const id = Buffer.alloc(4);
    id.writeUInt32LE(options.dictId!);
    parts.push(id);
  }
  if (fcsFlag) {
    const fcs = Buffer.alloc(8);
    fcs.writeBigUInt64LE(BigInt(options.contentSize!));
    parts.push(fcs);
  }
  return Buffer.concat(parts);
}

function blockHeader(size: number, type: 0 | 1, last: boolean): Buffer {
  const value = (size << 3) | (type << 1) | (last ? 1 : 0);
  return Buffer.from([value & 0xff, (value >> 8) & 0xff, (value >> 16) & 0xff]);
}

/** A valid frame of raw (stored) blocks: decodes to exactly `content`. */
export function rawFrame(content: Uint8Array, options: RawFrameOptions = {}): Buffer {
  const parts: Buffer[] = [frameHeader(options)];
  if (content.length === 0) parts.push(blockHeader(0, 0, true));
  for (let at = 0; at < content.length; at += MAX_BLOCK) {
    const block = content.subarray(at, Math.min(content.length, at + MAX_BLOCK));
    parts.push(blockHeader(block.length, 0, at + MAX_BLOCK >= content.length), Buffer.from(block));
  }
  return Buffer.concat(parts);
}

/** A frame of RLE blocks: four bytes each that decode to 128 KiB of `byte` — a decompression bomb. */
export function rleFrame(byte: number, blocks: number, options: RawFrameOptions = {}): Buffer {
  const parts: Buffer[] = [frameHeader(options)];
  for (let i = 0; i < blocks; i++) parts.push(blockHeader(MAX_BLOCK, 1, i === blocks - 1), Buffer.from([byte]));
  return Buffer.concat(parts);
}

let encoder: Promise<Encoder> | undefined;
/** Real compression (native zstd where installed, else zstd-codec), level 3, 4 MiB window: both format limits. */
export async function compressFrame(raw: Uint8Array, dict?: Uint8Array): Promise<Buffer> {
  encoder ??= createEncoder({ level: 3 });
  return (await encoder).encode(raw, { windowLog: 22, ...(dict ? { dict } : {}) });
}

// ---- Valid payloads from a plan ------------------------------------------------

export type PlanOp =
  | { op: 'REPLACE' | 'PATCH'; dst: Extent[]; blob: number }
  | { op: 'SOURCE_COPY' | 'TARGET_COPY'; src: Extent[]; dst: Extent[] }
  | { op: 'ZERO'; dst: Extent[] };

export interface Plan {
  target: Buffer;
  source?: Buffer;
  ops: PlanOp[];
  /** Dictionary extents (in the source) of PATCH blobs, by blob index. */
  dicts?: Record<number, Extent[]>;
  /** Compresses one blob (default: compressFrame). */
  encode?: (raw: Buffer, dict?: Buffer) => Promise<Buffer>;
}

/**
 * Builds a consistent manifest and data section from a plan: each blob holds the
 * target bytes of its operations in order, every hash is computed. Tests then
 * break one thing at a time, or use it as is as a positive control.
 */
export async function planPayload(trust: TestTrust, plan: Plan): Promise<{ payload: Buffer; manifest: Manifest; blobs: Buffer[] }> {
  const raws: Buffer[][] = [];
  const operations: Operation[] = plan.ops.map((op): Operation => {
    const sha256 = sha256Hex(bytesAt(plan.target, op.dst));
    switch (op.op) {
      case 'ZERO':
        return { op: 'ZERO', dst: op.dst };
      case 'REPLACE':
      case 'PATCH':
        (raws[op.blob] ??= []).push(bytesAt(plan.target, op.dst));
        return { op: op.op, blob: op.blob, dst: op.dst, sha256 };
      default:
        return { op: op.op, src: op.src, dst: op.dst, sha256 };
    }
  });
  const encode = plan.encode ?? compressFrame;
  const blobs: Buffer[] = [];
  const entries: Blob[] = [];
  for (let b = 0; b < raws.length; b++) {
    const raw = Buffer.concat(raws[b] ?? []);
    const dictExtents = plan.dicts?.[b];
    const dict = dictExtents ? bytesAt(plan.source!, dictExtents) : undefined;
    const compressed = await encode(raw, dict);
    blobs.push(compressed);
    entries.push(blobOf(compressed, raw.length, dictExtents ? { extents: dictExtents, source: plan.source! } : undefined));
  }
  const manifest = manifestOf({
    target: { bytes: plan.target },
    ...(plan.source ? { source: { bytes: plan.source } } : {}),
    blobs: entries,
    operations,
  });
  return { payload: craftPayload(trust, manifest, blobs), manifest, blobs };
}
