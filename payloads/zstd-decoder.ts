/**
 * The streaming zstd decoder interface: zstd-codec's Emscripten binding has
 * this shape (payloads/zstd.ts), node:zlib's decoder is adapted to it
 * (payloads/zstd-native.ts), and FrameStream drives either.
 */
/** One frame's decoder: begun (with a dictionary or not), fed, ended, deleted. */
export interface StreamBinding {
  begin(level?: number): boolean;
  beginUsingDict(dict: unknown): boolean;
  transform(chunk: Uint8Array, callback: (out: Uint8Array) => void): boolean;
  end(callback: (out: Uint8Array) => void): boolean;
  delete(): void;
}

/** What decoding needs: a streaming decoder and dictionaries for it. */
export interface ZstdDecoder {
  /** `zstd-codec` or `node:zlib`, for logs and benchmarks. */
  readonly name: string;
  /** Each feed's output arrives in a new ArrayBuffer, garbage once copied (reclaim.ts). */
  readonly freshOutput: boolean;
  ZstdDecompressStreamBinding: new () => StreamBinding;
  createDecompressionDict(bytes: Uint8Array): { delete(): void };
}
