#!/usr/bin/env node
// `npm run build` (also run by `npm install` as `prepare`): bundles each command
// into dist/<name>.mjs with esbuild (what tsx compiles with), npm packages left
// external, and records the source files each bundle came from so bin/launch.js
// can tell a stale bundle from a fresh one. Type checking is `npm run typecheck`.
//
// The agent's and the CLI's bundles get their JSON Schema validators generated ahead of time
// (bin/build-schemas.ts) in place of shared/schema-compiler.ts, so a device
// never loads ajv: 9 MiB less RSS during an update (the server compiles at start as before).
import { build } from 'esbuild';
import { Buffer } from 'node:buffer';
import { spawnSync } from 'node:child_process';
import { mkdir, readFile, rm, writeFile } from 'node:fs/promises';
import { fileURLToPath } from 'node:url';

const root = fileURLToPath(new URL('../', import.meta.url));
const COMMANDS = ['tandem', 'tandem-server', 'tandem-agent'];
const PRECOMPILED_SCHEMAS = new Set(['tandem', 'tandem-agent']);

const options = (name) => ({
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

/** Generates the validators for the modules `name` bundles; returns an esbuild plugin putting them in place of the ajv compiler. */
async function precompiledSchemas(name) {
  const probe = await build({ ...options(name), write: false, sourcemap: false });
  const modules = Object.keys(probe.metafile.inputs).filter((f) => f.endsWith('.ts') && f !== `bin/${name}.ts`);
  const out = `${root}dist/${name}.validators.mjs`;
  const run = spawnSync(process.execPath, ['--import', 'tsx', 'bin/build-schemas.ts', out, ...modules], { cwd: root, stdio: ['ignore', 'ignore', 'inherit'] });
  if (run.status !== 0) throw new Error(`bin/build-schemas.ts exited with ${run.status}`);
  return {
    name: 'precompiled-schemas',
    setup(b) {
      b.onResolve({ filter: /\/schema-compiler\.ts$/ }, () => ({ path: out }));
    },
  };
}

/**
 * zstd-codec's glue embeds its WebAssembly as base64: ship the glue without it
 * and the module as a file beside the bundles (payloads/zstd.ts loads them).
 */
async function splitZstdCodec() {
  const glue = await readFile(`${root}node_modules/zstd-codec/lib/zstd-codec-binding-wasm.js`, 'utf8');
  const embedded = /wasmBinaryFile="data:application\/octet-stream;base64,([A-Za-z0-9+/=]+)"/.exec(glue);
  if (!embedded) throw new Error('zstd-codec: no embedded WebAssembly found in its glue (package changed?)');
  await writeFile(`${root}dist/zstd-codec.wasm`, Buffer.from(embedded[1], 'base64'));
  await writeFile(`${root}dist/zstd-codec-binding.cjs`, glue.replace(embedded[0], 'wasmBinaryFile="zstd-codec.wasm"'));
}

await rm(`${root}dist`, { recursive: true, force: true });
await mkdir(`${root}dist`, { recursive: true });
for (const name of COMMANDS) {
  const plugins = PRECOMPILED_SCHEMAS.has(name) ? [await precompiledSchemas(name)] : [];
  const builtAtMs = Date.now();
  const result = await build({ ...options(name), plugins });
  // The generated validators are an output of the sources listed, not an input to watch.
  const inputs = Object.keys(result.metafile.inputs).filter((f) => !f.startsWith('dist/')).sort();
  await writeFile(`${root}dist/${name}.inputs.json`, `${JSON.stringify({ builtAtMs, inputs }, null, 1)}\n`);
}
await splitZstdCodec();
console.log(`built ${COMMANDS.map((n) => `dist/${n}.mjs`).join(', ')}`);
