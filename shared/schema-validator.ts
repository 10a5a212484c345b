/**
 * One place compiles every JSON Schema (STYLE.md 6): strict ajv, compiled once
 * per schema, returning a function that either yields the typed value or throws
 * ERR_SCHEMA naming the first offending field. Past that check, trust the types.
 *
 * Every schema is declared here when its module loads and compiled on first
 * use. The declarations let the agent's build (bin/build-schemas.ts) generate
 * the validators ahead of time for the modules it bundles.
 */
import type { AnySchema, ErrorObject, ValidateFunction } from 'ajv';
import { TandemError, type ErrorCode } from './errors.ts';
import { compileSchema } from './schema-compiler.ts';
import type { SchemaProfile } from './schema-profiles.ts';

export interface DeclaredSchema {
  schema: AnySchema;
  profile: SchemaProfile;
}

// What the modules loaded so far declared; read by bin/build-schemas.ts.
const declared: DeclaredSchema[] = [];

export function declaredSchemas(): readonly DeclaredSchema[] {
  return declared;
}

/** Declares a schema; the returned function compiles it on its first call and then returns the same validator. */
export function declareSchema(schema: AnySchema, profile: SchemaProfile = 'firstError'): () => ValidateFunction {
  declared.push({ schema, profile });
  let compiled: ValidateFunction | undefined;
  return () => (compiled ??= compileSchema(schema, profile));
}

/** `at` prefixes the paths in messages: a part validated on its own is named as in its document. */
export type Validator<T> = (value: unknown, what?: string, at?: string) => T;

export function compileValidator<T>(schema: AnySchema, code: ErrorCode = 'ERR_SCHEMA'): Validator<T> {
  const compiled = declareSchema(schema);
  return (value: unknown, what = 'document', at = ''): T => {
    const validate = compiled();
    if (validate(value)) return value as T;
    const first = validate.errors?.[0];
    throw new TandemError(code, `Invalid ${what}: ${describe(first, at)}.`, {
      details: { path: at + (first?.instancePath ?? '') || '/', keyword: first?.keyword, params: first?.params },
    });
  };
}

function describe(error: ErrorObject | undefined, prefix: string): string {
  if (!error) return 'does not match its schema';
  const at = prefix + error.instancePath || '(root)';
  if (error.keyword === 'additionalProperties') {
    return `${at} has an unknown field ${JSON.stringify((error.params as { additionalProperty: string }).additionalProperty)}`;
  }
  return `${at} ${error.message ?? 'is invalid'}`;
}

/** Reusable schema fragments, bounded as every schema here must be. */
export const SHA256_HEX = { type: 'string', pattern: '^[0-9a-f]{64}$' } as const;
export const KEY_ID = SHA256_HEX;
export const BASE64 = (maxLength: number) => ({ type: 'string', pattern: '^[A-Za-z0-9+/]*={0,2}$', maxLength }) as const;
export const SAFE_UINT = { type: 'integer', minimum: 0, maximum: Number.MAX_SAFE_INTEGER } as const;
export const TIMESTAMP = { type: 'string', maxLength: 40, pattern: '^\\d{4}-\\d{2}-\\d{2}T\\d{2}:\\d{2}:\\d{2}(\\.\\d{1,9})?Z$' } as const;
export const SEMVER = {
  type: 'string',
  maxLength: 64,
  pattern: '^(0|[1-9]\\d*)\\.(0|[1-9]\\d*)\\.(0|[1-9]\\d*)(-[0-9A-Za-z-]+(\\.[0-9A-Za-z-]+)*)?(\\+[0-9A-Za-z-]+(\\.[0-9A-Za-z-]+)*)?$',
} as const;
/** Product, board, channel and device names: safe in paths, URLs and logs. */
export const NAME = { type: 'string', minLength: 1, maxLength: 64, pattern: '^[A-Za-z0-9][A-Za-z0-9._-]*$' } as const;
