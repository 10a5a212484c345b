/** The release-manager CLI, spawned for real against a real server. */
import anyTest, { type TestFn } from 'ava';
import { execFile } from 'node:child_process';
import { join } from 'node:path';
import { promisify } from 'node:util';
import { makeImage, removeDir, startTestServer, type TestServer } from './helpers.ts';

const run = promisify(execFile);
const test = anyTest.serial as TestFn<{ ts: TestServer; env: NodeJS.ProcessEnv }>;
const TANDEM = join(import.meta.dirname, '../../bin/tandem.js');

async function tandem(t: { context: { env: NodeJS.ProcessEnv } }, ...args: string[]): Promise<{ stdout: string; stderr: string; code: number }> {
  try {
    const { stdout, stderr } = await run(process.execPath, [TANDEM, ...args], { env: t.context.env });
    return { stdout, stderr, code: 0 };
  } catch (err) {
    const e = err as { stdout: string; stderr: string; code: number };
    return { stdout: e.stdout, stderr: e.stderr, code: e.code };
  }
}

test.before(async (t) => {
  const ts = await startTestServer({ deltaSources: 0 });
  t.context = { ts, env: { ...process.env, TANDEM_SERVER: ts.server.url, TANDEM_TOKEN: ts.server.adminToken } };
});

test.after.always(async (t) => {
  if (!t.context.ts) return;
  await t.context.ts.stop();
  await removeDir(t.context.ts.dir);
});

test('publish, roll out, halt, status, tokens and devices from the command line', async (t) => {
  const image = join(t.context.ts.dir, 'cli.img');
  await makeImage(image, { mib: 1 });
  // Each command is a process start (about a second of CPU, most of it loading TypeScript): the commands
  // that touch nothing the others read run beside the release's own sequence rather than after it.
  const release = async (): Promise<void> => {
    const pub = await tandem(t, 'release', 'publish', '--channel', 'stable', '--version', '1.1.0', '--image', image, '--board', 'rpi4', '--json');
    t.is(pub.code, 0, pub.stderr);
    t.is(JSON.parse(pub.stdout).release.version, '1.1.0');

    const set = await tandem(t, 'rollout', 'set', 'stable', '1.1.0', '10%');
    t.is(set.code, 0, set.stderr);
    t.regex(set.stdout, /10% active/);
    const halt = await tandem(t, 'rollout', 'halt', 'stable', '1.1.0', '--reason', 'bad batch');
    t.regex(halt.stdout, /halted.*bad batch/);
    const [status, table, viewer] = await Promise.all([tandem(t, 'status', 'stable', '--json'), tandem(t, 'status'), tandem(t, 'token', 'create', '--role', 'viewer')]);
    const [channel] = JSON.parse(status.stdout);
    t.is(channel.releases[0].rollout.state, 'halted');
    t.regex(table.stdout, /channel stable\nPRODUCT\s+CHANNEL\s+VERSION/);

    t.regex(viewer.stdout, /^tda_/);
    const denied = await tandem(t, 'rollout', 'resume', 'stable', '1.1.0', '--token', viewer.stdout.trim(), '--json');
    t.is(denied.code, 77);
    t.is(JSON.parse(denied.stderr).error.code, 'ERR_FORBIDDEN');
  };
  const others = async (): Promise<void> => {
    const [enroll, devices, missing, usage] = await Promise.all([
      tandem(t, 'token', 'create', '--enroll', '--product', 'rpi4', '--channel', 'stable'),
      tandem(t, 'device', 'list', '--json'),
      tandem(t, 'device', 'show', 'nobody'),
      tandem(t, 'rollout', 'set', 'stable'),
    ]);
    t.regex(enroll.stdout, /^tde_/);
    t.deepEqual(JSON.parse(devices.stdout), []);
    t.is(missing.code, 66);
    t.regex(missing.stderr, /ERR_NOT_FOUND/);
    t.is(usage.code, 64);
  };
  await Promise.all([release(), others()]);
});
