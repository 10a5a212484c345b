/**
 * Exact reads from a byte stream (a file, an HTTP body): the payload reader
 * asks for N bytes and gets N, or ERR_PAYLOAD_TRUNCATED. It holds at most the
 * one chunk the stream last handed over, so memory follows the caller's reads.
 */
import { TandemError } from '../shared/errors.ts';
import { noteStreamedGarbage } from './reclaim.ts';

export class ByteReader {
  private readonly iterator: AsyncIterator<Uint8Array>;
  private pending: Buffer = Buffer.alloc(0);
  private done = false;
  /** Bytes consumed so far, counted from where the stream started. */
  offset: number;

  constructor(source: AsyncIterable<Uint8Array> | Iterable<Uint8Array>, startOffset = 0) {
    this.iterator = Symbol.asyncIterator in source ? source[Symbol.asyncIterator]() : toAsync(source[Symbol.iterator]());
    this.offset = startOffset;
  }

  private async fill(): Promise<boolean> {
    while (this.pending.length === 0 && !this.done) {
      const next = await this.iterator.next();
      if (next.done) this.done = true;
      else {
        // Each chunk a socket or file stream hands over is a new ArrayBuffer, garbage once copied out.
        noteStreamedGarbage(next.value.byteLength);
        this.pending = Buffer.from(next.value.buffer, next.value.byteOffset, next.value.byteLength);
      }
    }
    return this.pending.length > 0;
  }

  /** Reads exactly `length` bytes into `into` (or a new buffer). */
  async read(length: number, into?: Buffer, what = 'payload'): Promise<Buffer> {
    const out = into ? into.subarray(0, length) : Buffer.allocUnsafe(length);
    let at = 0;
    while (at < length) {
      if (!(await this.fill())) {
        throw new TandemError('ERR_PAYLOAD_TRUNCATED', `The payload ends inside its ${what} (at byte ${this.offset}, ${length - at} bytes missing).`, {
          details: { offset: this.offset, missing: length - at },
        });
      }
      const take = Math.min(length - at, this.pending.length);
      this.pending.copy(out, at, 0, take);
      this.pending = this.pending.subarray(take);
      at += take;
      this.offset += take;
    }
    return out;
  }

  /** The stream must end here: anything more is refused, never ignored. */
  async expectEnd(): Promise<void> {
    if (await this.fill()) {
      throw new TandemError('ERR_PAYLOAD_TRAILING_DATA', `The payload has data after its last blob (at byte ${this.offset}).`, {
        details: { offset: this.offset },
      });
    }
  }

  async close(): Promise<void> {
    if (!this.done) await this.iterator.return?.();
  }
}

function toAsync(iterator: Iterator<Uint8Array>): AsyncIterator<Uint8Array> {
  return { next: () => Promise.resolve(iterator.next()) };
}
