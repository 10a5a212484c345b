/**
 * What the schema cannot say about a manifest, checked before the first byte
 * is written: every extent in range, the operations' outputs tile the target
 * exactly once, no operation writes more than 2 MiB, TARGET_COPY reads only
 * bytes an earlier operation wrote, and blobs are consumed in order with sizes
 * that add up. A manifest that passes cannot make the apply engine write
 * outside the declared target or hold more than the stated limits.
 */
import { TandemError } from '../shared/errors.ts';
import type { Extent, Manifest } from '../shared/schemas/manifest.ts';
import { MAX_BLOB_SIZE, MAX_DICT_SIZE, MAX_OPERATION_SIZE } from './format.ts';

function invalid(message: string, details: Record<string, unknown> = {}): never {
  throw new TandemError('ERR_MANIFEST_INVALID', `Invalid manifest: ${message}.`, { details });
}

export function extentsLength(extents: readonly Extent[]): number {
  let total = 0;
  for (const [, length] of extents) total += length;
  return total;
}

function checkInRange(extents: readonly Extent[], size: number, what: string, index: number): void {
  for (const [offset, length] of extents) {
    if (offset + length > size) invalid(`operation ${index}: ${what} extent [${offset}, ${length}] ends beyond ${size}`, { operation: index });
  }
}

interface Piece {
  start: number;
  end: number;
  op: number;
}

/** Index of the last piece starting at or before `offset` (pieces sorted by start). */
function findPiece(pieces: readonly Piece[], offset: number): number {
  let lo = 0;
  let hi = pieces.length - 1;
  let found = -1;
  while (lo <= hi) {
    const mid = (lo + hi) >> 1;
    if (pieces[mid]!.start <= offset) {
      found = mid;
      lo = mid + 1;
    } else {
      hi = mid - 1;
    }
  }
  return found;
}

export function checkManifest(manifest: Manifest): void {
  const targetSize = manifest.target.size;
  const sourceSize = manifest.source?.size ?? 0;
  const isDelta = manifest.kind === 'delta';
  const pieces: Piece[] = [];
  const blobRaw = new Array<number>(manifest.blobs.length).fill(0);
  let currentBlob = -1;

  manifest.operations.forEach((op, i) => {
    const outLength = extentsLength(op.dst);
    if (outLength > MAX_OPERATION_SIZE) invalid(`operation ${i} writes ${outLength} bytes, more than ${MAX_OPERATION_SIZE}`, { operation: i });
    checkInRange(op.dst, targetSize, 'dst', i);
    for (const [offset, length] of op.dst) pieces.push({ start: offset, end: offset + length, op: i });

    switch (op.op) {
      case 'SOURCE_COPY':
        if (!isDelta) invalid(`operation ${i}: SOURCE_COPY in a full payload`, { operation: i });
        if (extentsLength(op.src) !== outLength) invalid(`operation ${i}: src and dst lengths differ`, { operation: i });
        checkInRange(op.src, sourceSize, 'src', i);
        break;
      case 'TARGET_COPY':
        if (extentsLength(op.src) !== outLength) invalid(`operation ${i}: src and dst lengths differ`, { operation: i });
        checkInRange(op.src, targetSize, 'src', i);
        break;
      case 'REPLACE':
      case 'PATCH': {
        const blob = manifest.blobs[op.blob];
        if (blob === undefined) invalid(`operation ${i} names blob ${op.blob}, which does not exist`, { operation: i });
        if (op.blob !== currentBlob && op.blob !== currentBlob + 1) {
          invalid(`operation ${i} uses blob ${op.blob} out of order (blobs are consumed in sequence)`, { operation: i });
        }
        currentBlob = op.blob;
        if ((op.op === 'PATCH') !== (blob.dict !== undefined)) {
          invalid(`operation ${i}: ${op.op} needs a blob ${op.op === 'PATCH' ? 'with' : 'without'} a source dictionary`, { operation: i });
        }
        blobRaw[op.blob]! += outLength;
        break;
      }
      case 'ZERO':
        break;
    }
  });

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
  pieces.sort((a, b) => a.start - b.start);
  let covered = 0;
  for (const piece of pieces) {
    if (piece.start < covered) invalid(`operation ${piece.op} writes bytes at ${piece.start} that another operation also writes`, { operation: piece.op });
    if (piece.start > covered) invalid(`no operation writes target bytes ${covered}..${piece.start}`);
    covered = piece.end;
  }
  if (covered !== targetSize) invalid(`no operation writes target bytes ${covered}..${targetSize}`);

  // TARGET_COPY may only read target bytes that earlier operations wrote (and verified).
  manifest.operations.forEach((op, i) => {
    if (op.op !== 'TARGET_COPY') return;
    for (const [offset, length] of op.src) {
      let at = offset;
      const end = offset + length;
      let p = findPiece(pieces, at);
      while (at < end) {
        const piece = pieces[p];
        if (piece === undefined || piece.op >= i) {
          invalid(`operation ${i}: TARGET_COPY reads target bytes at ${at} before they are written`, { operation: i });
        }
        at = piece.end;
        p++;
      }
    }
  });
}
