/**
 * The streaming reader. Trust comes first: the header, the manifest bytes and
 * the signature block are read (bounded), the keyring is verified against the
 * pinned root keys and the manifest bytes against the keyring BEFORE the
 * manifest is parsed or any operation is yielded. Then operations come in
 * apply order with their data; each blob's sha256 is checked before a byte of
 * it reaches the decoder, and each decoded operation's output hash after.
 */
import { createHash } from 'node:crypto';
import { TandemError } from '../shared/errors.ts';
import { verifyKeyring, verifySignedBytes, type RootTrust, type VerifiedKeyring } from '../shared/keyring.ts';
import type { Extent, Operation } from '../shared/schemas/manifest.ts';
import { ByteReader } from './byte-reader.ts';
import { decodeHeader, HEADER_SIZE, MANIFEST_SIGNATURE_DOMAIN, MAX_BLOB_SIZE, MAX_OPERATION_SIZE, MAX_DICT_WINDOW_LOG, MAX_WINDOW_LOG, type PayloadHeader } from './format.ts';
import { parseStoredManifest } from './manifest-parser.ts';
import type { ManifestView } from './operation-table.ts';
import { signatureBlockOf, type SignatureBlock } from './signature-block.ts';
import { FrameStream, loadZstdDecoder, type ZstdDecoder } from './zstd.ts';

export interface Prelude {
  header: PayloadHeader;
  /** The manifest as stored and signed: a zstd frame of its canonical JSON (a view into `raw`). */
  manifestBytes: Buffer;
  signatureBlock: SignatureBlock;
  /** Header, manifest and signature block as read: what a resuming caller keeps. */
  raw: Buffer;
  /** Where the data section starts in the payload. */
  dataOffset: number;
}

export interface VerifiedPayload {
  prelude: Prelude;
  /** Header fields and the operations table; the decoded JSON is not kept (payloads/manifest-parser.ts). */
  manifest: ManifestView;
  keyring: VerifiedKeyring;
  /** The release key whose signature verified. */
  keyId: string;
  /** The decoder that decoded the manifest; readOperations reuses it, so an apply holds one (zstd-codec's is a 16 MiB heap). */
  decoder: ZstdDecoder;
  /** sha256 (hex) of the manifest bytes as stored and signed. */
  manifestSha256: string;
}

/** A manifest already parsed and checked from bytes of this sha256 (the agent's, from the signed check response). */
export interface KnownManifest {
  sha256: string;
  view: ManifestView;
}

export interface TrustOptions {
  trust: RootTrust;
  now?: Date;
  /** Refuse keyrings older than this version (a device remembers the newest it saw). */
  minKeyringVersion?: number;
  /** Reuse this decoder (a daemon keeps one: each zstd-codec instance is a 16 MiB heap) instead of loading one. */
  decoder?: ZstdDecoder;
  /**
   * Used instead of parsing the payload's manifest again when the bytes' sha256 matches. The
   * payload's signatures are verified all the same.
   */
  knownManifest?: KnownManifest;
}

export async function readPrelude(reader: ByteReader): Promise<Prelude> {
  const headerBytes = await reader.read(HEADER_SIZE, undefined, 'header');
  const header = decodeHeader(headerBytes);
  const dataOffset = HEADER_SIZE + header.manifestLength + header.signatureBlockLength;
  // Read in place: the stored manifest (10 MB for 300,000 operations) is held once, in `raw`.
  const raw = Buffer.allocUnsafe(dataOffset);
  headerBytes.copy(raw);
  const manifestBytes = await reader.read(header.manifestLength, raw.subarray(HEADER_SIZE), 'manifest');
  const signatureBytes = await reader.read(header.signatureBlockLength, raw.subarray(HEADER_SIZE + header.manifestLength), 'signature block');
  return { header, manifestBytes, signatureBlock: signatureBlockOf(signatureBytes), raw, dataOffset };
}

/** Parses the prelude's manifest (decoded in chunks, never whole): for `inspect`, and after verification. */
export function parsePreludeManifest(prelude: Prelude, zstd: ZstdDecoder): ManifestView {
  return parseStoredManifest(prelude.manifestBytes, prelude.header.manifestRawLength, zstd);
}

export async function verifyPrelude(prelude: Prelude, options: TrustOptions): Promise<VerifiedPayload> {
  const now = options.now ?? new Date();
  const keyring = verifyKeyring(prelude.signatureBlock.keyring, options.trust, {
    now,
    ...(options.minKeyringVersion === undefined ? {} : { minVersion: options.minKeyringVersion }),
  });
  const { keyId } = verifySignedBytes(prelude.manifestBytes, prelude.signatureBlock.signatures, keyring, MANIFEST_SIGNATURE_DOMAIN, now);
  const decoder = options.decoder ?? (await loadZstdDecoder());
  const manifestSha256 = sha256Hex(prelude.manifestBytes);
  const known = options.knownManifest;
  const manifest = known?.sha256 === manifestSha256 ? known.view : parsePreludeManifest(prelude, decoder);
  return { prelude, manifest, keyring, keyId, decoder, manifestSha256 };
}

export async function readVerifiedPrelude(reader: ByteReader, options: TrustOptions): Promise<VerifiedPayload> {
  return verifyPrelude(await readPrelude(reader), options);
}

/** Re-reads a prelude kept by a resuming caller; verifies it again, since it sat on disk. */
export async function verifyStoredPrelude(raw: Buffer, options: TrustOptions): Promise<VerifiedPayload> {
  const reader = new ByteReader([raw]);
  const verified = await readVerifiedPrelude(reader, options);
  await reader.expectEnd();
  return verified;
}

/** Offset in the payload from which a resume at operation `nextOp` must read. */
export function resumeOffset(verified: VerifiedPayload, nextOp: number): number {
  const { manifest } = verified;
  // A checkpoint comes from disk: a negative or fractional nextOp would index past the operations
  // (a RangeError, not a refusal) and one beyond the end would crash the caller's loop over them.
  if (!Number.isSafeInteger(nextOp) || nextOp < 0 || nextOp > manifest.operations.length) {
    throw new TandemError('ERR_CHECKPOINT', `Checkpoint operation ${nextOp} is outside 0..${manifest.operations.length}.`);
  }
  let offset = verified.prelude.dataOffset;
  const firstBlob = firstBlobFrom(manifest, nextOp);
  for (let b = 0; b < firstBlob; b++) offset += manifest.blobs[b]!.size;
  return offset;
}

function firstBlobFrom(manifest: ManifestView, nextOp: number): number {
  const table = manifest.operations;
  for (let i = nextOp; i < table.length; i++) {
    if (table.blob(i) >= 0) return table.blob(i);
  }
  return manifest.blobs.length;
}

export interface OperationItem {
  index: number;
  /** Materialised from the table for this item alone. */
  op: Operation;
  /** Output of REPLACE and PATCH: decoded, hash-checked; valid until the next item is requested. */
  data?: Buffer;
}

export interface ReadOperationsOptions {
  /** First operation to yield; `reader` must be positioned at resumeOffset(verified, startOp). */
  startOp?: number;
  /** Reads source bytes for PATCH dictionaries. */
  readSource?: (extents: readonly Extent[]) => Promise<Buffer>;
  signal?: AbortSignal;
  /**
   * Where REPLACE and PATCH output is decoded (≥ MAX_OPERATION_SIZE bytes). A
   * caller that reads copies into a buffer of its own may pass that one: an
   * item's data is only valid until the next item is requested anyway.
   */
  output?: Buffer;
}

export function sha256Hex(data: Uint8Array): string {
  return createHash('sha256').update(data).digest('hex');
}

export async function* readOperations(
  verified: VerifiedPayload,
  reader: ByteReader,
  options: ReadOperationsOptions = {},
): AsyncGenerator<OperationItem> {
  const { manifest } = verified;
  const table = manifest.operations;
  const startOp = options.startOp ?? 0;
  if (!Number.isSafeInteger(startOp) || startOp < 0 || startOp > table.length) {
    throw new TandemError('ERR_CHECKPOINT', `Checkpoint operation ${startOp} is outside 0..${table.length}.`);
  }
  const zstd = verified.decoder;
  // Fixed buffers for the whole payload: one compressed blob in, one operation out.
  const compressed = Buffer.allocUnsafe(MAX_BLOB_SIZE);
  const output = options.output ?? Buffer.allocUnsafe(MAX_OPERATION_SIZE);
  if (output.length < MAX_OPERATION_SIZE) throw new TandemError('ERR_INVALID_ARGUMENT', `The output buffer holds ${output.length} bytes, fewer than an operation's ${MAX_OPERATION_SIZE}.`);
  let blobIndex = firstBlobFrom(manifest, startOp) - 1;
  let frame: FrameStream | undefined;
  // Decoded bytes of the first blob that belong to operations applied before the checkpoint.
  let skip = 0;
  for (let i = 0; i < startOp; i++) {
    if (table.blob(i) === blobIndex + 1) skip += table.outputLength(i);
  }

  try {
    for (let index = startOp; index < table.length; index++) {
      options.signal?.throwIfAborted();
      const op = table.get(index);
      if (op.op !== 'REPLACE' && op.op !== 'PATCH') {
        yield { index, op };
        continue;
      }
      if (op.blob !== blobIndex) {
        frame?.finish();
        frame = undefined;
        blobIndex = op.blob;
        frame = await openBlob(verified, reader, blobIndex, compressed, zstd, options);
        for (; skip > 0; ) {
          const n = Math.min(skip, output.length);
          frame.take(n, output);
          skip -= n;
        }
      }
      const data = frame!.take(table.outputLength(index), output);
      if (sha256Hex(data) !== op.sha256) {
        throw new TandemError('ERR_OPERATION_HASH', `Operation ${index} (${op.op}) output does not match its signed sha256.`, {
          details: { operation: index },
        });
      }
      yield { index, op, data };
    }
    frame?.finish();
    frame = undefined;
  } catch (err) {
    throw err instanceof TandemError && err.code === 'ERR_BLOB_DECODE'
      ? new TandemError(err.code, `Blob ${blobIndex}: ${err.message}`, { details: { blob: blobIndex }, cause: err })
      : err;
  } finally {
    frame?.close();
  }
  await reader.expectEnd();
}

async function openBlob(
  verified: VerifiedPayload,
  reader: ByteReader,
  blobIndex: number,
  compressed: Buffer,
  zstd: ZstdDecoder,
  options: ReadOperationsOptions,
): Promise<FrameStream> {
  const blob = verified.manifest.blobs[blobIndex]!;
  const bytes = await reader.read(blob.size, compressed, `blob ${blobIndex}`);
  if (sha256Hex(bytes) !== blob.sha256) {
    throw new TandemError('ERR_BLOB_HASH', `Blob ${blobIndex} does not match its signed sha256: the payload was altered or corrupted in transit.`, {
      details: { blob: blobIndex },
    });
  }
  let dict: Buffer | undefined;
  if (blob.dict) {
    if (!options.readSource) throw new TandemError('ERR_SOURCE_MISMATCH', 'A PATCH blob needs the source slot.');
    dict = await options.readSource(blob.dict);
    if (sha256Hex(dict) !== blob.dictSha256) {
      throw new TandemError('ERR_SOURCE_HASH', `The source bytes blob ${blobIndex} patches against do not match their signed sha256.`, {
        details: { blob: blobIndex },
      });
    }
  }
  return new FrameStream(zstd, bytes, { rawSize: blob.rawSize, maxWindowSize: 2 ** (dict ? MAX_DICT_WINDOW_LOG : MAX_WINDOW_LOG) }, dict);
}
