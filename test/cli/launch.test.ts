/** The bin launchers run a bundle only while it is fresh: a stale bundle must never run edited code's old version. */
import test from 'ava';
import { mkdir, mkdtemp, rm, utimes, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { pathToFileURL } from 'node:url';
// @ts-expect-error: a plain JavaScript module without types
import { freshBundle } from '../../bin/launch.js';

const fresh = freshBundle as (name: string, root?: URL) => string | undefined;

test('a bundle is used while its inputs are unchanged, and not once one is newer, missing, or the stamp is absent', async (t) => {
  const dir = await mkdtemp(join(tmpdir(), 'tandem-launch-'));
  t.teardown(() => rm(dir, { recursive: true, force: true }));
  const root = new URL(`${pathToFileURL(dir).href}/`);
  await mkdir(join(dir, 'dist'));
  await mkdir(join(dir, 'agent'));
  const builtAtMs = Date.now() - 10_000;
  const past = new Date(builtAtMs - 60_000);
  await writeFile(join(dir, 'agent/a.ts'), 'a');
  await utimes(join(dir, 'agent/a.ts'), past, past);
  t.is(fresh('x', root), undefined, 'no bundle at all');
  await writeFile(join(dir, 'dist/x.mjs'), '');
  t.is(fresh('x', root), undefined, 'a bundle without its stamp');
  await writeFile(join(dir, 'dist/x.inputs.json'), JSON.stringify({ builtAtMs, inputs: ['agent/a.ts'] }));
  t.is(fresh('x', root), new URL('dist/x.mjs', root).href);
  process.env.TANDEM_FROM_SOURCE = '1';
  try {
    t.is(fresh('x', root), undefined, 'TANDEM_FROM_SOURCE=1 forces the sources');
  } finally {
    delete process.env.TANDEM_FROM_SOURCE;
  }
  await writeFile(join(dir, 'agent/a.ts'), 'edited');
  t.is(fresh('x', root), undefined, 'an input edited after the build');
  await utimes(join(dir, 'agent/a.ts'), past, past);
  t.truthy(fresh('x', root));
  await rm(join(dir, 'agent/a.ts'));
  t.is(fresh('x', root), undefined, 'an input that no longer exists');
});
