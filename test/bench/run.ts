/**
 * `npm run bench`: runs every benchmark file in test/bench (each prints JSON
 * lines with its baseline ratio), one after another so they don't compete
 * for the two cores. `npm run bench -- payload` runs the files whose name
 * contains "payload". The bundles are built first (`node bin/build.js`): the
 * commands a benchmark runs measure what `npm start` and a device run, not the
 * sources through tsx, which bin/launch.js falls back to when dist/ is stale.
 */
import { spawnSync } from 'node:child_process';
import { readdirSync } from 'node:fs';
import { join } from 'node:path';
import { REPO } from './lib/bench-kit.ts';

const filter = process.argv[2];
const dir = join(REPO, 'test', 'bench');
const files = readdirSync(dir)
  .filter((f) => f.endsWith('.ts') && f !== 'run.ts')
  .filter((f) => filter === undefined || f.includes(filter))
  .sort();
const build = spawnSync(process.execPath, [join(REPO, 'bin', 'build.js')], { stdio: ['ignore', 'ignore', 'inherit'], cwd: REPO });
if (build.status !== 0) throw new Error(`bin/build.js exited with ${build.status}`);
let failed = 0;
for (const file of files) {
  process.stderr.write(`# ${file}\n`);
  const result = spawnSync(process.execPath, ['--import', 'tsx', join(dir, file)], { stdio: 'inherit', cwd: REPO });
  if (result.status !== 0) {
    failed++;
    process.stdout.write(`${JSON.stringify({ bench: file, error: `exited with ${result.status}` })}\n`);
  }
}
process.exitCode = failed > 0 ? 1 : 0;
