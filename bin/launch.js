// How the bin/*.js launchers start a TypeScript entry point. `npm install` builds
// one bundle per command into dist/ (bin/build.js): a bundled command starts
// without a TypeScript compiler in the process, which is 20–30 MiB less RSS for
// the agent on a device. A bundle is used only while every source file it was
// built from is unchanged; otherwise — a checkout being edited, or no build —
// the command runs from source through tsx, so nothing ever runs stale code.
// TANDEM_FROM_SOURCE=1 forces tsx.
import { readFileSync, statSync } from 'node:fs';

const ROOT = new URL('../', import.meta.url);

/** The bundle's URL when it exists and no input changed since it was built; otherwise undefined. */
export function freshBundle(name, root = ROOT) {
  if (process.env.TANDEM_FROM_SOURCE === '1') return undefined;
  try {
    const stamp = JSON.parse(readFileSync(new URL(`dist/${name}.inputs.json`, root), 'utf8'));
    const bundle = new URL(`dist/${name}.mjs`, root);
    if (statSync(bundle).mtimeMs < stamp.builtAtMs) return undefined;
    for (const input of stamp.inputs) {
      if (statSync(new URL(input, root)).mtimeMs > stamp.builtAtMs) return undefined;
    }
    return bundle.href;
  } catch {
    return undefined;
  }
}

export async function launch(name) {
  const bundle = freshBundle(name);
  if (bundle !== undefined) return import(bundle);
  const { register } = await import('tsx/esm/api');
  register();
  return import(new URL(`bin/${name}.ts`, ROOT).href);
}
