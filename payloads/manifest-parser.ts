/**
 * The reader's manifest parser: canonical manifest JSON in, a ManifestView out
 * (header fields as parsed, operations in an OperationTable), without ever
 * holding the operations as JS objects or the decoded JSON whole.
 *
 * Two passes over the JSON, each fed in chunks (a stored manifest is decoded
 * again for the second pass: the frame is small and decodes fast, the text can
 * be 64 MiB):
 * 1. A structural scan (strings, brackets, depth) finds the top-level
 *    `"operations"` array, counts its operations, extents and hashes, records
 *    where each operation lies, and keeps everything else — the header, with
 *    `"operations":[]` in place of the array. The header is parsed with the
 *    strict parser, validated (schema) and must be canonical.
 * 2. The table is allocated at the counted size; each operation's bytes, cut
 *    out where pass 1 found them, are parsed on their own, validated with the
 *    operation schema, required to be canonical, and appended.
 * Canonical header + canonical operations + bare `,` between them = a
 * canonical manifest: the guarantee parsing the whole document gave. The
 * semantic checks (payloads/manifest-check.ts) then run on the table.
 */
import { canonicalBytes } from '../shared/canonical-json.ts';
import { TandemError } from '../shared/errors.ts';
import { parseSafeJson } from '../shared/safe-json.ts';
import { MANIFEST_LIMITS, validateManifestHeader, validateOperation, type ManifestHeader, type Operation } from '../shared/schemas/manifest.ts';
import { MANIFEST_MAX_BYTES, MAX_WINDOW_LOG } from './format.ts';
import { checkManifest } from './manifest-check.ts';
import { OperationTable, type ManifestView, type TableCapacity } from './operation-table.ts';
import { FrameStream, type ZstdDecoder } from './zstd.ts';

/** The manifest's JSON, chunk by chunk, from the start each time it is called (once per pass). */
export type ManifestText = () => Iterable<Uint8Array>;

/** Nesting of the whole manifest (an extent is at depth 5); an operation parsed alone starts 2 levels down. */
const MAX_DEPTH = 8;
const OPERATION_DEPTH = 3;
/**
 * The longest canonical operation: 512 dst and 512 src extents of two 2^53 − 1
 * numbers, the longest kind, a sha256 and room for the keys. Anything longer is
 * refused before it is parsed, so one hostile operation costs at most this.
 */
export const MAX_OPERATION_JSON = 2 * MANIFEST_LIMITS.maxExtentsPerOperation * '[9007199254740991,9007199254740991],'.length + 256;
const DECODE_CHUNK = 64 * 1024;

function invalid(message: string, details: Record<string, unknown> = {}): never {
  throw new TandemError('ERR_MANIFEST_INVALID', `Invalid manifest: ${message}.`, { details });
}

function notCanonical(): never {
  throw new TandemError('ERR_MANIFEST_INVALID', 'Invalid manifest: its bytes are not canonical JSON (RFC 8785).');
}

/** Parses canonical manifest JSON held in memory: `inspect` of a JSON file, the generator's self-check, tests. */
export function parseManifest(json: Uint8Array): ManifestView {
  if (json.byteLength > MANIFEST_MAX_BYTES) {
    throw new TandemError('ERR_JSON_TOO_LARGE', `JSON document of ${json.byteLength} bytes exceeds the limit of ${MANIFEST_MAX_BYTES} bytes.`, {
      details: { size: json.byteLength, limit: MANIFEST_MAX_BYTES },
    });
  }
  return parseManifestText(() => [json]);
}

/**
 * Parses the manifest as stored and signed (one zstd frame of canonical JSON)
 * that decodes to exactly `rawSize` bytes, decoding it 64 KiB at a time. Call
 * only after the signature over `stored` verified.
 */
export function parseStoredManifest(stored: Uint8Array, rawSize: number, zstd: ZstdDecoder): ManifestView {
  return parseManifestText(() => decodedText(stored, rawSize, zstd));
}

function* decodedText(stored: Uint8Array, rawSize: number, zstd: ZstdDecoder): Generator<Uint8Array> {
  let frame: FrameStream | undefined;
  try {
    if (rawSize > MANIFEST_MAX_BYTES) throw new Error(`it decodes to ${rawSize} bytes, over the ${MANIFEST_MAX_BYTES}-byte limit`);
    frame = new FrameStream(zstd, stored, { rawSize, maxWindowSize: 2 ** MAX_WINDOW_LOG });
    const chunk = Buffer.allocUnsafe(Math.min(DECODE_CHUNK, rawSize));
    for (let done = 0; done < rawSize; done += chunk.length) {
      yield frame.take(Math.min(chunk.length, rawSize - done), chunk);
    }
    frame.finish();
  } catch (cause) {
    throw new TandemError('ERR_MANIFEST_INVALID', `Invalid manifest: ${(cause as Error).message}`, { cause });
  } finally {
    frame?.close();
  }
}

export function parseManifestText(text: ManifestText): ManifestView {
  // Pass 1: structure, counts, the header.
  const counting = new ManifestScanner();
  let failure: unknown;
  for (const chunk of text()) {
    // Keep decoding after a scan error: a frame that does not decode is the first thing to report, as
    // when the whole text was decoded before parsing.
    if (failure !== undefined) continue;
    try {
      counting.feed(chunk);
    } catch (err) {
      failure = err;
    }
  }
  if (failure !== undefined) throw failure;
  counting.end();

  // A fault found after the JSON (schema, canonical form) waits until every operation has been
  // parsed: a JSON fault anywhere in the text is reported first, as parsing the whole document did.
  let fault: unknown;
  const later = (check: () => void): void => {
    if (fault !== undefined) return;
    try {
      check();
    } catch (err) {
      fault = err;
    }
  };

  // Pass 2 cuts the operations apart at single commas: anything else between them cannot wait.
  if (!counting.bareSeparators) notCanonical();
  const headerBytes = counting.header();
  const headerValue = parseSafeJson(headerBytes, { maxBytes: MANIFEST_MAX_BYTES, maxDepth: MAX_DEPTH });
  const capacity = counting.capacity;
  let header: ManifestHeader | undefined;
  later(() => {
    const parsed = validateManifestHeader(headerValue, 'manifest');
    if (capacity.operations === 0) invalid('/operations must NOT have fewer than 1 items');
    if (!canonicalBytes(parsed).equals(headerBytes)) notCanonical();
    header = parsed as ManifestHeader;
  });

  // Pass 2: every operation parsed, validated and canonical on its own, into the table. Pass 1 found
  // where each one lies (the text decodes to the same bytes again), so this pass only cuts them out.
  // After a fault, the rest are only parsed, for a JSON fault that comes first.
  const table = new OperationTable(capacity);
  forEachOperation(text, counting.elements, (bytes, index) => {
    const quick = fault === undefined ? quickOperation(bytes, index) : undefined;
    if (quick !== undefined) {
      table.append(quick);
      return;
    }
    const value = parseSafeJson(bytes, { maxBytes: MAX_OPERATION_JSON, maxDepth: MAX_DEPTH - OPERATION_DEPTH + 1 });
    later(() => table.append(canonicalOperation(value, bytes, index)));
  });
  if (fault !== undefined) throw fault;
  if (table.length !== capacity.operations) throw new Error(`manifest parser: ${table.length} operations in pass 2, ${capacity.operations} counted`);

  // The table takes the place of the empty array, keys in the manifest's order.
  const manifest: ManifestView = { ...header!, operations: table };
  checkManifest(manifest);
  return manifest;
}

/**
 * One operation's bytes through the engine's own parser (native: the strict
 * one runs as interpreted code on the agent, which has no optimizing JIT, and
 * a 0.5 M-extent manifest took seconds), kept only if the schema accepts the
 * value AND its canonical form is these very bytes: that rules out everything
 * the strict parser refuses (a duplicate key or a number beyond 2^53
 * re-serializes differently, `__proto__` fails the schema). Undefined for
 * anything else, which the strict parser then reads and names the fault of.
 */
function quickOperation(bytes: Buffer, index: number): Operation | undefined {
  try {
    const op = validateOperation(JSON.parse(bytes.toString('utf8')), 'manifest', `/operations/${index}`);
    return canonicalBytes(op).equals(bytes) ? op : undefined;
  } catch {
    return undefined;
  }
}

/** The strict parser's value of one operation's bytes, which must be a valid operation written canonically. */
function canonicalOperation(value: unknown, bytes: Buffer, index: number): Operation {
  const op = validateOperation(value, 'manifest', `/operations/${index}`);
  if (!canonicalBytes(op).equals(bytes)) notCanonical();
  return op;
}

/**
 * Hands over each operation's bytes, cut from the text by the positions pass 1
 * recorded: the first one's offset, then each one's length, with the single
 * `,` between them that pass 1 required. An operation split across chunks is
 * gathered in one buffer (≤ MAX_OPERATION_JSON), valid until the next call.
 */
function forEachOperation(text: ManifestText, elements: ElementPositions, each: (bytes: Buffer, index: number) => void): void {
  const carry = Buffer.allocUnsafe(MAX_OPERATION_JSON);
  let carried = 0;
  let index = 0;
  let start = elements.first;
  let base = 0;
  for (const input of text()) {
    const chunk = Buffer.from(input.buffer, input.byteOffset, input.byteLength);
    const chunkEnd = base + chunk.length;
    while (index < elements.count) {
      const end = start + elements.lengths[index]!;
      if (end > chunkEnd) {
        const from = Math.max(start, base);
        if (from < chunkEnd) carried += chunk.copy(carry, carried, from - base);
        break;
      }
      let bytes: Buffer;
      if (carried > 0) {
        chunk.copy(carry, carried, 0, end - base);
        bytes = carry.subarray(0, carried + end - base);
        carried = 0;
      } else {
        bytes = chunk.subarray(start - base, end - base);
      }
      each(bytes, index);
      index++;
      start = end + 1;
    }
    base = chunkEnd;
  }
  if (index !== elements.count) throw new Error(`manifest parser: ${index} operations in pass 2, ${elements.count} in pass 1`);
}

/** Where pass 1 found the operations: the first one's offset in the text, then each one's length. */
interface ElementPositions {
  first: number;
  count: number;
  /** Each ≤ MAX_OPERATION_JSON (37,120) bytes: fits 16 bits, 2 MiB for the most operations a manifest may hold. */
  lengths: Uint16Array;
}

// ---- The structural scanner ---------------------------------------------------------

// What comes next outside strings and scalars.
const VALUE = 0;
const VALUE_OR_CLOSE = 1; // after '['
const KEY_OR_CLOSE = 2; // after '{'
const KEY = 3; // after ',' in an object
const COLON = 4;
const COMMA_OR_CLOSE = 5; // after a value
const DONE = 6; // after the top-level value

const OBJECT = 1;
const ARRAY = 2;

const QUOTE = 0x22;
const UTF8_BOM = [0xef, 0xbb, 0xbf];
const BACKSLASH = 0x5c;

function isWhitespace(c: number): boolean {
  return c === 0x20 || c === 0x0a || c === 0x0d || c === 0x09;
}
/** Bytes of numbers and of true/false/null; the strict parser checks each scalar later. */
function isScalarByte(c: number): boolean {
  return (c >= 0x30 && c <= 0x39) || (c >= 0x61 && c <= 0x7a) || (c >= 0x41 && c <= 0x5a) || c === 0x2b || c === 0x2d || c === 0x2e;
}
function startsScalar(c: number): boolean {
  return (c >= 0x30 && c <= 0x39) || c === 0x2d || c === 0x74 || c === 0x66 || c === 0x6e; // digit - t f n
}

/** Keys the scanner looks for: the operations array, and an operation's extent lists and hash. */
type WatchedKey = 'operations' | 'dst' | 'src' | 'sha256';
const WATCHED_KEYS = (['operations', 'dst', 'src', 'sha256'] as const).map((name) => ({ name, bytes: Buffer.from(name) }));
/** Keys longer than this are none of those (even fully \u-escaped). */
const MAX_WATCHED_KEY = 64;

/**
 * Walks JSON bytes chunk by chunk, tracking strings, nesting and depth; every
 * byte it does not check itself ends up in a piece the strict parser reads
 * (the header or one operation). Inside the first top-level "operations" array
 * it delimits each element: it tallies operations, extents (arrays in an
 * operation's `dst` and `src` lists) and hashes, records where each element
 * lies, and keeps every byte outside the array's brackets, the header.
 */
class ManifestScanner {
  readonly capacity: TableCapacity = { operations: 0, extents: 0, hashes: 0 };
  /** No whitespace between the operations: the array's own bytes are canonical. */
  bareSeparators = true;

  /** The chunk being fed, and the absolute position of its first byte. */
  private chunk: Buffer = Buffer.alloc(0);
  private base = 0;
  private pos = 0;
  private expect = VALUE;
  private depth = 0;
  private readonly stack = new Uint8Array(MAX_DEPTH + 1);
  private inString = false;
  private escaped = false;
  /** Index of the next backslash in the chunk at or after the last search (chunk length: none); -1: not searched. */
  private nextBackslash = -1;
  private inScalar = false;
  /** The string being read is a key the scanner watches: a top-level one, or an operation's own. */
  private watchingKey = false;
  private readonly key = new Uint8Array(MAX_WATCHED_KEY);
  private keyLength = 0;
  private keyEscaped = false;
  /** The last key read at the top level, and at the level of an operation's fields. */
  private topKey: WatchedKey | undefined;
  private opKey: WatchedKey | undefined;

  private opsState: 'before' | 'inside' | 'after' = 'before';
  /** Absolute start of the element being read inside the operations array; -1 between elements. */
  private elementStart = -1;
  private elementExtents = 0;
  private listExtents = 0;
  private elementHash = false;
  /** Header bytes, and where the header resumes in the current chunk (-1: inside the array). */
  private readonly headerParts: Buffer[] = [];
  private headerFrom = 0;

  /** Positions of the operations in the text. */
  readonly elements: ElementPositions = { first: 0, count: 0, lengths: new Uint16Array(256) };

  header(): Buffer {
    return Buffer.concat(this.headerParts);
  }

  private fail(what: string): never {
    throw new TandemError('ERR_JSON_SYNTAX', `Invalid JSON at position ${this.pos}: ${what}.`, { details: { position: this.pos } });
  }

  feed(input: Uint8Array): void {
    const bytes = Buffer.from(input.buffer, input.byteOffset, input.byteLength);
    this.chunk = bytes;
    this.nextBackslash = -1;
    this.base = this.pos;
    this.headerFrom = this.opsState === 'inside' ? -1 : 0;
    let i = 0;
    while (i < bytes.length) {
      if (this.inString) {
        i = this.stringBytes(i);
        continue;
      }
      if (this.inScalar) {
        i = this.scalarBytes(i);
        continue;
      }
      const c = bytes[i]!;
      this.pos = this.base + i;
      if (isWhitespace(c)) {
        if (this.opsState === 'inside' && this.depth === 2) this.bareSeparators = false;
      } else if (this.pos < 3 && c === UTF8_BOM[this.pos] && this.expect === VALUE && this.depth === 0) {
        // A byte-order mark: the strict parser drops it, the canonical check then refuses it.
      } else {
        this.structural(c);
      }
      i++;
    }
    this.pos = this.base + bytes.length;
    if (this.headerFrom >= 0) this.keepHeader(this.headerFrom, bytes.length);
  }

  /** String bytes from `from` on (most of a manifest: the hashes): the index after the closing quote, or the chunk's end. */
  private stringBytes(from: number): number {
    const bytes = this.chunk;
    if (!this.watchingKey && !this.escaped) {
      // Most strings hold no backslash: find the closing quote with the native search (the agent runs
      // without an optimizing JIT, where a byte loop costs ~10x more). nextBackslash only moves forward.
      if (this.nextBackslash < from) {
        const at = bytes.indexOf(BACKSLASH, from);
        this.nextBackslash = at === -1 ? bytes.length : at;
      }
      const quote = bytes.indexOf(QUOTE, from);
      const end = quote === -1 ? bytes.length : quote;
      if (this.nextBackslash >= end) {
        if (quote === -1) return bytes.length;
        this.inString = false;
        this.pos = this.base + quote;
        this.stringDone();
        return quote + 1;
      }
    }
    let escaped = this.escaped;
    for (let i = from; i < bytes.length; i++) {
      const c = bytes[i]!;
      if (escaped) {
        escaped = false;
      } else if (c === BACKSLASH) {
        escaped = this.keyEscaped = true;
      } else if (c === QUOTE) {
        this.escaped = this.inString = false;
        this.pos = this.base + i;
        this.stringDone();
        return i + 1;
      }
      if (this.watchingKey) {
        if (this.keyLength < MAX_WATCHED_KEY) this.key[this.keyLength] = c;
        this.keyLength++;
      }
    }
    this.escaped = escaped;
    return bytes.length;
  }

  /** Number and literal bytes from `from` on: the index of the byte that ends the scalar, or the chunk's end. */
  private scalarBytes(from: number): number {
    const bytes = this.chunk;
    let i = from;
    while (i < bytes.length && isScalarByte(bytes[i]!)) i++;
    if (i < bytes.length) {
      this.inScalar = false;
      this.pos = this.base + i;
      this.valueDone(this.pos);
    }
    return i;
  }

  end(): void {
    if (this.inScalar) {
      this.inScalar = false;
      this.valueDone(this.pos);
    }
    if (this.expect !== DONE || this.inString) this.fail('unexpected end of input');
  }

  /** A byte outside strings and scalars, not whitespace. */
  private structural(c: number): void {
    switch (this.expect) {
      case DONE:
        return this.fail('unexpected data after the JSON value');
      case COLON:
        if (c !== 0x3a) this.fail('expected ":"');
        this.expect = VALUE;
        return;
      case KEY_OR_CLOSE:
      case KEY:
        if (c === 0x7d && this.expect === KEY_OR_CLOSE) return this.close(OBJECT);
        if (c !== QUOTE) this.fail('expected a string key');
        return this.startString(true);
      case COMMA_OR_CLOSE:
        if (c === 0x2c) this.expect = this.stack[this.depth] === OBJECT ? KEY : VALUE;
        else if (c === 0x7d || c === 0x5d) this.close(c === 0x7d ? OBJECT : ARRAY);
        else this.fail(this.stack[this.depth] === OBJECT ? 'expected "," or "}"' : 'expected "," or "]"');
        return;
      case VALUE_OR_CLOSE:
        if (c === 0x5d) return this.close(ARRAY);
        return this.startValue(c);
      default:
        return this.startValue(c);
    }
  }

  private keepHeader(from: number, to: number): void {
    if (to > from) this.headerParts.push(Buffer.from(this.chunk.subarray(from, to)));
  }

  private startValue(c: number): void {
    if (this.opsState === 'inside' && this.depth === 2) {
      this.elementStart = this.pos;
      this.elementExtents = 0;
      this.elementHash = false;
      this.opKey = undefined;
    }
    if (c === 0x7b || c === 0x5b) this.open(c === 0x7b ? OBJECT : ARRAY);
    else if (c === QUOTE) this.startString(false);
    else if (startsScalar(c)) this.inScalar = true;
    else this.fail(`unexpected character ${JSON.stringify(String.fromCharCode(c))}`);
  }

  private startString(isKey: boolean): void {
    this.inString = true;
    this.escaped = false;
    this.watchingKey = isKey && (this.depth === 1 || (this.opsState === 'inside' && this.depth === OPERATION_DEPTH));
    this.keyLength = 0;
    this.keyEscaped = false;
  }

  private stringDone(): void {
    if (this.expect !== KEY && this.expect !== KEY_OR_CLOSE) return this.valueDone(this.pos + 1);
    this.expect = COLON;
    if (!this.watchingKey) return;
    const key = this.keyText();
    if (this.depth === 1) {
      this.topKey = key;
    } else {
      this.opKey = key;
      if (key === 'sha256') this.elementHash = true;
    }
  }

  /** The watched key if it is one the scanner looks for; escapes decoded, so `"operation\u0073"` is found too (and refused as not canonical). */
  private keyText(): WatchedKey | undefined {
    const length = this.keyLength;
    if (length > MAX_WATCHED_KEY) return undefined;
    if (!this.keyEscaped) {
      for (const { name, bytes } of WATCHED_KEYS) if (bytes.length === length && bytes.equals(this.key.subarray(0, length))) return name;
      return undefined;
    }
    let text: string;
    try {
      text = JSON.parse(`"${Buffer.from(this.key.subarray(0, length)).toString('latin1')}"`) as string;
    } catch {
      return undefined; // the strict parser reports it
    }
    return WATCHED_KEYS.find((k) => k.name === text)?.name;
  }

  private open(kind: typeof OBJECT | typeof ARRAY): void {
    if (this.depth === MAX_DEPTH) {
      throw new TandemError('ERR_JSON_TOO_DEEP', `JSON nesting exceeds ${MAX_DEPTH} levels.`, { details: { limit: MAX_DEPTH } });
    }
    if (this.opsState === 'inside' && this.stack[OPERATION_DEPTH] === OBJECT && (this.opKey === 'dst' || this.opKey === 'src')) {
      // In an operation's dst or src: the list opens at depth 4, each extent at depth 5. A list
      // longer than the schema allows is refused later; counting stops there, so the table stays small.
      if (this.depth === OPERATION_DEPTH) this.listExtents = 0;
      else if (this.depth === OPERATION_DEPTH + 1 && kind === ARRAY && this.listExtents < MANIFEST_LIMITS.maxExtentsPerOperation) {
        this.listExtents++;
        this.elementExtents++;
      }
    }
    this.stack[++this.depth] = kind;
    this.expect = kind === OBJECT ? KEY_OR_CLOSE : VALUE_OR_CLOSE;
    if (this.depth === 2 && kind === ARRAY && this.opsState === 'before' && this.topKey === 'operations') {
      this.opsState = 'inside';
      this.keepHeader(this.headerFrom, this.pos - this.base + 1);
      this.headerFrom = -1;
    }
  }

  private close(kind: typeof OBJECT | typeof ARRAY): void {
    if (this.stack[this.depth] !== kind) this.fail(kind === OBJECT ? 'expected "]"' : 'expected "}"');
    if (this.opsState === 'inside' && this.depth === 2) {
      this.opsState = 'after';
      this.headerFrom = this.pos - this.base;
    }
    this.depth--;
    this.valueDone(this.pos + 1);
  }

  /** A value ended just before absolute position `end`. */
  private valueDone(end: number): void {
    this.expect = this.depth === 0 ? DONE : COMMA_OR_CLOSE;
    if (this.elementStart >= 0 && this.depth === 2) this.elementDone(end);
  }

  private recordElement(start: number, length: number): void {
    const elements = this.elements;
    if (elements.count === 0) elements.first = start;
    if (elements.count === elements.lengths.length) {
      const grown = new Uint16Array(2 * elements.lengths.length);
      grown.set(elements.lengths);
      elements.lengths = grown;
    }
    elements.lengths[elements.count++] = length;
  }

  private elementDone(end: number): void {
    const index = this.capacity.operations;
    const length = end - this.elementStart;
    const start = this.elementStart;
    this.elementStart = -1;
    if (length > MAX_OPERATION_JSON) invalid(`operation ${index} is ${length} bytes of JSON, more than any valid operation`, { operation: index });
    if (++this.capacity.operations > MANIFEST_LIMITS.maxOperations) invalid(`/operations must NOT have more than ${MANIFEST_LIMITS.maxOperations} items`);
    this.capacity.extents += this.elementExtents;
    if (this.elementHash) this.capacity.hashes++;
    this.recordElement(start, length);
  }
}
