/**
 * Compiles a schema with ajv, once per (schema, profile) caller. The agent's
 * bundle replaces this module with validators generated when it is built
 * (bin/build-schemas.ts), so a device never loads ajv or compiles code at run
 * time (measured: 9 MiB less peak RSS during an update).
 */
import { Ajv, type AnySchema, type ValidateFunction } from 'ajv';
import { AJV_OPTIONS, type SchemaProfile } from './schema-profiles.ts';

const instances = new Map<SchemaProfile, Ajv>();

export function compileSchema(schema: AnySchema, profile: SchemaProfile): ValidateFunction {
  let ajv = instances.get(profile);
  if (!ajv) {
    ajv = new Ajv(AJV_OPTIONS[profile]);
    instances.set(profile, ajv);
  }
  return ajv.compile(schema);
}
