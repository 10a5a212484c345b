/**
 * The payload generator, streaming and bounded in memory: the image is read
 * once in 2 MiB chunks, each 4 KiB block classified as ZERO, a copy of a source
 * block (SOURCE_COPY, delta only), a copy of a block written earlier in the
 * target (TARGET_COPY), or literal bytes. Literal runs become REPLACE
 * operations whose bytes are packed into blobs of up to 8 MiB compressed (one
 * zstd frame each, so the compressor keeps its history across operations),
 * look-alike runs next to each other (literal-order.ts); in a delta, runs that
 * compress better against source bytes become PATCH (patch-planner.ts). Runs
 * of one kind are merged into operations of up to 2 MiB (operation-merger.ts).
 * Memory: the block indexes (16 bytes a block, plus up to 64 per source block
 * for the resemblance sketches of a delta) plus a few blobs in flight,
 * whatever the image size.
 */
import { createHash, type KeyObject } from 'node:crypto';
import { constants, open, rename, rm, type FileHandle } from 'node:fs/promises';
import { basename, dirname, join } from 'node:path';
import { canonicalBytes } from '../shared/canonical-json.ts';
import { syncDir } from '../shared/durable-write.ts';
import { TandemError } from '../shared/errors.ts';
import { signBytes, type KeyringDocument } from '../shared/keyring.ts';
import { parseVersion } from '../shared/versions.ts';
import type { Blob, Extent, Manifest, Operation } from '../shared/schemas/manifest.ts';
import { BlockIndex, fingerprint } from './block-index.ts';
import { SKETCH_FEATURES, sketchBlock, sketchBlocks, SketchIndex } from './block-sketch.ts';
import { orderBySimilarity } from './literal-order.ts';
import { OperationMerger } from './operation-merger.ts';
import { BLOCK_SIZE, encodeHeader, MANIFEST_MAX_BYTES, MANIFEST_SIGNATURE_DOMAIN, MAX_BLOB_SIZE, MAX_DICT_WINDOW_LOG, MAX_OPERATION_SIZE, MAX_WINDOW_LOG } from './format.ts';
import { parseManifest } from './manifest-parser.ts';
import { encodeSignatureBlock } from './signature-block.ts';
import { PatchPlanner, sha256Of, type Candidate, type LiteralOp } from './patch-planner.ts';
import { createEncoder, type Encoder } from './zstd.ts';

export interface CreatePayloadOptions {
  image: string;
  source?: { path: string; version: string };
  version: string;
  board: string;
  product?: string;
  signer: KeyObject;
  keyring: KeyringDocument;
  out: string;
  /** zstd level (default 19). */
  level?: number;
  encoder?: 'auto' | 'native' | 'wasm';
  /** Blobs compressed at once (default 2). */
  concurrency?: number;
  /**
   * Output bytes per operation at most, 4 KiB … 2 MiB (default 2 MiB, the format's limit): the grain
   * of checkpoints. Smaller operations resume closer to where an apply stopped and make a larger manifest.
   */
  maxOperationSize?: number;
  onProgress?: (progress: { phase: 'index' | 'scan'; done: number; total: number }) => void;
  signal?: AbortSignal;
  now?: Date;
}

export interface PayloadSummary {
  path: string;
  size: number;
  sha256: string;
  manifest: Manifest;
  stats: PayloadStats;
}

export interface PayloadStats {
  zeroBytes: number;
  sourceCopyBytes: number;
  targetCopyBytes: number;
  literalBytes: number;
  /** Literal bytes sent as PATCH against source bytes (part of literalBytes). */
  patchBytes: number;
  compressedBytes: number;
  operations: number;
  blobs: number;
  /** Stored (compressed) manifest bytes, and its canonical JSON before compression. */
  manifestBytes: number;
  manifestJsonBytes: number;
}

type Kind = 'ZERO' | 'SOURCE_COPY' | 'TARGET_COPY' | 'LITERAL';

interface OpenOperation {
  kind: Kind;
  start: number;
  length: number;
  src: Extent[];
  chunks: Buffer[];
}

function appendExtent(extents: Extent[], offset: number, length: number): void {
  const last = extents[extents.length - 1];
  if (last && last[0] + last[1] === offset) last[1] += length;
  else extents.push([offset, length]);
}

function isZero(block: Uint8Array): boolean {
  // Compare 8 bytes at a time where alignment allows; blocks come from 2 MiB reads at 4 KiB strides.
  if (block.byteOffset % 8 === 0 && block.length % 8 === 0) {
    const words = new BigUint64Array(block.buffer, block.byteOffset, block.length / 8);
    for (let i = 0; i < words.length; i++) if (words[i] !== 0n) return false;
    return true;
  }
  for (let i = 0; i < block.length; i++) if (block[i] !== 0) return false;
  return true;
}

async function readFully(fh: FileHandle, buf: Buffer, length: number, position: number): Promise<number> {
  let done = 0;
  while (done < length) {
    const { bytesRead } = await fh.read(buf, done, length - done, position + done);
    if (bytesRead === 0) break;
    done += bytesRead;
  }
  return done;
}

async function readBack(fh: FileHandle, offset: number, length: number): Promise<Buffer> {
  const buf = Buffer.allocUnsafe(length);
  const n = await readFully(fh, buf, length, offset);
  return buf.subarray(0, n);
}

async function readExtents(fh: FileHandle, extents: readonly Extent[]): Promise<Buffer> {
  return Buffer.concat(await Promise.all(extents.map(([offset, length]) => readBack(fh, offset, length))));
}

/**
 * Hashes a whole image and indexes its full, non-zero blocks: by content, and
 * (for the patch planner) by resemblance.
 */
async function indexSource(fh: FileHandle, size: number, options: CreatePayloadOptions, withSketches: boolean): Promise<{ index: BlockIndex; sketches?: SketchIndex; sha256: string }> {
  const index = new BlockIndex(Math.ceil(size / BLOCK_SIZE));
  const sketches = withSketches ? new SketchIndex(Math.ceil(size / BLOCK_SIZE)) : undefined;
  const sketch = new Uint32Array(SKETCH_FEATURES);
  const hash = createHash('sha256');
  const chunk = Buffer.allocUnsafe(MAX_OPERATION_SIZE);
  for (let offset = 0; offset < size; ) {
    options.signal?.throwIfAborted();
    const n = await readFully(fh, chunk, Math.min(chunk.length, size - offset), offset);
    const data = chunk.subarray(0, n);
    hash.update(data);
    for (let b = 0; b + BLOCK_SIZE <= n; b += BLOCK_SIZE) {
      const block = data.subarray(b, b + BLOCK_SIZE);
      if (isZero(block)) continue;
      index.add(fingerprint(block), offset + b);
      if (sketches) {
        sketchBlock(block, sketch, 0);
        sketches.add(sketch, 0, (offset + b) / BLOCK_SIZE);
      }
    }
    offset += n;
    options.onProgress?.({ phase: 'index', done: offset, total: size });
  }
  return { index, ...(sketches ? { sketches } : {}), sha256: hash.digest('hex') };
}

/** Interleaves two operation lists, each in its order, in proportion to the bytes they write. */
function interleave(a: readonly Operation[], b: readonly Operation[]): Operation[] {
  const written = (op: Operation): number => op.dst.reduce((n, [, l]) => n + l, 0);
  const totalA = a.reduce((n, op) => n + written(op), 0) || 1;
  const totalB = b.reduce((n, op) => n + written(op), 0) || 1;
  const out: Operation[] = [];
  let i = 0;
  let j = 0;
  let doneA = 0;
  let doneB = 0;
  while (i < a.length || j < b.length) {
    if (j >= b.length || (i < a.length && doneA / totalA <= doneB / totalB)) {
      doneA += written(a[i]!);
      out.push(a[i++]!);
    } else {
      doneB += written(b[j]!);
      out.push(b[j++]!);
    }
  }
  return out;
}

/**
 * How big a blob gets and how far back its frame may refer: what the device
 * holds while it applies the payload (the compressed blob, checked before it
 * is decoded, and the decoder's window). Measured with the zstd CLI at level
 * 19 on 96 MiB of the fixture image's non-zero blocks, cut into frames of N MiB
 * raw: 4 MiB windows cost 1.5-2 % (23.72 MB at N = 8, 24.08 MB with 2 MiB
 * windows), the frame's length next to nothing down to ~6 MiB raw (N = 14:
 * 23.62 MB, N = 6: 23.60 MB, N = 4: 24.27 MB), and 8 MiB windows with ~7 MiB
 * blobs gained 3.7 % for 8 MiB more agent RSS. A full payload takes ~1.5 MiB
 * blobs (~6 MiB raw at level 19) with 4 MiB windows: it is the fallback, sent
 * when no delta fits, and the device's memory is the hard limit. A delta's
 * literal data is a few MiB in all and its size is what a delta is for, so it
 * keeps the format's limits.
 */
interface BlobLimits {
  windowLog: number;
  /** Compressed bytes to aim for; the raw bytes gathered adapt to the ratio seen. */
  target: number;
  /** A blob that comes out bigger is split and encoded again. */
  max: number;
}

const FULL_BLOBS: BlobLimits = { windowLog: 22, target: 1.5 * 1024 * 1024, max: 2.5 * 1024 * 1024 };
const DELTA_BLOBS: BlobLimits = { windowLog: MAX_WINDOW_LOG, target: 7 * 1024 * 1024, max: MAX_BLOB_SIZE };
/** Raw bytes per compressed byte assumed before the first blob is encoded (filesystem images at level 19). */
const ASSUMED_RATIO = 4.5;
const MIN_BLOB_RAW = 1024 * 1024;
const MAX_BLOB_RAW = 64 * 1024 * 1024;
const NO_SKETCH = new Uint32Array(0);
/** zstd level of the patch planner's trial encodings (at most the payload's). */
const PLANNER_LEVEL = 12;

class BlobWriter {
  readonly blobs: Blob[] = [];
  /** REPLACE and PATCH operations, merged, in the order they consume the blobs. */
  readonly operations: Operation[] = [];
  private inFlight: Promise<void>[] = [];
  private dataOffset = 0;
  private chain: Promise<void> = Promise.resolve();
  /** Decoded bytes per compressed byte, from the blobs encoded so far. */
  private ratio = 0;

  constructor(
    private readonly encoder: Encoder,
    private readonly data: FileHandle,
    private readonly concurrency: number,
    private readonly limits: BlobLimits,
    private readonly operationSize: number,
  ) {}

  /** How many raw bytes the next blob should gather. */
  get rawTarget(): number {
    return Math.max(MIN_BLOB_RAW, Math.min(MAX_BLOB_RAW, Math.floor(this.limits.target * (this.ratio || ASSUMED_RATIO))));
  }

  private async encodeFitting(ops: LiteralOp[], dict?: Buffer): Promise<{ ops: LiteralOp[]; bytes: Buffer; raw: number }[]> {
    const raw = Buffer.concat(ops.map((o) => o.bytes));
    const bytes = dict
      ? await this.encoder.encode(raw, { windowLog: MAX_DICT_WINDOW_LOG, dict })
      : await this.encoder.encode(raw, { windowLog: this.limits.windowLog });
    if (bytes.length <= this.limits.max || ops.length === 1) return [{ ops, bytes, raw: raw.length }];
    const half = ops.length >> 1;
    const [a, b] = await Promise.all([this.encodeFitting(ops.slice(0, half), dict), this.encodeFitting(ops.slice(half), dict)]);
    return [...a, ...b];
  }

  /** Appends a blob for `ops` (or several, split to fit); a PATCH group brings its source dictionary. */
  async add(ops: LiteralOp[], dict?: { extents: Extent[]; bytes: Buffer }): Promise<void> {
    const encoded = this.encodeFitting(ops, dict?.bytes);
    // Blob indexes and appends follow operation order whatever order the encodings finish in.
    this.chain = this.chain.then(async () => {
      for (const part of await encoded) {
        const index = this.blobs.length;
        const merger = new OperationMerger(dict ? 'PATCH' : 'REPLACE', (op) => this.operations.push(op), this.operationSize);
        for (const { dst, bytes } of part.ops) merger.add(dst, [bytes], [], index);
        merger.close();
        this.blobs.push({
          size: part.bytes.length,
          sha256: sha256Of(part.bytes),
          rawSize: part.raw,
          ...(dict ? { dict: dict.extents, dictSha256: sha256Of(dict.bytes) } : {}),
        });
        await this.data.write(part.bytes, 0, part.bytes.length, this.dataOffset);
        this.dataOffset += part.bytes.length;
        this.ratio = part.raw / part.bytes.length;
      }
    });
    this.inFlight.push(this.chain);
    if (this.inFlight.length >= this.concurrency) await this.inFlight.shift();
  }

  async finish(): Promise<number> {
    await this.chain;
    return this.dataOffset;
  }
}

export async function createPayload(options: CreatePayloadOptions): Promise<PayloadSummary> {
  parseVersion(options.version);
  if (options.source) parseVersion(options.source.version);
  const operationSize = options.maxOperationSize ?? MAX_OPERATION_SIZE;
  if (!Number.isInteger(operationSize) || operationSize < BLOCK_SIZE || operationSize > MAX_OPERATION_SIZE) {
    throw new TandemError('ERR_INVALID_ARGUMENT', `maxOperationSize must be an integer from ${BLOCK_SIZE} to ${MAX_OPERATION_SIZE}.`);
  }
  const level = options.level ?? 19;
  const encoder = await createEncoder({ level, prefer: options.encoder ?? 'auto' });
  const image = await open(options.image, constants.O_RDONLY).catch((cause: unknown) => {
    throw new TandemError('ERR_IO', `Cannot open image ${options.image}: ${(cause as Error).message}`, { cause });
  });
  const outDir = dirname(options.out);
  const dataPath = join(outDir, `.${basename(options.out)}.${process.pid}.data`);
  const tmpPath = join(outDir, `.${basename(options.out)}.${process.pid}.tmp`);
  const data = await open(dataPath, 'w+', 0o600);
  let source: FileHandle | undefined;
  try {
    const targetSize = (await image.stat()).size;
    if (targetSize === 0) throw new TandemError('ERR_INVALID_ARGUMENT', `Image ${options.image} is empty.`);
    let sourceRef: Manifest['source'];
    let sourceIndex: BlockIndex | undefined;
    let sourceSketches: SketchIndex | undefined;
    // Only the native encoder makes PATCH blobs (zstd-codec's encodes at level ≤ 9, its window set by the level).
    const patching = options.source !== undefined && encoder.name.startsWith('zstd-native');
    if (options.source) {
      source = await open(options.source.path, constants.O_RDONLY);
      const size = (await source.stat()).size;
      const indexed = await indexSource(source, size, options, patching);
      sourceIndex = indexed.index;
      sourceSketches = indexed.sketches;
      sourceRef = { version: options.source.version, size, sha256: indexed.sha256 };
    }

    const blobs = new BlobWriter(encoder, data, Math.max(1, options.concurrency ?? 2), options.source ? DELTA_BLOBS : FULL_BLOBS, operationSize);
    // ZERO and SOURCE_COPY operations in target order (of their first run); TARGET_COPY ones go
    // last, after every operation whose bytes they may read.
    const operations: Operation[] = [];
    const targetCopies: Operation[] = [];
    const zeros = new OperationMerger('ZERO', (op) => operations.push(op), operationSize);
    const sourceCopies = new OperationMerger('SOURCE_COPY', (op) => operations.push(op), operationSize);
    const targetCopyMerger = new OperationMerger('TARGET_COPY', (op) => targetCopies.push(op), operationSize);
    const stats: PayloadStats = { zeroBytes: 0, sourceCopyBytes: 0, targetCopyBytes: 0, literalBytes: 0, patchBytes: 0, compressedBytes: 0, operations: 0, blobs: 0, manifestBytes: 0, manifestJsonBytes: 0 };
    const targetIndex = new BlockIndex(Math.ceil(targetSize / BLOCK_SIZE));
    const targetHash = createHash('sha256');
    const compare = Buffer.allocUnsafe(BLOCK_SIZE);
    // Literal operations wait here until the blob they would join is sealed; in a delta
    // the patch planner first takes those that compress better against the source.
    let pendingLiterals: Candidate[] = [];
    let pendingRaw = 0;
    let open_: OpenOperation | undefined;
    let lastSourceEnd = -1;
    // The planner's trial encodings only compare dictionaries: at level 12 they pick the runs level 19
    // picks (measured on the fixture pair: payload within 0.01 %) in far less time; level 6 misses some.
    const trialEncoder = patching && level > PLANNER_LEVEL ? await createEncoder({ level: PLANNER_LEVEL, prefer: 'native' }) : encoder;
    const planner = patching ? new PatchPlanner(trialEncoder, (extents) => readExtents(source!, extents), sourceRef!.size, sourceSketches) : undefined;

    const sealBlob = async (): Promise<void> => {
      if (pendingLiterals.length === 0) return;
      const batch = pendingLiterals;
      pendingLiterals = [];
      pendingRaw = 0;
      const ops = planner ? await planner.decide(batch) : batch;
      // A delta's literal runs are scattered new and changed files: look-alikes go together. A full
      // payload keeps target order: reordered, the fixture's came out 0.7 % smaller (53.47 MB against
      // 53.84 MB, one blob encoded at a time) but took twice the CPU and RSS, its blobs overshooting
      // the size the ratio seen so far predicts and being split and encoded again.
      const order = source ? orderBySimilarity(ops.map((o) => o.sketch), ops.map((o) => o.bytes.length)) : ops.map((_, i) => i);
      if (ops.length > 0) await blobs.add(order.map((i) => ops[i]!));
    };

    const flush = async (): Promise<void> => {
      const op = open_;
      if (!op) return;
      open_ = undefined;
      const dst: Extent = [op.start, op.length];
      switch (op.kind) {
        case 'ZERO':
          zeros.add(dst, []);
          stats.zeroBytes += op.length;
          return;
        case 'SOURCE_COPY':
        case 'TARGET_COPY': {
          (op.kind === 'SOURCE_COPY' ? sourceCopies : targetCopyMerger).add(dst, op.chunks, op.src);
          if (op.kind === 'SOURCE_COPY') {
            stats.sourceCopyBytes += op.length;
            for (let i = pendingLiterals.length - 1; i >= 0 && pendingLiterals[i]!.nextSourceStart === undefined; i--) {
              pendingLiterals[i]!.nextSourceStart = op.src[0]![0];
            }
            const last = op.src[op.src.length - 1]!;
            lastSourceEnd = last[0] + last[1];
          } else {
            stats.targetCopyBytes += op.length;
          }
          return;
        }
        case 'LITERAL': {
          if (pendingRaw + op.length > blobs.rawTarget) await sealBlob();
          const bytes = Buffer.concat(op.chunks, op.length);
          pendingLiterals.push({ dst, bytes, prevSourceEnd: lastSourceEnd, sketch: source ? sketchBlocks(bytes, BLOCK_SIZE) : NO_SKETCH });
          pendingRaw += op.length;
          stats.literalBytes += op.length;
          return;
        }
      }
    };

    const addBlock = async (kind: Kind, offset: number, block: Buffer, srcOffset = -1): Promise<void> => {
      const current = open_;
      const contiguous = current !== undefined && current.kind === kind && current.length + block.length <= operationSize;
      // TARGET_COPY may only read bytes of operations already closed.
      const selfRead = kind === 'TARGET_COPY' && current !== undefined && srcOffset >= current.start;
      if (!contiguous || selfRead) {
        await flush();
        open_ = { kind, start: offset, length: 0, src: [], chunks: [] };
      }
      const op = open_!;
      op.length += block.length;
      if (kind !== 'ZERO') op.chunks.push(Buffer.from(block));
      if (srcOffset >= 0) appendExtent(op.src, srcOffset, block.length);
    };

    const sameBytes = async (fh: FileHandle, offset: number, block: Buffer): Promise<boolean> => {
      const n = await readFully(fh, compare, BLOCK_SIZE, offset);
      return n === BLOCK_SIZE && compare.equals(block);
    };

    const chunk = Buffer.allocUnsafe(MAX_OPERATION_SIZE);
    for (let offset = 0; offset < targetSize; ) {
      options.signal?.throwIfAborted();
      const n = await readFully(image, chunk, Math.min(chunk.length, targetSize - offset), offset);
      if (n === 0) throw new TandemError('ERR_IO', `Image ${options.image} shrank while it was read.`);
      targetHash.update(chunk.subarray(0, n));
      for (let b = 0; b < n; b += BLOCK_SIZE) {
        const at = offset + b;
        const block = chunk.subarray(b, Math.min(b + BLOCK_SIZE, n));
        if (isZero(block)) {
          await addBlock('ZERO', at, block);
          continue;
        }
        if (block.length < BLOCK_SIZE) {
          await addBlock('LITERAL', at, block);
          continue;
        }
        const fp = fingerprint(block);
        // A run continues where the previous copy left off: check that first, it keeps extents long.
        const prev = open_;
        if (source && prev?.kind === 'SOURCE_COPY') {
          const last = prev.src[prev.src.length - 1]!;
          const next = last[0] + last[1];
          if (next + BLOCK_SIZE <= sourceRef!.size && (await sameBytes(source, next, block))) {
            await addBlock('SOURCE_COPY', at, block, next);
            targetIndex.add(fp, at);
            continue;
          }
        }
        const inSource = sourceIndex ? sourceIndex.get(fp) : -1;
        if (inSource >= 0 && (await sameBytes(source!, inSource, block))) {
          await addBlock('SOURCE_COPY', at, block, inSource);
          targetIndex.add(fp, at);
          continue;
        }
        const inTarget = targetIndex.get(fp);
        if (inTarget >= 0 && (await sameBytes(image, inTarget, block))) {
          await addBlock('TARGET_COPY', at, block, inTarget);
          continue;
        }
        targetIndex.add(fp, at);
        await addBlock('LITERAL', at, block);
      }
      offset += n;
      options.onProgress?.({ phase: 'scan', done: offset, total: targetSize });
    }
    await flush();
    await sealBlob();
    if (planner) {
      // PATCH blobs follow every REPLACE blob, so PATCH operations follow every REPLACE.
      for (const group of planner.groups()) {
        // Read back from the image (an input, not changing under us) rather than held since the scan.
        const runs = await Promise.all(group.runs.map(async (dst) => ({ dst, bytes: await readBack(image, dst[0], dst[1]) })));
        await blobs.add(runs, { extents: group.dict, bytes: await readExtents(source!, group.dict) });
        stats.patchBytes += group.runs.reduce((n, [, l]) => n + l, 0);
      }
    }
    const dataSize = await blobs.finish();
    for (const merger of [zeros, sourceCopies, targetCopyMerger]) merger.close();
    // Operations without data may go anywhere before the TARGET_COPY ones (FORMAT.md: any order
    // that reads only written bytes is valid): spread among the blob operations, so applying
    // alternates between reading the payload and copying within the slots.
    const finalOperations = [...interleave(operations, blobs.operations), ...targetCopies];

    const manifest: Manifest = {
      type: 'tandem-manifest',
      formatVersion: 1,
      product: options.product ?? options.board,
      board: options.board,
      version: options.version,
      kind: sourceRef ? 'delta' : 'full',
      createdAt: (options.now ?? new Date()).toISOString(),
      blockSize: 4096,
      ...(sourceRef ? { source: sourceRef } : {}),
      target: { size: targetSize, sha256: targetHash.digest('hex') },
      dataSize,
      blobs: blobs.blobs,
      operations: finalOperations,
    };
    const manifestJson = canonicalBytes(manifest);
    if (manifestJson.length > MANIFEST_MAX_BYTES) {
      throw new TandemError('ERR_MANIFEST_TOO_LARGE', `The manifest would be ${manifestJson.length} bytes, above the ${MANIFEST_MAX_BYTES}-byte limit devices accept.`);
    }
    // What we sign must be what a device accepts: run the reader's own checks on it.
    parseManifest(manifestJson);
    // Stored compressed (the hashes are most of it; measured 59.5 KB → 17.5 KB on the fixture delta); signed as stored.
    // With a full payload's window: the decoder's memory, once touched, stays, and a manifest of
    // several MiB (a fragmented image) decoded with 8 MiB windows left the agent 4 MiB more RSS.
    const manifestBytes = await encoder.encode(manifestJson, { windowLog: FULL_BLOBS.windowLog });
    const signatureBlock = encodeSignatureBlock({
      keyring: options.keyring,
      signatures: [signBytes(manifestBytes, options.signer, MANIFEST_SIGNATURE_DOMAIN)],
    });
    Object.assign(stats, { compressedBytes: dataSize, operations: finalOperations.length, blobs: blobs.blobs.length, manifestBytes: manifestBytes.length, manifestJsonBytes: manifestJson.length });

    // Assemble: header, manifest, signatures, then the data section streamed from the temp file.
    const out = await open(tmpPath, 'w', 0o644);
    const payloadHash = createHash('sha256');
    let size = 0;
    try {
      const append = async (bytes: Buffer): Promise<void> => {
        payloadHash.update(bytes);
        await out.write(bytes, 0, bytes.length, size);
        size += bytes.length;
      };
      await append(encodeHeader(manifestBytes.length, signatureBlock.length, manifestJson.length));
      await append(manifestBytes);
      await append(signatureBlock);
      for (let at = 0; at < dataSize; ) {
        const n = await readFully(data, chunk, Math.min(chunk.length, dataSize - at), at);
        await append(chunk.subarray(0, n));
        at += n;
      }
      await out.sync();
    } finally {
      await out.close();
    }
    await rename(tmpPath, options.out);
    await syncDir(outDir);
    return { path: options.out, size, sha256: payloadHash.digest('hex'), manifest, stats };
  } finally {
    await image.close();
    await source?.close();
    await data.close();
    await rm(dataPath, { force: true });
    await rm(tmpPath, { force: true });
  }
}
