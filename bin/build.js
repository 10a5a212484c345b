#!/usr/bin/env node
// `npm run build` (also run by `npm install` as `prepare`): bundles each command
// into dist/<name>.mjs with esbuild (what tsx compiles with), npm packages left
// external, and records the source files each bundle came from so bin/launch.js
// can tell a stale bundle from a fresh one. Type checking is `npm run typecheck`.
import { build } from 'esbuild';
import { mkdir, rm, writeFile } from 'node:fs/promises';
import { fileURLToPath } from 'node:url';

const root = fileURLToPath(new URL('../', import.meta.url));
const COMMANDS = ['tandem', 'tandem-server', 'tandem-agent'];

await rm(`${root}dist`, { recursive: true, force: true });
await mkdir(`${root}dist`, { recursive: true });
for (const name of COMMANDS) {
  const builtAtMs = Date.now();
  const result = await build({
    absWorkingDir: root,
    entryPoints: [`bin/${name}.ts`],
    outfile: `dist/${name}.mjs`,
    bundle: true,
    platform: 'node',
    format: 'esm',
    target: 'node20.18',
    packages: 'external',
    sourcemap: 'linked',
    metafile: true,
    logLevel: 'warning',
  });
  const inputs = Object.keys(result.metafile.inputs).sort();
  await writeFile(`${root}dist/${name}.inputs.json`, `${JSON.stringify({ builtAtMs, inputs }, null, 1)}\n`);
}
console.log(`built ${COMMANDS.map((n) => `dist/${n}.mjs`).join(', ')}`);
