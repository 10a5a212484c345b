/**
 * The agent's whole life against a real HTTP server speaking the device
 * protocol (harness.ts): full and delta updates, health-gated commit,
 * rollback on a failed health check, bootloader fallback, failed versions
 * never retried. A reboot is simulated: the agent is closed, the boot env goes
 * through decideBoot as the bootloader script would leave it, and a new agent
 * is opened on the same state folder.
 */
import test from 'ava';
import { rm } from 'node:fs/promises';
import { join } from 'node:path';
import { DeviceAgent } from '../../agent/agent.ts';
import { evolveImage, makeDevice, makeFleetKeys, makeImage, makeRelease, ProtocolServer, slotHolds, tempDir, type Device, type Release, runCycle as cycle } from './harness.ts';

const keys = makeFleetKeys();
let dir = '';
let server: ProtocolServer;
let v1: Release;
let v2: Release;
let image1: Buffer;

test.before(async () => {
  dir = await tempDir('update');
  image1 = makeImage(4, 1);
  const image2 = evolveImage(image1, 2);
  v1 = await makeRelease(join(dir, 'releases'), keys, '1.0.0', image1);
  v2 = await makeRelease(join(dir, 'releases'), keys, '1.1.0', image2, { from: { version: '1.0.0', image: image1 } });
  server = await new ProtocolServer({ keys }).start();
});
test.after.always(async () => {
  await server?.close();
  await rm(dir, { recursive: true, force: true });
});

let n = 0;
async function device(options: { healthChecks?: unknown[]; overrides?: Record<string, unknown> } = {}): Promise<Device> {
  return makeDevice(join(dir, `device-${n++}`), { server: server.url, keys, version: '1.0.0', image: image1, ...options });
}


test.serial('full update: install into B, simulated reboot, health checks pass, committed', async (t) => {
  const dev = await device({ healthChecks: [{ type: 'command', command: ['true'] }] });
  server.offer = (req) => (req.version === '1.0.0' ? { version: '1.1.0', payload: v2.full } : undefined);
  const installed = await cycle(dev);
  t.deepEqual(installed, { result: 'installed', version: '1.1.0', rebootRequested: true });
  t.true(await dev.rebootRequested());
  t.true(await slotHolds(dev.slotB, v2.image), 'slot B holds the new image');
  t.true(await slotHolds(dev.slotA, v1.image), 'slot A untouched');
  const boot = await dev.control.read();
  t.like(boot, { active: 'B', trial: true, triesLeft: 3 });

  t.is(await dev.reboot(), 'B');
  const committed = await cycle(dev);
  t.deepEqual(committed, { result: 'committed', version: '1.1.0' });
  t.like(await dev.control.read(), { active: 'B', trial: false, good: { A: true, B: true } });
  t.deepEqual(server.events.filter((e) => e.version === '1.1.0').map((e) => e.type), ['downloading', 'installed', 'rebooting', 'committed']);
  t.is(new Set(server.events.map((e) => e.id)).size, server.events.length, 'event ids are unique');

  // Next check: the device reports 1.1.0 from slot B.
  server.offer = () => undefined;
  t.like(await cycle(dev), { result: 'noUpdate' });
  t.like(server.checks.at(-1), { version: '1.1.0', slot: 'B', failedVersions: [] });
});

test.serial('delta update: reads slot A, writes slot B, commits', async (t) => {
  const dev = await device();
  server.offer = (req) => (req.version === '1.0.0' ? { version: '1.1.0', payload: v2.delta! } : undefined);
  t.like(await cycle(dev), { result: 'installed', version: '1.1.0' });
  t.true(await slotHolds(dev.slotB, v2.image));
  await dev.reboot();
  t.like(await cycle(dev), { result: 'committed', version: '1.1.0' });
});

test.serial('health check fails: marked bad, rollback reboot, rolledBack reported, never retried', async (t) => {
  const dev = await device({ healthChecks: [{ type: 'command', name: 'app', command: ['false'] }], overrides: { health: { deadlineSeconds: 0.5, intervalSeconds: 0.1, checks: [{ type: 'command', name: 'app', command: ['false'] }] } } });
  server.offer = (req) => (req.version === '1.0.0' && !req.failedVersions.includes('1.1.0') ? { version: '1.1.0', payload: v2.full } : undefined);
  t.like(await cycle(dev), { result: 'installed' });
  await dev.clearRebootRequest();
  t.is(await dev.reboot(), 'B');
  const rolling = await cycle(dev);
  t.like(rolling, { result: 'rollingBack', version: '1.1.0', code: 'ERR_HEALTH_CHECK', rebootRequested: true });
  t.true(await dev.rebootRequested());
  t.like(await dev.control.read(), { active: 'A', trial: false, good: { A: true, B: false } });
  t.is(await dev.reboot(), 'A');
  const back = await cycle(dev);
  t.like(back, { result: 'rolledBack', version: '1.1.0', code: 'ERR_HEALTH_CHECK' });
  const rolledBack = server.events.find((e) => e.type === 'rolledBack' && e.version === '1.1.0');
  t.like(rolledBack, { code: 'ERR_HEALTH_CHECK' });
  t.regex(rolledBack?.message ?? '', /app/);
  // The next check says so, and the agent refuses the version even if offered anyway.
  t.like(await cycle(dev), { result: 'noUpdate' });
  t.deepEqual(server.checks.at(-1)?.failedVersions, ['1.1.0']);
  server.offer = () => ({ version: '1.1.0', payload: v2.full });
  await t.throwsAsync(cycle(dev), { code: 'ERR_VERSION_FAILED' });
  t.true(await slotHolds(dev.slotA, v1.image));
});

test.serial('bootloader fallback: the new slot never came up; detected and reported after the fallback', async (t) => {
  const dev = await device();
  server.offer = (req) => (req.version === '1.0.0' && !req.failedVersions.includes('1.1.0') ? { version: '1.1.0', payload: v2.full } : undefined);
  t.like(await cycle(dev), { result: 'installed' });
  // Slot B crashes before the agent runs, on every try: the bootloader spends them all, then falls back.
  for (let i = 0; i < 3; i++) t.is(await dev.reboot(), 'B');
  t.is(await dev.reboot(), 'A');
  t.like(await dev.control.read(), { active: 'A', fallbackFrom: 'B' });
  const result = await cycle(dev);
  t.like(result, { result: 'rolledBack', version: '1.1.0', code: 'ERR_BOOT_FALLBACK' });
  t.like(server.events.filter((e) => e.version === '1.1.0').at(-1), { type: 'rolledBack', code: 'ERR_BOOT_FALLBACK' });
  t.like(await cycle(dev), { result: 'noUpdate' });
  t.deepEqual(server.checks.at(-1)?.failedVersions, ['1.1.0']);
});

test.serial('no reboot command: check reports the reboot as pending, and again until it happens', async (t) => {
  const dev = await device({ overrides: { rebootCommand: null } });
  server.offer = (req) => (req.version === '1.0.0' ? { version: '1.1.0', payload: v2.full } : undefined);
  t.deepEqual(await cycle(dev), { result: 'installed', version: '1.1.0', rebootRequested: false });
  t.deepEqual(await cycle(dev), { result: 'rebootPending', version: '1.1.0', rebootRequested: false });
  await dev.reboot();
  t.like(await cycle(dev), { result: 'committed' });
});

test.serial('events are kept while the server is unreachable and delivered later, once each', async (t) => {
  const dev = await device();
  server.offer = (req) => (req.version === '1.0.0' ? { version: '1.1.0', payload: v2.full } : undefined);
  let down = true;
  server.intercept = (req, res) => {
    if (down && req.url === '/v1/events') {
      res.writeHead(503).end();
      return true;
    }
    return false;
  };
  const before = server.events.length;
  t.like(await cycle(dev), { result: 'installed' });
  await dev.reboot();
  t.like(await cycle(dev), { result: 'committed' });
  t.is(server.events.length, before);
  const agent = await DeviceAgent.open(await dev.config());
  t.is(agent.state.outbox.length, 4);
  down = false;
  t.is(await agent.flushEvents(), 4);
  t.is(agent.state.outbox.length, 0);
  await agent.close();
  server.intercept = undefined;
  t.deepEqual(server.events.slice(before).map((e) => e.type), ['downloading', 'installed', 'rebooting', 'committed']);
});

test.serial('the daemon polls, installs, asks for the reboot, and stops cleanly on abort', async (t) => {
  const dev = await device();
  server.offer = (req) => (req.version === '1.0.0' ? { version: '1.1.0', payload: v2.full } : undefined);
  server.pollAfterSeconds = 1;
  const agent = await DeviceAgent.open(await dev.config());
  const controller = new AbortController();
  const running = agent.run(controller.signal, { rebootWaitSeconds: 0.2 });
  const started = Date.now();
  while (!(await dev.rebootRequested()) && Date.now() - started < 20_000) await new Promise((r) => setTimeout(r, 50));
  t.true(await dev.rebootRequested(), 'the daemon installed and ran the reboot command');
  controller.abort();
  await running;
  await agent.close();
  t.is(agent.state.phase, 'waitingForReboot');
  // After the (simulated) reboot, the daemon commits on its first cycle and keeps polling.
  await dev.reboot();
  const after = await DeviceAgent.open(await dev.config());
  const controller2 = new AbortController();
  const running2 = after.run(controller2.signal);
  while (after.state.lastOutcome?.result !== 'committed' && Date.now() - started < 30_000) await new Promise((r) => setTimeout(r, 50));
  controller2.abort();
  await running2;
  await after.close();
  t.like(after.state.lastOutcome, { result: 'committed', version: '1.1.0' });
  server.pollAfterSeconds = 60;
});
