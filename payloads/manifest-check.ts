/**
 * What the schema cannot say about a manifest, checked before the first byte
 * is written: every extent in range, the operations' outputs tile the target
 * exactly once, no operation writes more than 2 MiB, TARGET_COPY reads only
 * bytes an earlier operation wrote, and blobs are consumed in order with sizes
 * that add up. A manifest that passes cannot make the apply engine write
 * outside the declared target or hold more than the stated limits.
 */
import { TandemError } from '../shared/errors.ts';
import type { Extent } from '../shared/schemas/manifest.ts';
import { MAX_BLOB_SIZE, MAX_DICT_SIZE, MAX_OPERATION_SIZE } from './format.ts';
import type { ManifestView, OperationTable } from './operation-table.ts';

function invalid(message: string, details: Record<string, unknown> = {}): never {
  throw new TandemError('ERR_MANIFEST_INVALID', `Invalid manifest: ${message}.`, { details });
}

export function extentsLength(extents: readonly Extent[]): number {
  let total = 0;
  for (const [, length] of extents) total += length;
  return total;
}

/** Extents from..to−1 of the table's pool lie in [0, size). */
function checkInRange(table: OperationTable, from: number, to: number, size: number, what: string, index: number): void {
  for (let e = from; e < to; e++) {
    const offset = table.offsetAt(e);
    const length = table.lengthAt(e);
    if (offset + length > size) invalid(`operation ${index}: ${what} extent [${offset}, ${length}] ends beyond ${size}`, { operation: index });
  }
}

/**
 * Every dst extent as a piece of the target, sorted by start (stable: in
 * operation order where starts tie). Typed arrays, 12 bytes a piece, held
 * while the checks run.
 */
class Pieces {
  readonly length: number;
  /** Pool index of each piece's extent and the operation that writes it, in sorted order. */
  private readonly extent: Uint32Array;
  private readonly op: Uint32Array;

  constructor(private readonly table: OperationTable) {
    let count = 0;
    for (let i = 0; i < table.length; i++) count += table.dstEnd(i) - table.dstStart(i);
    this.length = count;
    let extent = new Uint32Array(count);
    let op = new Uint32Array(count);
    let p = 0;
    let sorted = true;
    for (let i = 0; i < table.length; i++) {
      for (let e = table.dstStart(i); e < table.dstEnd(i); e++) {
        if (p > 0 && table.offsetAt(e) < table.offsetAt(extent[p - 1]!)) sorted = false;
        extent[p] = e;
        op[p++] = i;
      }
    }
    if (!sorted) {
      // A generator writes most payloads in target order; a delta with PATCH or TARGET_COPY moved last is not.
      const order = new Uint32Array(count).map((_, k) => k).sort((a, b) => table.offsetAt(extent[a]!) - table.offsetAt(extent[b]!) || a - b);
      const byStart = new Uint32Array(count);
      const opByStart = new Uint32Array(count);
      order.forEach((k, at) => {
        byStart[at] = extent[k]!;
        opByStart[at] = op[k]!;
      });
      extent = byStart;
      op = opByStart;
    }
    this.extent = extent;
    this.op = op;
  }

  start(p: number): number {
    return this.table.offsetAt(this.extent[p]!);
  }
  end(p: number): number {
    return this.start(p) + this.table.lengthAt(this.extent[p]!);
  }
  operation(p: number): number {
    return this.op[p]!;
  }

  /** Index of the last piece starting at or before `offset`. */
  find(offset: number): number {
    let lo = 0;
    let hi = this.length - 1;
    let found = -1;
    while (lo <= hi) {
      const mid = (lo + hi) >> 1;
      if (this.start(mid) <= offset) {
        found = mid;
        lo = mid + 1;
      } else {
        hi = mid - 1;
      }
    }
    return found;
  }
}

export function checkManifest(manifest: ManifestView): void {
  const table = manifest.operations;
  const targetSize = manifest.target.size;
  const sourceSize = manifest.source?.size ?? 0;
  const isDelta = manifest.kind === 'delta';
  const blobRaw = new Float64Array(manifest.blobs.length);
  let currentBlob = -1;

  for (let i = 0; i < table.length; i++) {
    const kind = table.kind(i);
    const outLength = table.outputLength(i);
    if (outLength > MAX_OPERATION_SIZE) invalid(`operation ${i} writes ${outLength} bytes, more than ${MAX_OPERATION_SIZE}`, { operation: i });
    checkInRange(table, table.dstStart(i), table.dstEnd(i), targetSize, 'dst', i);

    switch (kind) {
      case 'SOURCE_COPY':
        if (!isDelta) invalid(`operation ${i}: SOURCE_COPY in a full payload`, { operation: i });
        if (table.inputLength(i) !== outLength) invalid(`operation ${i}: src and dst lengths differ`, { operation: i });
        checkInRange(table, table.dstEnd(i), table.srcEnd(i), sourceSize, 'src', i);
        break;
      case 'TARGET_COPY':
        if (table.inputLength(i) !== outLength) invalid(`operation ${i}: src and dst lengths differ`, { operation: i });
        checkInRange(table, table.dstEnd(i), table.srcEnd(i), targetSize, 'src', i);
        break;
      case 'REPLACE':
      case 'PATCH': {
        const b = table.blob(i);
        const blob = manifest.blobs[b];
        if (blob === undefined) invalid(`operation ${i} names blob ${b}, which does not exist`, { operation: i });
        if (b !== currentBlob && b !== currentBlob + 1) {
          invalid(`operation ${i} uses blob ${b} out of order (blobs are consumed in sequence)`, { operation: i });
        }
        currentBlob = b;
        if ((kind === 'PATCH') !== (blob.dict !== undefined)) {
          invalid(`operation ${i}: ${kind} needs a blob ${kind === 'PATCH' ? 'with' : 'without'} a source dictionary`, { operation: i });
        }
        blobRaw[b]! += outLength;
        break;
      }
      case 'ZERO':
        break;
    }
  }

  if (currentBlob !== manifest.blobs.length - 1) invalid(`blob ${currentBlob + 1} is never used`);
  let dataSize = 0;
  manifest.blobs.forEach((blob, b) => {
    if (blob.size > MAX_BLOB_SIZE) invalid(`blob ${b} is ${blob.size} bytes, more than ${MAX_BLOB_SIZE}`, { blob: b });
    if (blob.rawSize !== blobRaw[b]) invalid(`blob ${b} declares ${blob.rawSize} decoded bytes but its operations take ${blobRaw[b]}`, { blob: b });
    if (blob.dict !== undefined) {
      if (!isDelta) invalid(`blob ${b} has a source dictionary in a full payload`, { blob: b });
      const dictLength = extentsLength(blob.dict);
      if (dictLength > MAX_DICT_SIZE) invalid(`blob ${b} dictionary is ${dictLength} bytes, more than ${MAX_DICT_SIZE}`, { blob: b });
      for (const [offset, length] of blob.dict) {
        if (offset + length > sourceSize) invalid(`blob ${b} dictionary extent ends beyond the source`, { blob: b });
      }
    }
    dataSize += blob.size;
  });
  if (dataSize !== manifest.dataSize) invalid(`blobs add up to ${dataSize} bytes but dataSize is ${manifest.dataSize}`);

  // The operations' outputs must tile [0, target.size) exactly: no byte written twice, none left unwritten.
  const pieces = new Pieces(table);
  let covered = 0;
  for (let p = 0; p < pieces.length; p++) {
    const start = pieces.start(p);
    if (start < covered) invalid(`operation ${pieces.operation(p)} writes bytes at ${start} that another operation also writes`, { operation: pieces.operation(p) });
    if (start > covered) invalid(`no operation writes target bytes ${covered}..${start}`);
    covered = pieces.end(p);
  }
  if (covered !== targetSize) invalid(`no operation writes target bytes ${covered}..${targetSize}`);

  // TARGET_COPY may only read target bytes that earlier operations wrote (and verified).
  for (let i = 0; i < table.length; i++) {
    if (table.kind(i) !== 'TARGET_COPY') continue;
    for (let e = table.dstEnd(i); e < table.srcEnd(i); e++) {
      let at = table.offsetAt(e);
      const end = at + table.lengthAt(e);
      let p = pieces.find(at);
      while (at < end) {
        if (p < 0 || p >= pieces.length || pieces.operation(p) >= i) {
          invalid(`operation ${i}: TARGET_COPY reads target bytes at ${at} before they are written`, { operation: i });
        }
        at = pieces.end(p);
        p++;
      }
    }
  }
}
