/**
 * Seeded images and edits for the payload tests. Every random choice comes from
 * one PRNG so a failing case reproduces from the seed its test prints
 * (TANDEM_TEST_SEED=<seed> npx ava test/payloads/…). The content mixes what real
 * images hold: incompressible bytes, text-like runs, zero runs and repeated
 * blocks, with region borders off the 4 KiB grid.
 */

/** sfc32: small, fast, 32-bit state words; good enough to fuzz with and exactly reproducible. */
export class Prng {
  private a: number;
  private b: number;
  private c: number;
  private d: number;

  constructor(readonly seed: number) {
    this.a = 0x9e3779b9;
    this.b = 0x243f6a88;
    this.c = 0xb7e15162;
    this.d = seed >>> 0;
    for (let i = 0; i < 16; i++) this.next();
  }

  /** A uniform 32-bit unsigned integer. */
  next(): number {
    const t = (((this.a + this.b) | 0) + this.d) | 0;
    this.d = (this.d + 1) | 0;
    this.a = this.b ^ (this.b >>> 9);
    this.b = (this.c + (this.c << 3)) | 0;
    this.c = (this.c << 21) | (this.c >>> 11);
    this.c = (this.c + t) | 0;
    return t >>> 0;
  }

  /** An integer in [0, n). */
  int(n: number): number {
    return Math.floor((this.next() / 2 ** 32) * n);
  }

  /** An integer in [lo, hi]. */
  range(lo: number, hi: number): number {
    return lo + this.int(hi - lo + 1);
  }

  pick<T>(items: readonly T[]): T {
    return items[this.int(items.length)]!;
  }

  bytes(n: number): Buffer {
    const out = Buffer.allocUnsafe(n);
    let i = 0;
    for (; i + 4 <= n; i += 4) out.writeUInt32LE(this.next(), i);
    for (; i < n; i++) out[i] = this.next() & 0xff;
    return out;
  }
}

/** The seed a test file starts from: TANDEM_TEST_SEED when set, else a fresh one (printed by the tests). */
export function baseSeed(): number {
  const fromEnv = process.env['TANDEM_TEST_SEED'];
  if (fromEnv !== undefined && fromEnv !== '') return Number(fromEnv) >>> 0;
  return (Math.random() * 2 ** 32) >>> 0;
}

const WORDS = ['root', 'usr', 'lib', 'systemd', 'x86_64', 'linux-gnu', 'debian', 'etc', 'conf', 'the', 'tandem', '\n', '\0\0\0\0'];

function textLike(rng: Prng, n: number): Buffer {
  const parts: string[] = [];
  let length = 0;
  while (length < n) {
    const word = rng.pick(WORDS);
    parts.push(word, ' ');
    length += word.length + 1;
  }
  return Buffer.from(parts.join(''), 'latin1').subarray(0, n);
}

/** An image of `size` bytes in regions of random kind and length, borders anywhere. */
export function randomImage(rng: Prng, size: number): Buffer {
  const image = Buffer.alloc(size);
  let at = 0;
  while (at < size) {
    const length = Math.min(size - at, rng.range(1, 96 * 1024));
    switch (rng.int(5)) {
      case 0:
        rng.bytes(length).copy(image, at);
        break;
      case 1:
        textLike(rng, length).copy(image, at);
        break;
      case 2:
        break; // zeros
      case 3: {
        // A copy of earlier content, block-aligned when it can be: repeated blocks for TARGET_COPY.
        if (at >= 4096) {
          const from = Math.floor(rng.int(at) / 4096) * 4096;
          image.copy(image, at, from, Math.min(from + length, at));
        } else {
          rng.bytes(length).copy(image, at);
        }
        break;
      }
      default: {
        // Short random runs on top of text: a "changed file".
        textLike(rng, length).copy(image, at);
        for (let i = 0; i < length / 512; i++) image[at + rng.int(length)] = rng.next() & 0xff;
      }
    }
    at += length;
  }
  return image;
}

export type EditKind = 'overwrite' | 'insert' | 'delete' | 'zero' | 'repeat-blocks' | 'copy-unaligned' | 'resize';

/** One random edit; returns the new image and what was done, for the failure message. */
export function randomEdit(rng: Prng, image: Buffer, maxSize: number): { image: Buffer; what: string } {
  const kind = rng.pick<EditKind>(['overwrite', 'insert', 'delete', 'zero', 'repeat-blocks', 'copy-unaligned', 'resize']);
  const size = image.length;
  const at = rng.int(size);
  const length = rng.range(1, 64 * 1024);
  switch (kind) {
    case 'overwrite': {
      const out = Buffer.from(image);
      const data = rng.int(2) ? rng.bytes(length) : textLike(rng, length);
      data.copy(out, at, 0, Math.min(length, size - at));
      return { image: out, what: `overwrite ${length} at ${at}` };
    }
    case 'insert': {
      if (size + length > maxSize) return { image, what: 'insert skipped (size limit)' };
      const data = rng.int(2) ? rng.bytes(length) : textLike(rng, length);
      return { image: Buffer.concat([image.subarray(0, at), data, image.subarray(at)]), what: `insert ${length} at ${at}` };
    }
    case 'delete': {
      const end = Math.min(size, at + length);
      if (end - at >= size) return { image, what: 'delete skipped (would empty the image)' };
      return { image: Buffer.concat([image.subarray(0, at), image.subarray(end)]), what: `delete ${end - at} at ${at}` };
    }
    case 'zero': {
      const out = Buffer.from(image);
      out.fill(0, at, Math.min(size, at + length));
      return { image: out, what: `zero ${length} at ${at}` };
    }
    case 'repeat-blocks': {
      const out = Buffer.from(image);
      const blocks = Math.floor(size / 4096);
      if (blocks < 2) return { image, what: 'repeat skipped (too small)' };
      const count = rng.range(1, Math.min(8, blocks - 1));
      const from = rng.int(blocks - count + 1) * 4096;
      const to = rng.int(blocks - count + 1) * 4096;
      image.copy(out, to, from, from + count * 4096);
      return { image: out, what: `repeat ${count} blocks ${from} -> ${to}` };
    }
    case 'copy-unaligned': {
      const out = Buffer.from(image);
      const from = rng.int(size);
      const to = rng.int(size);
      const n = Math.min(length, size - from, size - to);
      image.copy(out, to, from, from + n);
      return { image: out, what: `copy ${n} ${from} -> ${to}` };
    }
    case 'resize': {
      const newSize = rng.range(Math.max(1, size - 200_000), Math.min(maxSize, size + 200_000));
      if (newSize <= size) return { image: image.subarray(0, newSize), what: `truncate to ${newSize}` };
      return { image: Buffer.concat([image, rng.int(2) ? rng.bytes(newSize - size) : Buffer.alloc(newSize - size)]), what: `extend to ${newSize}` };
    }
  }
}

/** Several edits in a row, for the typical "new release" image. */
export function editImage(rng: Prng, image: Buffer, edits: number, maxSize: number): { image: Buffer; log: string[] } {
  let current = image;
  const log: string[] = [];
  for (let i = 0; i < edits; i++) {
    const { image: next, what } = randomEdit(rng, current, maxSize);
    current = next;
    log.push(what);
  }
  return { image: current, log };
}

/** Streams a buffer in chunks of varying size, so readers meet every boundary. */
export async function* chunksOf(bytes: Uint8Array, rng?: Prng, maxChunk = 64 * 1024): AsyncGenerator<Uint8Array> {
  for (let at = 0; at < bytes.length; ) {
    const n = rng ? rng.range(1, maxChunk) : maxChunk;
    yield bytes.subarray(at, Math.min(bytes.length, at + n));
    at += n;
  }
}
