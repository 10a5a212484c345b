/**
 * Recovering from damage a power cut alone cannot cause but a device still meets
 * (media corruption, a hand edit, a trial set by an operator): the agent never
 * refuses every start, never leaves a trial it cannot explain unconfirmed, and
 * cleans up after interrupted writes. (A state.json torn on a trial boot is in
 * test/campaigns/power.test.ts, with the real CLI.)
 */
import test from 'ava';
import { mkdir, readdir, readFile, rm, writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import { makeDevice, makeFleetKeys, makeImage, ProtocolServer, slotHolds, tempDir, type Device, runCycle as cycle } from './harness.ts';

const keys = makeFleetKeys();
let dir = '';
let server: ProtocolServer;
const image1 = makeImage(1, 11);

test.before(async () => {
  dir = await tempDir('recovery');
  server = await new ProtocolServer({ keys }).start();
  server.offer = () => undefined;
});
test.after.always(async () => {
  await server?.close();
  await rm(dir, { recursive: true, force: true });
});

let n = 0;
function device(options: { healthChecks?: unknown[] } = {}): Promise<Device> {
  return makeDevice(join(dir, `device-${n++}`), { server: server.url, keys, version: '1.0.0', image: image1, ...options });
}


async function lastError(dev: Device): Promise<string | undefined> {
  return (JSON.parse(await readFile(join(dev.stateDir, 'state.json'), 'utf8')) as { lastError?: { code: string } }).lastError?.code;
}

test('an unreadable boot env is read as the bootloader read it, then written whole again for the running slot', async (t) => {
  const dev = await device();
  await writeFile(dev.bootEnv, '{"TANDEM_ACTIVE": "B", tor');
  t.like(await cycle(dev), { result: 'noUpdate' });
  t.like(await dev.control.read(), { active: 'A', trial: false, good: { A: true, B: false } });
  t.is(await lastError(dev), 'ERR_BOOTENV_CORRUPT');
  t.is(await dev.reboot(), 'A');
});

test('a missing boot env likewise', async (t) => {
  const dev = await device();
  await rm(dev.bootEnv);
  t.like(await cycle(dev), { result: 'noUpdate' });
  t.like(await dev.control.read(), { active: 'A', good: { A: true } });
});

test('a state file that is not JSON is set aside, and the agent works on from a blank state', async (t) => {
  const dev = await device();
  await mkdir(dev.stateDir, { recursive: true });
  await writeFile(join(dev.stateDir, 'state.json'), '{"format":1,"phase":"downl');
  t.like(await cycle(dev), { result: 'noUpdate' });
  const names = await readdir(dev.stateDir);
  t.true(names.some((f) => f.startsWith('state.json.corrupt-')));
  t.is(await lastError(dev), 'ERR_STATE_CORRUPT');
  t.like(await cycle(dev), { result: 'noUpdate' }, 'and on the next start too');
});

test('temp files of interrupted durable writes are removed at start', async (t) => {
  const dev = await device();
  await mkdir(dev.stateDir, { recursive: true });
  const stale = ['.state.json.4242.0badf00d.tmp', '.prelude.bin.17.deadbeef.tmp'];
  for (const name of stale) await writeFile(join(dev.stateDir, name), 'half a write');
  await writeFile(join(dev.stateDir, 'keep.tmp'), 'not ours');
  await cycle(dev);
  const names = await readdir(dev.stateDir);
  for (const name of stale) t.false(names.includes(name), name);
  t.true(names.includes('keep.tmp'), 'only the durable-write pattern is removed');
});

test('a trial no update explains: confirmed when the health checks pass', async (t) => {
  const dev = await device({ healthChecks: [{ type: 'command', command: ['true'] }] });
  await writeFile(dev.slotB, image1);
  await dev.control.setTrial('B', 3);
  t.is(await dev.reboot(), 'B');
  t.like(await cycle(dev), { result: 'committed' });
  t.like(await dev.control.read(), { active: 'B', trial: false, good: { B: true } });
});

test('a trial no update explains: failed health checks mark it bad and reboot into the other slot', async (t) => {
  const dev = await device({ healthChecks: [{ type: 'command', command: ['false'] }] });
  await dev.control.setTrial('B', 3);
  t.is(await dev.reboot(), 'B');
  t.like(await cycle(dev), { result: 'rollingBack', code: 'ERR_HEALTH_CHECK', rebootRequested: true });
  t.like(await dev.control.read(), { active: 'A', trial: false, good: { B: false } });
  t.is(await dev.reboot(), 'A');
  t.true(await slotHolds(dev.slotA, image1));
});
