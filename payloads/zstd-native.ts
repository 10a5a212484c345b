/**
 * node:zlib's zstd decoder (Node ≥ 22.15, 23.8) for payload blobs, behind the
 * streaming interface payloads/zstd.ts drives zstd-codec through. Measured
 * through FrameStream on 2 MiB level-19 frames of the fixture image (Node 24,
 * --no-opt): 360–395 MiB/s where zstd-codec's WebAssembly does 51–84; and no
 * WebAssembly to compile. The agent uses it wherever it works.
 */
import zlib from 'node:zlib';
import { MAX_WINDOW_LOG } from './format.ts';
import type { StreamBinding, ZstdDecoder } from './zstd-decoder.ts';

/** The most a zstd block decodes to (RFC 8878, Block_Maximum_Size): one feed's output. */
const MAX_BLOCK_SIZE = 128 * 1024;

/** node:zlib's zstd (Node ≥ 22.15, 23.8), which @types/node 20 does not describe. */
interface ZlibZstd {
  createZstdDecompress?(options: ZlibZstdOptions): ZlibEngine;
  zstdCompressSync?(data: Uint8Array, options: ZlibZstdOptions): Buffer;
  constants: { ZSTD_d_windowLogMax?: number; ZSTD_e_continue?: number; ZSTD_c_checksumFlag?: number };
}

interface ZlibZstdOptions {
  params?: Record<number, number>;
  dictionary?: Buffer;
}

/**
 * The parts of a zlib engine that its own `*Sync` functions drive (node's
 * lib/zlib.js processChunkSync): the native handle's synchronous write and the
 * state array it leaves [output left, input left] in. Not public API; the probe
 * below checks they behave before the agent relies on them.
 */
interface ZlibEngine {
  _handle: { writeSync(flush: number, input: Uint8Array, inOff: number, inLen: number, out: Uint8Array, outOff: number, outLen: number): void } | null;
  _writeState: Uint32Array;
  readonly destroyed: boolean;
  on(event: 'error', listener: (err: Error) => void): unknown;
  close(): void;
}

const zlibZstd = zlib as unknown as ZlibZstd;

interface NativeDictionary {
  bytes: Uint8Array;
  delete(): void;
}

/**
 * node:zlib's zstd decoder behind zstd-codec's streaming interface, written to
 * synchronously as zlib's `*Sync` functions do, but kept open between feeds
 * (those close the engine after one call). Output goes to one reused buffer:
 * unlike zstd-codec, no garbage per block. The window limit is set in the
 * decoder too, though FrameStream has already refused a frame that asks for more.
 */
class NativeDecompressStream implements StreamBinding {
  private engine: ZlibEngine | undefined;
  private failed = false;
  private readonly out = Buffer.allocUnsafe(MAX_BLOCK_SIZE);

  begin(): boolean {
    return this.start(undefined);
  }

  beginUsingDict(dict: unknown): boolean {
    return this.start((dict as NativeDictionary).bytes);
  }

  private start(dictionary: Uint8Array | undefined): boolean {
    const { createZstdDecompress, constants } = zlibZstd;
    if (!createZstdDecompress || constants.ZSTD_d_windowLogMax === undefined) return false;
    try {
      const options: ZlibZstdOptions = { params: { [constants.ZSTD_d_windowLogMax]: MAX_WINDOW_LOG } };
      if (dictionary) options.dictionary = Buffer.from(dictionary.buffer, dictionary.byteOffset, dictionary.byteLength);
      const engine = createZstdDecompress(options);
      // A decoding error destroys the engine and emits 'error' on the next tick: transform reports it.
      engine.on('error', () => {
        this.failed = true;
      });
      this.engine = engine;
      return true;
    } catch {
      return false;
    }
  }

  transform(chunk: Uint8Array, callback: (out: Uint8Array) => void): boolean {
    const engine = this.engine;
    let inOff = 0;
    let inLen = chunk.length;
    try {
      for (;;) {
        if (!engine?._handle || this.failed) return false;
        engine._handle.writeSync(zlibZstd.constants.ZSTD_e_continue ?? 0, chunk, inOff, inLen, this.out, 0, this.out.length);
        if (engine.destroyed) return false;
        const [outLeft, inLeft] = engine._writeState;
        if (outLeft! < this.out.length) callback(this.out.subarray(0, this.out.length - outLeft!));
        inOff += inLen - inLeft!;
        inLen = inLeft!;
        // Output space left over: everything fed was decoded (zstd stops early only when output is full).
        if (outLeft! > 0) return inLen === 0;
      }
    } catch {
      return false;
    }
  }

  /** Nothing is held back: every feed returned all it decoded (FrameStream checks the count). */
  end(): boolean {
    return this.engine !== undefined && !this.failed && !this.engine.destroyed;
  }

  delete(): void {
    this.engine?.close();
    this.engine = undefined;
  }
}

const NATIVE_DECODER: ZstdDecoder = {
  name: 'node:zlib',
  freshOutput: false,
  ZstdDecompressStreamBinding: NativeDecompressStream,
  createDecompressionDict: (bytes) => ({ bytes, delete: () => undefined }),
};

let nativeDecoderProbe: boolean | undefined;

/**
 * node:zlib's zstd decoder where it works as the agent needs, else undefined;
 * probed once. node:zlib has zstd from Node 22.15 and 23.8 but dictionaries only from later
 * releases, which ignore an option they do not know, and the engine's
 * synchronous write is internal. So, by behaviour rather than version: 4 KiB
 * of noise compressed with itself as the dictionary (a frame of a few bytes
 * only where dictionaries work) must decode back through the decoder above,
 * fed in two parts; and a corrupted frame must fail, not decode.
 */
export function nativeZstdDecoder(): ZstdDecoder | undefined {
  nativeDecoderProbe ??= (() => {
    const { zstdCompressSync, constants } = zlibZstd;
    if (!zstdCompressSync || constants.ZSTD_c_checksumFlag === undefined) return false;
    try {
      const sample = Buffer.alloc(4096);
      for (let i = 0, x = 0x9e3779b9; i < sample.length; i++) sample[i] = (x = (Math.imul(x, 1103515245) + 12345) >>> 0) >>> 24;
      const frame = zstdCompressSync(sample, { dictionary: sample, params: { [constants.ZSTD_c_checksumFlag]: 1 } });
      if (frame.length > 256) return false;
      const decode = (bytes: Buffer): Buffer | undefined => {
        const stream = new NativeDecompressStream();
        const parts: Buffer[] = [];
        const sink = (out: Uint8Array): void => void parts.push(Buffer.from(out));
        try {
          const cut = bytes.length >> 1;
          const ok = stream.beginUsingDict({ bytes: sample }) && stream.transform(bytes.subarray(0, cut), sink) && stream.transform(bytes.subarray(cut), sink) && stream.end();
          return ok ? Buffer.concat(parts) : undefined;
        } finally {
          stream.delete();
        }
      };
      const corrupt = Buffer.from(frame);
      corrupt[corrupt.length - 1]! ^= 0xff; // the content checksum
      return decode(frame)?.equals(sample) === true && decode(corrupt) === undefined;
    } catch {
      return false;
    }
  })();
  return nativeDecoderProbe ? NATIVE_DECODER : undefined;
}
