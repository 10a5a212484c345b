/**
 * The operations of a manifest as a reader holds them: a few typed arrays
 * instead of one JS object per operation and one array per extent. As objects
 * they cost about 860 bytes of V8 heap per operation (63 MiB for the 76,407 of
 * a 512 MiB image of alternating runs); here an operation costs 11 bytes, plus
 * 32 for its sha256 (all kinds but ZERO) and 8 per extent (16 in the rare
 * manifest with an extent off the 512-byte grid or beyond 2 TiB), allocated
 * once at the size the parser counted (payloads/manifest-parser.ts).
 */
import type { Extent, Manifest, ManifestHeader, Operation, OperationKind } from '../shared/schemas/manifest.ts';

/** Kind codes, in this order; ZERO is the only kind without a sha256. */
export const OPERATION_KINDS: readonly OperationKind[] = ['REPLACE', 'PATCH', 'SOURCE_COPY', 'TARGET_COPY', 'ZERO'];
const KIND_CODES = new Map(OPERATION_KINDS.map((kind, code) => [kind, code]));
const ZERO = 4;
const NO_BLOB = 0xffffffff;
/** One hash-slot checkpoint per this many operations: a slot is found by counting the ZERO kinds since the last one. */
const ZERO_STRIDE = 64;
/**
 * Extents are held in sectors while they all fall on the 512-byte grid below
 * 2^32 sectors (2 TiB), as an image's do: half the memory of bytes as doubles.
 */
const SECTOR = 512;
const MAX_SECTORS = 0xffffffff;

export interface TableCapacity {
  operations: number;
  /** dst plus src extents of all operations. */
  extents: number;
  /** Operations that carry a sha256 (all but ZERO). */
  hashes: number;
}

export class OperationTable {
  /** Operations appended so far. */
  length = 0;
  private readonly kinds: Uint8Array;
  private readonly blobs: Uint32Array;
  /** Operation i's extents are pool entries extentStart[i] … extentStart[i + 1] − 1: first its dst, then its src. */
  private readonly extentStart: Uint32Array;
  private readonly dstCount: Uint16Array;
  /** offset, length, offset, length, …: in sectors (Uint32Array) until an extent does not fit, then in bytes (Float64Array: integers ≤ 2^53 are exact). */
  private pool: Uint32Array | Float64Array;
  /** Bytes per unit of the pool: SECTOR, or 1 once it holds bytes. */
  private unit = SECTOR;
  /** 32 bytes per operation that has a sha256, in operation order. */
  private readonly hashes: Buffer;
  /** ZERO operations before operation k·ZERO_STRIDE: saves a 4-byte hash index per operation. */
  private readonly zerosBefore: Uint32Array;
  private extentCount = 0;
  private hashCount = 0;
  private zeroCount = 0;

  constructor(capacity: TableCapacity) {
    this.kinds = new Uint8Array(capacity.operations);
    this.blobs = new Uint32Array(capacity.operations);
    this.extentStart = new Uint32Array(capacity.operations + 1);
    this.dstCount = new Uint16Array(capacity.operations);
    this.pool = new Uint32Array(2 * capacity.extents);
    this.hashes = Buffer.alloc(32 * capacity.hashes);
    this.zerosBefore = new Uint32Array(Math.ceil(capacity.operations / ZERO_STRIDE) + 1);
  }

  /** A table holding `operations` (the generator's and the tests' plain form). */
  static from(operations: readonly Operation[]): OperationTable {
    let extents = 0;
    let hashes = 0;
    for (const op of operations) {
      extents += op.dst.length + ('src' in op ? op.src.length : 0);
      if (op.op !== 'ZERO') hashes++;
    }
    const table = new OperationTable({ operations: operations.length, extents, hashes });
    for (const op of operations) table.append(op);
    return table;
  }

  /** Appends one operation that passed the operation schema; throws if the table was sized too small. */
  append(op: Operation): void {
    const i = this.length;
    const src = 'src' in op ? op.src : [];
    const hasHash = op.op !== 'ZERO';
    if (i >= this.kinds.length || 2 * (this.extentCount + op.dst.length + src.length) > this.pool.length || (hasHash && 32 * this.hashCount >= this.hashes.length)) {
      throw new RangeError(`operation table: operation ${i} does not fit the counted capacity`);
    }
    if (i % ZERO_STRIDE === 0) this.zerosBefore[i / ZERO_STRIDE] = this.zeroCount;
    this.kinds[i] = KIND_CODES.get(op.op)!;
    this.blobs[i] = 'blob' in op ? op.blob : NO_BLOB;
    this.dstCount[i] = op.dst.length;
    for (const [offset, length] of op.dst) this.pushExtent(offset, length);
    for (const [offset, length] of src) this.pushExtent(offset, length);
    this.extentStart[i + 1] = this.extentCount;
    if (hasHash) this.hashes.write((op as { sha256: string }).sha256, 32 * this.hashCount++, 32, 'hex');
    else this.zeroCount++;
    this.length = i + 1;
  }

  private pushExtent(offset: number, length: number): void {
    if (this.unit === SECTOR && !(offset % SECTOR === 0 && length % SECTOR === 0 && offset / SECTOR <= MAX_SECTORS && length / SECTOR <= MAX_SECTORS)) {
      this.pool = Float64Array.from(this.pool, (sectors) => sectors * SECTOR);
      this.unit = 1;
    }
    this.pool[2 * this.extentCount] = offset / this.unit;
    this.pool[2 * this.extentCount + 1] = length / this.unit;
    this.extentCount++;
  }

  kind(i: number): OperationKind {
    return OPERATION_KINDS[this.kinds[i]!]!;
  }

  /** The blob a REPLACE or PATCH reads; -1 for the other kinds. */
  blob(i: number): number {
    const blob = this.blobs[i]!;
    return blob === NO_BLOB ? -1 : blob;
  }

  // Extents by pool index, so the checks walk them without allocating.
  dstStart(i: number): number {
    return this.extentStart[i]!;
  }
  /** End of the dst extents = start of the src extents. */
  dstEnd(i: number): number {
    return this.extentStart[i]! + this.dstCount[i]!;
  }
  srcEnd(i: number): number {
    return this.extentStart[i + 1]!;
  }
  offsetAt(e: number): number {
    return this.pool[2 * e]! * this.unit;
  }
  lengthAt(e: number): number {
    return this.pool[2 * e + 1]! * this.unit;
  }

  /** Bytes operation i writes: the sum of its dst lengths. */
  outputLength(i: number): number {
    return this.sumLengths(this.dstStart(i), this.dstEnd(i));
  }
  /** Bytes operation i reads (SOURCE_COPY, TARGET_COPY; 0 for the others). */
  inputLength(i: number): number {
    return this.sumLengths(this.dstEnd(i), this.srcEnd(i));
  }
  private sumLengths(from: number, to: number): number {
    let total = 0;
    for (let e = from; e < to; e++) total += this.lengthAt(e);
    return total;
  }

  dst(i: number): Extent[] {
    return this.extentsBetween(this.dstStart(i), this.dstEnd(i));
  }
  /** SOURCE_COPY and TARGET_COPY: what they read; [] for the other kinds. */
  src(i: number): Extent[] {
    return this.extentsBetween(this.dstEnd(i), this.srcEnd(i));
  }
  private extentsBetween(from: number, to: number): Extent[] {
    const out: Extent[] = [];
    for (let e = from; e < to; e++) out.push([this.offsetAt(e), this.lengthAt(e)]);
    return out;
  }

  /** The signed sha256 of operation i's output (a view into the table); undefined for ZERO. */
  sha256(i: number): Buffer | undefined {
    if (this.kinds[i] === ZERO) return undefined;
    const block = Math.floor(i / ZERO_STRIDE);
    let slot = i - this.zerosBefore[block]!;
    for (let j = block * ZERO_STRIDE; j < i; j++) if (this.kinds[j] === ZERO) slot--;
    return this.hashes.subarray(32 * slot, 32 * slot + 32);
  }

  sha256Hex(i: number): string | undefined {
    return this.sha256(i)?.toString('hex');
  }

  /** Operation i as a plain object, equal to the one the manifest lists (keys in canonical order). */
  get(i: number): Operation {
    if (!(Number.isInteger(i) && i >= 0 && i < this.length)) throw new RangeError(`operation ${i} is outside 0..${this.length - 1}`);
    const op = this.kind(i);
    const dst = this.dst(i);
    switch (op) {
      case 'ZERO':
        return { dst, op };
      case 'REPLACE':
      case 'PATCH':
        return { blob: this.blob(i), dst, op, sha256: this.sha256Hex(i)! };
      case 'SOURCE_COPY':
      case 'TARGET_COPY':
        return { dst, op, sha256: this.sha256Hex(i)!, src: this.src(i) };
    }
  }

  *[Symbol.iterator](): IterableIterator<Operation> {
    for (let i = 0; i < this.length; i++) yield this.get(i);
  }

  /** Bytes the table holds (its typed arrays), for the memory figures in FORMAT.md and the tests. */
  get byteLength(): number {
    return [this.kinds, this.blobs, this.extentStart, this.dstCount, this.pool, this.hashes, this.zerosBefore].reduce((sum, a) => sum + a.byteLength, 0);
  }
}

/** A manifest as the reader holds it after parsing and checking: the header fields as parsed, the operations as a table. */
export interface ManifestView extends ManifestHeader {
  operations: OperationTable;
}

/** The plain form, every operation an object again: for output (`payload inspect --operations`), not for a device. */
export function materializeManifest(view: ManifestView): Manifest {
  return { ...view, operations: [...view.operations] };
}
