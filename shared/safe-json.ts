/**
 * A strict JSON parser for everything that arrives from outside: it refuses
 * duplicate keys (two parsers could disagree on which one wins, the classic
 * signature-bypass), `__proto__`/`constructor`/`prototype` keys, integers beyond
 * 2^53 (they would silently lose precision), nesting deeper than a limit and
 * input larger than a limit. Objects come back with a null prototype.
 */
import { TandemError } from './errors.ts';

export type JsonValue = null | boolean | number | string | JsonValue[] | { [key: string]: JsonValue };

export interface SafeJsonOptions {
  /** Maximum input size in bytes (UTF-8). */
  maxBytes?: number;
  /** Maximum nesting of arrays and objects. */
  maxDepth?: number;
}

const FORBIDDEN_KEYS = new Set(['__proto__', 'constructor', 'prototype']);
const DEFAULT_MAX_BYTES = 1024 * 1024;
const DEFAULT_MAX_DEPTH = 64;

export function parseSafeJson(input: string | Uint8Array, options: SafeJsonOptions = {}): JsonValue {
  const maxBytes = options.maxBytes ?? DEFAULT_MAX_BYTES;
  const size = typeof input === 'string' ? Buffer.byteLength(input, 'utf8') : input.byteLength;
  if (size > maxBytes) {
    throw new TandemError('ERR_JSON_TOO_LARGE', `JSON document of ${size} bytes exceeds the limit of ${maxBytes} bytes.`, {
      details: { size, limit: maxBytes },
    });
  }
  let text: string;
  if (typeof input === 'string') {
    text = input;
  } else {
    try {
      text = new TextDecoder('utf-8', { fatal: true }).decode(input);
    } catch (cause) {
      throw new TandemError('ERR_JSON_SYNTAX', 'JSON document is not valid UTF-8.', { cause });
    }
  }
  return new Parser(text, options.maxDepth ?? DEFAULT_MAX_DEPTH).parseDocument();
}

class Parser {
  private pos = 0;
  constructor(
    private readonly text: string,
    private readonly maxDepth: number,
  ) {}

  parseDocument(): JsonValue {
    this.skipWhitespace();
    const value = this.parseValue(0);
    this.skipWhitespace();
    if (this.pos !== this.text.length) this.fail('unexpected data after the JSON value');
    return value;
  }

  private fail(what: string): never {
    throw new TandemError('ERR_JSON_SYNTAX', `Invalid JSON at position ${this.pos}: ${what}.`, {
      details: { position: this.pos },
    });
  }

  private skipWhitespace(): void {
    const t = this.text;
    while (this.pos < t.length) {
      const c = t.charCodeAt(this.pos);
      if (c === 0x20 || c === 0x0a || c === 0x0d || c === 0x09) this.pos++;
      else break;
    }
  }

  private parseValue(depth: number): JsonValue {
    const c = this.text[this.pos];
    switch (c) {
      case '{':
        return this.parseObject(depth + 1);
      case '[':
        return this.parseArray(depth + 1);
      case '"':
        return this.parseString();
      case 't':
        return this.parseLiteral('true', true);
      case 'f':
        return this.parseLiteral('false', false);
      case 'n':
        return this.parseLiteral('null', null);
      default:
        if (c === '-' || (c !== undefined && c >= '0' && c <= '9')) return this.parseNumber();
        return this.fail(c === undefined ? 'unexpected end of input' : `unexpected character ${JSON.stringify(c)}`);
    }
  }

  private parseLiteral<T extends JsonValue>(word: string, value: T): T {
    if (this.text.startsWith(word, this.pos)) {
      this.pos += word.length;
      return value;
    }
    return this.fail('invalid literal');
  }

  private checkDepth(depth: number): void {
    if (depth > this.maxDepth) {
      throw new TandemError('ERR_JSON_TOO_DEEP', `JSON nesting exceeds ${this.maxDepth} levels.`, {
        details: { limit: this.maxDepth },
      });
    }
  }

  private parseObject(depth: number): JsonValue {
    this.checkDepth(depth);
    this.pos++; // {
    const out: Record<string, JsonValue> = Object.create(null) as Record<string, JsonValue>;
    this.skipWhitespace();
    if (this.text[this.pos] === '}') {
      this.pos++;
      return out;
    }
    for (;;) {
      this.skipWhitespace();
      if (this.text[this.pos] !== '"') this.fail('expected a string key');
      const key = this.parseString();
      if (FORBIDDEN_KEYS.has(key)) {
        throw new TandemError('ERR_JSON_FORBIDDEN_KEY', `JSON key ${JSON.stringify(key)} is not allowed.`, {
          details: { key },
        });
      }
      if (Object.prototype.hasOwnProperty.call(out, key)) {
        throw new TandemError('ERR_JSON_DUPLICATE_KEY', `JSON key ${JSON.stringify(key)} appears twice in one object.`, {
          details: { key },
        });
      }
      this.skipWhitespace();
      if (this.text[this.pos] !== ':') this.fail('expected ":"');
      this.pos++;
      this.skipWhitespace();
      out[key] = this.parseValue(depth);
      this.skipWhitespace();
      const c = this.text[this.pos];
      if (c === ',') {
        this.pos++;
        continue;
      }
      if (c === '}') {
        this.pos++;
        return out;
      }
      this.fail('expected "," or "}"');
    }
  }

  private parseArray(depth: number): JsonValue {
    this.checkDepth(depth);
    this.pos++; // [
    const out: JsonValue[] = [];
    this.skipWhitespace();
    if (this.text[this.pos] === ']') {
      this.pos++;
      return out;
    }
    for (;;) {
      this.skipWhitespace();
      out.push(this.parseValue(depth));
      this.skipWhitespace();
      const c = this.text[this.pos];
      if (c === ',') {
        this.pos++;
        continue;
      }
      if (c === ']') {
        this.pos++;
        return out;
      }
      this.fail('expected "," or "]"');
    }
  }

  private parseString(): string {
    const t = this.text;
    this.pos++; // opening quote
    let out = '';
    let start = this.pos;
    for (;;) {
      if (this.pos >= t.length) this.fail('unterminated string');
      const c = t.charCodeAt(this.pos);
      if (c === 0x22) {
        out += t.slice(start, this.pos);
        this.pos++;
        return out;
      }
      if (c < 0x20) this.fail('control character in string');
      if (c !== 0x5c) {
        this.pos++;
        continue;
      }
      out += t.slice(start, this.pos);
      const e = t[this.pos + 1];
      this.pos += 2;
      switch (e) {
        case '"': out += '"'; break;
        case '\\': out += '\\'; break;
        case '/': out += '/'; break;
        case 'b': out += '\b'; break;
        case 'f': out += '\f'; break;
        case 'n': out += '\n'; break;
        case 'r': out += '\r'; break;
        case 't': out += '\t'; break;
        case 'u': {
          const hex = t.slice(this.pos, this.pos + 4);
          if (!/^[0-9a-fA-F]{4}$/.test(hex)) this.fail('invalid \\u escape');
          out += String.fromCharCode(parseInt(hex, 16));
          this.pos += 4;
          break;
        }
        default:
          this.pos -= 2;
          this.fail('invalid escape');
      }
      start = this.pos;
    }
  }

  private parseNumber(): number {
    const t = this.text;
    const m = /^-?(0|[1-9][0-9]*)(\.[0-9]+)?([eE][+-]?[0-9]+)?/.exec(t.slice(this.pos, this.pos + 400));
    if (!m) this.fail('invalid number');
    const literal = m[0];
    const value = Number(literal);
    const isIntegerLiteral = m[2] === undefined && m[3] === undefined;
    if (!Number.isFinite(value) || (isIntegerLiteral && !Number.isSafeInteger(value)) || (Number.isInteger(value) && !Number.isSafeInteger(value))) {
      throw new TandemError('ERR_JSON_UNSAFE_NUMBER', `Number ${literal.slice(0, 40)} is beyond the safe integer range (2^53).`, {
        details: { position: this.pos },
      });
    }
    this.pos += literal.length;
    return value;
  }
}
