/**
 * Canonical JSON (RFC 8785, JCS) for every byte that is signed: object keys
 * sorted by UTF-16 code units, no whitespace, numbers as ECMAScript prints them,
 * strings with the minimal escapes. Lone surrogates and non-finite numbers are
 * refused, since they have no canonical form.
 */
import { TandemError } from './errors.ts';

export function canonicalize(value: unknown): string {
  const parts: string[] = [];
  write(value, parts);
  return parts.join('');
}

export function canonicalBytes(value: unknown): Buffer {
  return Buffer.from(canonicalize(value), 'utf8');
}

function write(value: unknown, out: string[]): void {
  if (value === null) {
    out.push('null');
    return;
  }
  switch (typeof value) {
    case 'boolean':
      out.push(value ? 'true' : 'false');
      return;
    case 'number':
      if (!Number.isFinite(value)) throw new TandemError('ERR_CANONICAL_JSON', 'Non-finite numbers have no canonical JSON form.');
      // ECMAScript Number-to-String is exactly RFC 8785's number serialization; -0 prints as 0.
      out.push(Object.is(value, -0) ? '0' : JSON.stringify(value));
      return;
    case 'string':
      if (!value.isWellFormed()) throw new TandemError('ERR_CANONICAL_JSON', 'Strings with lone surrogates have no canonical JSON form.');
      out.push(JSON.stringify(value));
      return;
    case 'object': {
      if (Array.isArray(value)) {
        out.push('[');
        value.forEach((item, i) => {
          if (i > 0) out.push(',');
          write(item === undefined ? null : item, out);
        });
        out.push(']');
        return;
      }
      const record = value as Record<string, unknown>;
      const keys = Object.keys(record)
        .filter((k) => record[k] !== undefined)
        .sort(compareUtf16);
      out.push('{');
      keys.forEach((key, i) => {
        if (i > 0) out.push(',');
        if (!key.isWellFormed()) throw new TandemError('ERR_CANONICAL_JSON', 'Keys with lone surrogates have no canonical JSON form.');
        out.push(JSON.stringify(key), ':');
        write(record[key], out);
      });
      out.push('}');
      return;
    }
    default:
      throw new TandemError('ERR_CANONICAL_JSON', `A ${typeof value} has no JSON form.`);
  }
}

/** RFC 8785 sorts keys by their UTF-16 code units, which is what `<` on JS strings compares. */
function compareUtf16(a: string, b: string): number {
  return a < b ? -1 : a > b ? 1 : 0;
}
