/**
 * zstd for payload blobs. Decoding goes through node:zlib's zstd where the
 * runtime has it (Node ≥ 22.15; with raw-content dictionaries, which later
 * releases added: probed, not assumed), else zstd-codec (WebAssembly, a fixed
 * 16 MiB heap, no compiler needed on a device); either is fed one block at a
 * time so memory stays fixed. Every frame header is inspected BEFORE decoding: a frame
 * that asks for a bigger window than the format allows would abort the
 * WebAssembly module on OOM, so it is refused first. Encoding prefers the
 * native `zstd` binary (levels up to 22, explicit window); zstd-codec is the
 * fallback (measured: its streaming encoder aborts above level 9 on 8 MiB input).
 */
import { spawn } from 'node:child_process';
import { mkdtemp, rm, writeFile } from 'node:fs/promises';
import { readFileSync } from 'node:fs';
import { createRequire } from 'node:module';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { TandemError } from '../shared/errors.ts';
import { noteStreamedGarbage } from './reclaim.ts';
import type { StreamBinding, ZstdDecoder } from './zstd-decoder.ts';
import { nativeZstdDecoder } from './zstd-native.ts';

export type { ZstdDecoder } from './zstd-decoder.ts';

/** zstd-codec: a decoder, and the encoder used where no zstd binary is installed. */
export interface ZstdBinding extends ZstdDecoder {
  ZstdCompressStreamBinding: new () => StreamBinding;
  createCompressionDict(bytes: Uint8Array, level: number): { delete(): void };
}

const require = createRequire(import.meta.url);

type EmscriptenModule = ZstdBinding & { wasmBinary?: Uint8Array; onRuntimeInitialized?: () => void };

/**
 * zstd-codec's Emscripten glue carries its WebAssembly as a 600 KB base64
 * string, parsed and then kept in the heap with the glue's source. A bundle
 * (bin/build.js) ships the glue without it and the module as a .wasm file
 * beside it (measured: 2 MiB less RSS); run from source, the package is used
 * as it is.
 */
function besideBundle(): { glue: string; wasm: Buffer } | undefined {
  try {
    return { glue: fileURLToPath(new URL('./zstd-codec-binding.cjs', import.meta.url)), wasm: readFileSync(new URL('./zstd-codec.wasm', import.meta.url)) };
  } catch {
    return undefined;
  }
}

/** A fresh WebAssembly instance with its own heap; no state is shared between callers. */
export function loadZstdCodec(): Promise<ZstdBinding> {
  // The Emscripten module has a `then` method, so a promise would adopt it as a thenable and never
  // settle: hand out a plain object with just the entry points instead.
  const entryPoints = (m: ZstdBinding): ZstdBinding => ({
    name: 'zstd-codec',
    freshOutput: true,
    ZstdDecompressStreamBinding: m.ZstdDecompressStreamBinding,
    ZstdCompressStreamBinding: m.ZstdCompressStreamBinding,
    createDecompressionDict: (bytes) => m.createDecompressionDict(bytes),
    createCompressionDict: (bytes, level) => m.createCompressionDict(bytes, level),
  });
  const shipped = besideBundle();
  if (shipped) {
    return new Promise((resolve) => {
      const m = { wasmBinary: shipped.wasm } as unknown as EmscriptenModule;
      m.onRuntimeInitialized = () => resolve(entryPoints(m));
      (require(shipped.glue) as (module: EmscriptenModule) => void)(m);
    });
  }
  const moduleLoader = require('zstd-codec/lib/module.js') as { run(f: (binding: ZstdBinding) => void): void };
  return new Promise((resolve) => moduleLoader.run((m) => resolve(entryPoints(m))));
}

export type DecoderPreference = 'auto' | 'native' | 'wasm';

/**
 * The decoder to use: node:zlib's where the runtime has zstd with dictionaries
 * ('auto', the agent's choice; 'native' requires it), else a zstd-codec instance.
 */
export async function loadZstdDecoder(prefer: DecoderPreference = 'auto'): Promise<ZstdDecoder> {
  const native = prefer === 'wasm' ? undefined : nativeZstdDecoder();
  if (native) return native;
  if (prefer === 'native') throw new TandemError('ERR_DECODER', `This runtime (Node ${process.versions.node}) has no zstd in node:zlib with dictionaries; Node 24 has.`);
  return loadZstdCodec();
}

const ZSTD_MAGIC = 0xfd2fb528;
const MAX_BLOCK_SIZE = 128 * 1024;

export interface FrameInfo {
  windowSize: number;
  contentSize: number | undefined;
  dictId: number;
  /** Offset of the first block header. */
  headerSize: number;
  /** Offset just past the frame (its last block and checksum). */
  end: number;
}

function frameError(message: string): never {
  throw new TandemError('ERR_BLOB_DECODE', `Blob is not a valid zstd frame: ${message}.`);
}

/**
 * Walks one zstd frame (RFC 8878 §3.1.1) without decoding it: header, window,
 * dictionary id, then the block headers to find where the frame ends.
 */
export function inspectFrame(buf: Uint8Array): FrameInfo {
  const view = new DataView(buf.buffer, buf.byteOffset, buf.byteLength);
  if (buf.length < 6) frameError('too short');
  if (view.getUint32(0, true) !== ZSTD_MAGIC) frameError('bad magic');
  const descriptor = buf[4]!;
  const fcsFlag = descriptor >> 6;
  const singleSegment = (descriptor >> 5) & 1;
  if ((descriptor >> 3) & 1) frameError('reserved bit set');
  const checksum = (descriptor >> 2) & 1;
  const dictIdFlag = descriptor & 3;
  let pos = 5;
  let windowSize = 0;
  if (!singleSegment) {
    const wd = buf[pos++]!;
    const windowLog = 10 + (wd >> 3);
    const base = 2 ** windowLog;
    windowSize = base + (base / 8) * (wd & 7);
  }
  const dictIdBytes = [0, 1, 2, 4][dictIdFlag]!;
  let dictId = 0;
  for (let i = 0; i < dictIdBytes; i++) dictId += (buf[pos + i] ?? 0) * 2 ** (8 * i);
  pos += dictIdBytes;
  const fcsBytes = fcsFlag === 0 ? (singleSegment ? 1 : 0) : [0, 2, 4, 8][fcsFlag]!;
  let contentSize: number | undefined;
  if (fcsBytes > 0) {
    if (pos + fcsBytes > buf.length) frameError('truncated header');
    let value = 0;
    for (let i = 0; i < fcsBytes; i++) value += buf[pos + i]! * 2 ** (8 * i);
    if (fcsBytes === 2) value += 256;
    contentSize = value;
    pos += fcsBytes;
  }
  if (singleSegment) windowSize = contentSize ?? 0;
  const headerSize = pos;
  for (;;) {
    if (pos + 3 > buf.length) frameError('truncated block header');
    const header = buf[pos]! | (buf[pos + 1]! << 8) | (buf[pos + 2]! << 16);
    pos += 3;
    const last = header & 1;
    const type = (header >> 1) & 3;
    const size = header >>> 3;
    if (type === 3) frameError('reserved block type');
    if (size > MAX_BLOCK_SIZE) frameError('block larger than 128 KiB');
    pos += type === 1 ? 1 : size; // RLE blocks carry one byte
    if (pos > buf.length) frameError('truncated block');
    if (last) break;
  }
  if (checksum) pos += 4;
  if (pos > buf.length) frameError('truncated checksum');
  return { windowSize, contentSize, dictId, headerSize, end: pos };
}

export interface DecodeLimits {
  /** Exact number of decoded bytes expected. */
  rawSize: number;
  maxWindowSize: number;
}

/**
 * Streams one frame's decoded bytes on demand. The frame header is checked
 * before the decoder sees a byte, then the frame is fed one zstd block at a
 * time, so each feed yields at most one block (≤ 128 KiB) of output: memory
 * is the window plus what the caller takes, however large the frame decodes.
 * Output beyond rawSize, a second frame, a window beyond the limit or a
 * dictionary id are refused.
 */
export class FrameStream {
  private readonly stream: StreamBinding;
  private readonly ddict: { delete(): void } | undefined;
  /** Decoded bytes not yet taken: one block's output at a time, in one reused buffer. */
  private pending = Buffer.allocUnsafe(256 * 1024);
  private pendingStart = 0;
  private pendingEnd = 0;
  private fed = 0;
  private produced = 0;
  private ended = false;
  private closed = false;
  private readonly frameEnd: number;
  private readonly blocksStart: number;
  private readonly freshOutput: boolean;

  constructor(
    zstd: ZstdDecoder,
    private readonly compressed: Uint8Array,
    private readonly limits: DecodeLimits,
    dict?: Uint8Array,
  ) {
    const info = inspectFrame(compressed);
    if (info.end !== compressed.length) frameError('data after the frame');
    if (info.windowSize > limits.maxWindowSize) frameError(`window of ${info.windowSize} bytes exceeds ${limits.maxWindowSize}`);
    if (info.dictId !== 0) frameError('frame names a dictionary id');
    if (info.contentSize !== undefined && info.contentSize !== limits.rawSize) {
      frameError(`frame declares ${info.contentSize} bytes, the manifest ${limits.rawSize}`);
    }
    this.frameEnd = info.end;
    this.blocksStart = info.headerSize;
    this.freshOutput = zstd.freshOutput;
    this.stream = new zstd.ZstdDecompressStreamBinding();
    this.ddict = dict ? zstd.createDecompressionDict(dict) : undefined;
    if (!(this.ddict ? this.stream.beginUsingDict(this.ddict) : this.stream.begin())) {
      this.close();
      frameError('decoder failed to start');
    }
  }

  private get pendingBytes(): number {
    return this.pendingEnd - this.pendingStart;
  }

  private readonly sink = (chunk: Uint8Array): void => {
    this.produced += chunk.length;
    if (this.produced > this.limits.rawSize) return; // reported after transform returns
    if (this.pendingEnd + chunk.length > this.pending.length) {
      // Compact, and grow only if one feed produced more than the buffer holds (it is bounded by a block).
      const live = this.pending.subarray(this.pendingStart, this.pendingEnd);
      const target = live.length + chunk.length > this.pending.length ? Buffer.allocUnsafe(2 * (live.length + chunk.length)) : this.pending;
      live.copy(target, 0);
      this.pending = target;
      this.pendingEnd = live.length;
      this.pendingStart = 0;
    }
    this.pending.set(chunk, this.pendingEnd);
    this.pendingEnd += chunk.length;
  };

  /** Feeds the next block; zstd-codec's output arrived in new ArrayBuffers, garbage once copied (reclaim.ts). */
  private feedAndReclaim(): void {
    const before = this.produced;
    this.feedBlock();
    if (this.freshOutput) noteStreamedGarbage(this.produced - before);
  }

  /** Feeds the next block (the first feed includes the frame header; the last the checksum). */
  private feedBlock(): void {
    const buf = this.compressed;
    let end: number;
    if (this.fed === 0) end = this.blocksStart;
    else end = this.fed;
    const header = buf[end]! | (buf[end + 1]! << 8) | (buf[end + 2]! << 16);
    const type = (header >> 1) & 3;
    end += 3 + (type === 1 ? 1 : header >>> 3);
    if (header & 1) end = this.frameEnd; // last block: take the checksum too
    if (!this.stream.transform(buf.subarray(this.fed, end), this.sink)) frameError('corrupt data');
    this.fed = end;
    if (this.produced > this.limits.rawSize) frameError(`decodes to more than the ${this.limits.rawSize} bytes the manifest declares`);
    if (this.fed === this.frameEnd) {
      if (!this.stream.end(this.sink)) frameError('corrupt data at the end');
      this.ended = true;
      if (this.produced > this.limits.rawSize) frameError(`decodes to more than the ${this.limits.rawSize} bytes the manifest declares`);
    }
  }

  /** The next `length` decoded bytes, copied into `into`. */
  take(length: number, into: Buffer): Buffer {
    const out = into.subarray(0, length);
    let at = 0;
    try {
      while (at < length) {
        if (this.pendingBytes === 0) {
          if (this.ended) frameError(`decodes to ${this.produced} bytes, fewer than the manifest declares`);
          this.pendingStart = this.pendingEnd = 0;
          this.feedAndReclaim();
          continue;
        }
        const n = Math.min(this.pendingBytes, length - at);
        this.pending.copy(out, at, this.pendingStart, this.pendingStart + n);
        at += n;
        this.pendingStart += n;
      }
    } catch (err) {
      this.close();
      throw err;
    }
    return out;
  }

  /** Everything must have been taken: the frame decodes to exactly rawSize bytes. */
  finish(): void {
    try {
      while (!this.ended && this.pendingBytes === 0) this.feedAndReclaim();
      if (this.pendingBytes > 0 || this.produced !== this.limits.rawSize) {
        frameError(`decodes to more than the ${this.limits.rawSize} bytes the manifest declares`);
      }
    } finally {
      this.close();
    }
  }

  close(): void {
    if (this.closed) return;
    this.closed = true;
    this.stream.delete();
    this.ddict?.delete();
  }
}

/** Decodes a whole frame known to be small (the manifest): take everything, then finish. */
export function decodeFrame(zstd: ZstdDecoder, compressed: Uint8Array, out: Buffer, limits: DecodeLimits, dict?: Uint8Array): Buffer {
  const frame = new FrameStream(zstd, compressed, limits, dict);
  const data = frame.take(limits.rawSize, out);
  frame.finish();
  return data;
}

export interface Encoder {
  readonly name: string;
  encode(raw: Uint8Array, options: { windowLog: number; dict?: Uint8Array }): Promise<Buffer>;
}

export interface EncoderOptions {
  level: number;
  /** 'native' requires the zstd binary, 'wasm' forces zstd-codec, 'auto' picks native where installed. */
  prefer?: 'auto' | 'native' | 'wasm';
}

export async function createEncoder(options: EncoderOptions): Promise<Encoder> {
  const prefer = options.prefer ?? 'auto';
  if (prefer !== 'wasm' && (await hasNativeZstd())) return nativeEncoder(options.level);
  if (prefer === 'native') throw new TandemError('ERR_ENCODER', 'The zstd binary is not installed; install zstd or use the WebAssembly encoder.');
  return wasmEncoder(Math.min(options.level, 9), await loadZstdCodec());
}

let nativeProbe: Promise<boolean> | undefined;
function hasNativeZstd(): Promise<boolean> {
  nativeProbe ??= new Promise((resolve) => {
    const child = spawn('zstd', ['--version'], { stdio: 'ignore' });
    child.on('error', () => resolve(false));
    child.on('close', (code) => resolve(code === 0));
  });
  return nativeProbe;
}

function nativeEncoder(level: number): Encoder {
  return {
    name: `zstd-native-${level}`,
    async encode(raw, { windowLog, dict }) {
      const args = ['-q', '-c', `-${level}`, `--zstd=wlog=${windowLog}`, `--stream-size=${raw.length}`, '--no-progress'];
      if (level > 19) args.push('--ultra');
      let dictDir: string | undefined;
      try {
        if (dict) {
          dictDir = await mkdtemp(join(tmpdir(), 'tandem-dict-'));
          const dictPath = join(dictDir, 'dict');
          await writeFile(dictPath, dict);
          args.push('-D', dictPath);
        }
        return await runZstd(args, raw);
      } finally {
        if (dictDir) await rm(dictDir, { recursive: true, force: true });
      }
    },
  };
}

function runZstd(args: string[], input: Uint8Array): Promise<Buffer> {
  return new Promise((resolve, reject) => {
    const child = spawn('zstd', args, { stdio: ['pipe', 'pipe', 'pipe'] });
    const out: Buffer[] = [];
    const err: Buffer[] = [];
    child.stdout.on('data', (chunk: Buffer) => out.push(chunk));
    child.stderr.on('data', (chunk: Buffer) => err.push(chunk));
    child.on('error', (cause) => reject(new TandemError('ERR_ENCODER', `zstd could not start: ${cause.message}`, { cause })));
    child.on('close', (code) => {
      if (code === 0) resolve(Buffer.concat(out));
      else reject(new TandemError('ERR_ENCODER', `zstd exited with ${code}: ${Buffer.concat(err).toString().trim()}`));
    });
    child.stdin.on('error', () => undefined); // reported through 'close'
    child.stdin.end(input);
  });
}

function wasmEncoder(level: number, zstd: ZstdBinding): Encoder {
  return {
    name: `zstd-codec-${level}`,
    encode(raw, { dict }) {
      // The window follows the level (≤ 4 MiB up to level 9), within both format limits.
      const stream = new zstd.ZstdCompressStreamBinding();
      const cdict = dict ? zstd.createCompressionDict(dict, level) : undefined;
      const out: Buffer[] = [];
      const sink = (chunk: Uint8Array): void => void out.push(Buffer.from(chunk));
      try {
        let ok = cdict ? stream.beginUsingDict(cdict) : stream.begin(level);
        for (let i = 0; ok && i < raw.length; i += MAX_BLOCK_SIZE) ok = stream.transform(raw.subarray(i, i + MAX_BLOCK_SIZE), sink);
        ok = ok && stream.end(sink);
        if (!ok) throw new TandemError('ERR_ENCODER', 'zstd-codec failed to compress a blob.');
        return Promise.resolve(Buffer.concat(out));
      } finally {
        stream.delete();
        cdict?.delete();
      }
    },
  };
}
