/**
 * The agent's bundle validates with code generated at build time
 * (bin/build-schemas.ts) instead of ajv compiling at run time. The generated
 * validators must exist for every schema the agent's modules declare and must
 * give the same verdicts and the same first error as ajv, or the device would
 * accept or refuse what the source tree does not.
 */
import test from 'ava';
import { mkdir, rm, writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import { pathToFileURL } from 'node:url';
import type { ValidateFunction } from 'ajv';
import { generateValidators } from '../../bin/build-schemas.ts';
import { compileSchema } from '../../shared/schema-compiler.ts';
import { declaredSchemas } from '../../shared/schema-validator.ts';
import type { SchemaProfile } from '../../shared/schema-profiles.ts';
import { makeFleetKeys } from '../agent/harness.ts';

type CompileSchema = (schema: unknown, profile: SchemaProfile) => ValidateFunction;

// Inside the repository so the generated module's runtime imports (ajv/dist/runtime/…) resolve from node_modules.
const dir = join(process.cwd(), 'node_modules', '.cache', `tandem-schemas-${process.pid}`);

let precompiled: CompileSchema;
test.before(async () => {
  const { source } = await generateValidators(['agent/agent.ts', 'agent/config.ts']);
  await mkdir(dir, { recursive: true });
  await writeFile(join(dir, 'validators.mjs'), source);
  ({ compileSchema: precompiled } = (await import(pathToFileURL(join(dir, 'validators.mjs')).href)) as { compileSchema: CompileSchema });
});
test.after.always(() => rm(dir, { recursive: true, force: true }));

/** Valid and invalid documents: a real keyring and an agent config, their mutations, and odd values. */
function samples(): unknown[] {
  const keyring = makeFleetKeys().keyring as unknown as Record<string, unknown>;
  const config = {
    server: 'http://127.0.0.1:8080', deviceId: 'dev-1', product: 'appliance', board: 'b', channel: 'stable', version: '1.0.0',
    rootKeys: ['root.pub'], slots: { A: '/dev/disk/a', B: 'PARTLABEL=rootfs-b' }, bootControl: { kind: 'grub', path: '/boot/grub/grubenv' }, stateDir: '/var/lib/tandem',
  };
  const out: unknown[] = [null, 0, -1, 2 ** 60, 'x', [], [1, 'a'], {}, { type: 'tandem-check-response' }];
  for (const doc of [keyring, config] as Record<string, unknown>[]) {
    out.push(doc);
    for (const k of Object.keys(doc)) {
      const { [k]: _dropped, ...rest } = doc;
      out.push(rest, { ...doc, [k]: 12345 }, { ...doc, [k]: 'z'.repeat(5000) });
    }
    out.push({ ...doc, unexpected: true });
  }
  return out;
}

test('every schema the agent declares has a generated validator that agrees with ajv', (t) => {
  const declared = declaredSchemas();
  t.true(declared.length >= 8, `only ${declared.length} schemas declared`);
  const docs = samples();
  let accepted = 0;
  for (const { schema, profile } of declared) {
    const ours = precompiled(schema, profile);
    const ajv = compileSchema(schema, profile);
    for (const doc of docs) {
      const verdict = ours(doc);
      t.is(verdict, ajv(doc));
      if (verdict) accepted++;
      else t.deepEqual(ours.errors, ajv.errors);
    }
  }
  t.true(accepted >= 2, 'the samples include documents some schema accepts');
});

test('a schema nobody declared is refused, not validated by something else', (t) => {
  t.throws(() => precompiled({ type: 'string', maxLength: 3 }, 'firstError'), { message: /No validator was generated/ });
});
