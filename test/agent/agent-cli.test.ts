/**
 * `tandem-agent` as a device runs it: the real launcher (bin/tandem-agent.js)
 * spawned as a child process. The library is tested elsewhere; these check
 * argument handling, output and exit codes, and that grub-editenv reads what
 * `bootenv` wrote.
 */
import test from 'ava';
import { execFile, spawnSync } from 'node:child_process';
import { rm } from 'node:fs/promises';
import { join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { promisify } from 'node:util';
import { makeDevice, makeFleetKeys, makeImage, makeRelease, ProtocolServer, evolveImage, tempDir, type Release } from './harness.ts';

const BIN = fileURLToPath(new URL('../../bin/tandem-agent.js', import.meta.url));
const run = promisify(execFile);

async function agent(args: string[]): Promise<{ code: number; stdout: string; stderr: string }> {
  try {
    const { stdout, stderr } = await run(process.execPath, [BIN, ...args], { env: { ...process.env, TANDEM_LOG_LEVEL: 'warn' } });
    return { code: 0, stdout, stderr };
  } catch (err) {
    const e = err as { code: number; stdout: string; stderr: string };
    return { code: e.code, stdout: e.stdout, stderr: e.stderr };
  }
}

const keys = makeFleetKeys();
let dir = '';
let server: ProtocolServer;
let v2: Release;
let image1: Buffer;

test.before(async () => {
  dir = await tempDir('cli');
  image1 = makeImage(1, 41);
  v2 = await makeRelease(join(dir, 'releases'), keys, '1.1.0', evolveImage(image1, 42));
  server = await new ProtocolServer({ keys }).start();
});
test.after.always(async () => {
  await server?.close();
  await rm(dir, { recursive: true, force: true });
});

test('bootenv: show, try, mark-good, fallback on a file env; --json; usage errors exit 64', async (t) => {
  const env = join(dir, 'boot.json');
  const [tried, usage, badSlot] = await Promise.all([
    agent(['bootenv', '--backend', 'file', '--env', env, 'try', 'B', '--tries', '2', '--json']),
    agent(['bootenv', '--backend', 'nope', '--env', env, 'show']),
    agent(['bootenv', '--backend', 'file', '--env', join(dir, 'other.json'), 'try', 'C', '--tries', '2']),
  ]);
  t.is(tried.code, 0, tried.stderr);
  t.like(JSON.parse(tried.stdout), { active: 'B', trial: true, triesLeft: 2 });
  t.is(usage.code, 64);
  t.is(badSlot.code, 64);
  const good = await agent(['bootenv', '--backend', 'file', '--env', env, 'mark-good', 'B', '--json']);
  t.like(JSON.parse(good.stdout), { active: 'B', trial: false, good: { B: true } });
  const fellBack = await agent(['bootenv', '--backend', 'file', '--env', env, 'fallback']);
  t.is(fellBack.code, 0);
  t.regex(fellBack.stdout, /active\s+A/);
});

const HAVE_GRUB = spawnSync('sh', ['-c', 'command -v grub-editenv'], { stdio: 'ignore' }).status === 0;
(HAVE_GRUB ? test : test.skip)('bootenv on a grubenv: grub-editenv reads what the agent wrote', async (t) => {
  const env = join(dir, 'grubenv');
  const r = await agent(['bootenv', '--backend', 'grub', '--env', env, 'try', 'A', '--tries', '3']);
  t.is(r.code, 0, r.stderr);
  const { stdout } = await run('grub-editenv', [env, 'list']);
  t.regex(stdout, /^TANDEM_ACTIVE=A$/m);
  t.regex(stdout, /^TANDEM_TRIAL=1$/m);
  t.regex(stdout, /^TANDEM_TRIES=3$/m);
});

test('bootenv on a redundant U-Boot env', async (t) => {
  const r = await agent(['bootenv', '--backend', 'uboot', '--env', join(dir, 'env0'), '--env-redundant', join(dir, 'env1'), '--size', '8192', 'mark-good', 'A', '--json']);
  t.is(r.code, 0, r.stderr);
  t.like(JSON.parse(r.stdout), { active: 'A', good: { A: true } });
});

test('check: 2 with nothing to do, 0 once installed (reboot requested); status --json tells the story', async (t) => {
  const dev = await makeDevice(join(dir, 'device'), { server: server.url, keys, version: '1.0.0', image: image1 });
  server.offer = () => undefined;
  const nothing = await agent(['check', '--config', dev.configPath]);
  t.is(nothing.code, 2, nothing.stderr);
  server.offer = (req) => (req.version === '1.0.0' ? { version: '1.1.0', payload: v2.full } : undefined);
  const installed = await agent(['check', '--config', dev.configPath, '--json']);
  t.is(installed.code, 0, installed.stderr);
  t.like(JSON.parse(installed.stdout), { result: 'installed', version: '1.1.0', rebootRequested: true });
  const status = await agent(['status', '--config', dev.configPath, '--json']);
  t.is(status.code, 0, status.stderr);
  t.like(JSON.parse(status.stdout), { phase: 'waitingForReboot', booted: 'A', version: '1.0.0', boot: { active: 'B', trial: true }, update: { version: '1.1.0', toSlot: 'B' } });
  await dev.reboot();
  // An operator confirms the new slot by hand instead of waiting for the health checks.
  const good = await agent(['mark-good', '--config', dev.configPath]);
  t.is(good.code, 0, good.stderr);
  t.regex(good.stdout, /committed 1\.1\.0/);
  const text = await agent(['status', '--config', dev.configPath]);
  t.regex(text.stdout, /running\s+slot B, version 1\.1\.0/);

  // Back to the factory image in slot A: the agent never verified it (a full update does not read the
  // source), so it refuses on its own and does it only on the operator's --force.
  const refused = await agent(['rollback', '--config', dev.configPath]);
  t.is(refused.code, 65, refused.stderr);
  t.regex(refused.stderr, /ERR_ROLLBACK_UNSAFE.*--force/s);
  t.like(await dev.control.read(), { active: 'B', good: { B: true } });
  const forced = await agent(['rollback', '--config', dev.configPath, '--force', '--json']);
  t.is(forced.code, 0, forced.stderr);
  t.like(JSON.parse(forced.stdout), { result: 'rollingBack', slot: 'A', verified: false, rebootRequested: true });
  t.is(await dev.reboot(), 'A');
  t.true((await dev.slot('A')).equals(image1));
});

test('errors map to exit codes: a bad config exits 65 with the field named', async (t) => {
  const r = await agent(['status', '--config', join(dir, 'missing.json')]);
  t.is(r.code, 65);
  t.regex(r.stderr, /ERR_CONFIG/);
  const usage = await agent(['check']);
  t.is(usage.code, 64);
});
