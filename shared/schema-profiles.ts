/**
 * How a schema is compiled, named so that ajv at run time (schema-compiler.ts)
 * and the validators generated for the agent's bundle (bin/build-schemas.ts)
 * use the same options, and find each other's validators by the same key.
 */
import { createHash } from 'node:crypto';

/** `firstError` for protocol bodies and documents (stop at the first error); `allErrors` for a config file, reported whole. */
export type SchemaProfile = 'firstError' | 'allErrors';

export const AJV_OPTIONS = {
  firstError: { strict: true, strictRequired: false, allErrors: false, allowUnionTypes: true, ownProperties: true },
  allErrors: { strict: true, allErrors: true, allowUnionTypes: true, ownProperties: true },
} as const satisfies Record<SchemaProfile, object>;

/** Identifies a (schema, profile) pair: schemas are plain JSON literals, so their serialisation is stable. */
export function schemaKey(schema: unknown, profile: SchemaProfile): string {
  return createHash('sha256').update(`${profile}\n${JSON.stringify(schema)}`).digest('hex');
}
