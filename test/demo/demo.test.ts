/**
 * `npm run demo`, spawned for real (`node --import tsx test/demo/demo.ts --json`
 * from the repository root): it exits 0 only when its own expectations hold,
 * and its one-line JSON summary says who ended on which version.
 */
import test from 'ava';
import { execFile } from 'node:child_process';
import { mkdtemp, readdir, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import type { DemoSummary } from './staged-rollout.ts';

const REPO = join(import.meta.dirname, '../..');

/** Runs the demo with its own TMPDIR, so what it leaves behind can be seen. */
function demo(tmp: string, ...args: string[]): Promise<{ code: number; stdout: string; stderr: string }> {
  return new Promise((resolve) => {
    execFile(process.execPath, ['--import', 'tsx', 'test/demo/demo.ts', ...args], { cwd: REPO, timeout: 90_000, env: { ...process.env, TMPDIR: tmp } }, (err, stdout, stderr) => {
      const code = err ? (typeof err.code === 'number' ? err.code : -1) : 0;
      resolve({ code, stdout, stderr });
    });
  });
}

test('the demo rolls 1.1.0 out to 100 %: four devices commit it, the unhealthy one rolls back to 1.0.0', async (t) => {
  const tmp = await mkdtemp(join(tmpdir(), 'tandem-demo-test-'));
  t.teardown(() => rm(tmp, { recursive: true, force: true }));
  const started = Date.now();
  const run = await demo(tmp, '--json');
  t.is(run.code, 0, run.stderr);
  const lines = run.stdout.trim().split('\n');
  t.is(lines.length, 1, '--json prints one line and no narration');
  const summary = JSON.parse(lines[0]!) as DemoSummary;

  t.true(summary.ok);
  t.deepEqual(summary.versions, { '1.1.0': 4, '1.0.0': 1 });
  t.deepEqual(summary.rolledBack, ['device-4']);
  const failed = summary.devices.find((d) => d.id === 'device-4');
  t.like(failed, { version: '1.0.0', slot: 'A', outcome: 'rolledBack', code: 'ERR_HEALTH_CHECK', serverVersion: '1.0.0', serverFailure: true });
  for (const d of summary.devices.filter((d) => d.id !== 'device-4')) {
    t.like(d, { version: '1.1.0', slot: 'B', outcome: 'committed', payload: 'delta', serverVersion: '1.1.0', serverFailure: false }, d.id);
  }
  t.like(summary.rollout, { percentage: '100%', state: 'complete', stats: { committed: 4, rolledBack: 1, failures: 1 } });
  t.true(summary.payloads.some((p) => p.kind === 'delta' && p.sourceVersion === '1.0.0'), 'the server generated the delta');
  t.deepEqual(summary.expectations.filter((e) => !e.ok), []);
  t.is(summary.dir, undefined);
  t.deepEqual((await readdir(tmp)).filter((name) => name.startsWith('tandem-')), [], 'the temp folder is removed'); // tsx keeps its cache there too
  t.log(`demo took ${((Date.now() - started) / 1000).toFixed(1)} s (its own count: ${summary.seconds} s)`);
});

test('a bad option is a usage error', async (t) => {
  const run = await demo(tmpdir(), '--bogus');
  t.is(run.code, 64);
  t.regex(run.stderr, /usage: npm run demo/);
});
