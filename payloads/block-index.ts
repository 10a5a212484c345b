/**
 * Content index of 4 KiB blocks for the generator: a 64-bit fingerprint (the
 * first 8 bytes of the block's sha256) to the first block offset holding it,
 * in an open-addressing table of typed arrays — about 16 bytes a block, so a
 * 4 GiB image (1 Mi blocks) costs 32 MiB, not the hundreds a Map would.
 * Fingerprints only nominate candidates: the generator compares the bytes
 * before it emits a copy.
 */
import { createHash } from 'node:crypto';

export interface Fingerprint {
  hi: number;
  lo: number;
}

export function fingerprint(block: Uint8Array): Fingerprint {
  const digest = createHash('sha256').update(block).digest();
  return { hi: digest.readUInt32LE(0), lo: digest.readUInt32LE(4) };
}

export class BlockIndex {
  private keysHi: Uint32Array;
  private keysLo: Uint32Array;
  /** Offset + 1, so 0 marks an empty slot (offsets are < 2^53). */
  private values: Float64Array;
  private mask: number;
  private count = 0;

  constructor(expectedEntries: number) {
    let capacity = 1024;
    while (capacity < expectedEntries * 2) capacity *= 2;
    this.keysHi = new Uint32Array(capacity);
    this.keysLo = new Uint32Array(capacity);
    this.values = new Float64Array(capacity);
    this.mask = capacity - 1;
  }

  get size(): number {
    return this.count;
  }

  /** The first offset recorded for this fingerprint, or -1. */
  get(fp: Fingerprint): number {
    for (let slot = (fp.hi ^ Math.imul(fp.lo, 0x9e3779b1)) & this.mask; ; slot = (slot + 1) & this.mask) {
      const value = this.values[slot]!;
      if (value === 0) return -1;
      if (this.keysHi[slot] === fp.hi && this.keysLo[slot] === fp.lo) return value - 1;
    }
  }

  /** Records the offset unless the fingerprint is already known (the first occurrence wins). */
  add(fp: Fingerprint, offset: number): void {
    if (this.count * 2 >= this.values.length) this.grow();
    for (let slot = (fp.hi ^ Math.imul(fp.lo, 0x9e3779b1)) & this.mask; ; slot = (slot + 1) & this.mask) {
      const value = this.values[slot]!;
      if (value === 0) {
        this.keysHi[slot] = fp.hi;
        this.keysLo[slot] = fp.lo;
        this.values[slot] = offset + 1;
        this.count++;
        return;
      }
      if (this.keysHi[slot] === fp.hi && this.keysLo[slot] === fp.lo) return;
    }
  }

  private grow(): void {
    const { keysHi, keysLo, values } = this;
    const capacity = values.length * 2;
    this.keysHi = new Uint32Array(capacity);
    this.keysLo = new Uint32Array(capacity);
    this.values = new Float64Array(capacity);
    this.mask = capacity - 1;
    this.count = 0;
    for (let i = 0; i < values.length; i++) {
      if (values[i] !== 0) this.add({ hi: keysHi[i]!, lo: keysLo[i]! }, values[i]! - 1);
    }
  }
}
