/** The agent configuration: validated once, every bad field named, and the running root never a target. */
import test from 'ava';
import { mkdir, rm, writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import { DeviceAgent } from '../../agent/agent.ts';
import { loadConfig, parseConfig } from '../../agent/config.ts';
import { slotPath } from '../../agent/slots.ts';
import { isTandemError } from '../../shared/errors.ts';
import { encodePublicKeyFile, generateKeyPair } from '../../shared/keys.ts';
import { makeDevice, makeImage, tempDir } from './harness.ts';

let dir = '';
const root = generateKeyPair();
test.before(async () => {
  dir = await tempDir('config');
  await writeFile(join(dir, 'root.pub'), encodePublicKeyFile(root.publicKey));
});
test.after.always(async () => {
  await rm(dir, { recursive: true, force: true });
});

const valid = () => ({
  server: 'https://updates.example.com/',
  deviceId: 'dev-1',
  product: 'appliance',
  board: 'rpi4',
  channel: 'stable',
  version: '1.0.0',
  rootKeys: ['root.pub'],
  slots: { A: 'PARTLABEL=root_a', B: 'PARTUUID=0FC63DAF-8483-4772-8E79-3D69D8477DE4' },
  bootControl: { kind: 'grub', path: '/boot/grub/grubenv' },
  stateDir: '/var/lib/tandem',
  health: { checks: [{ type: 'systemd', units: ['app.service'] }, { type: 'http', url: 'http://127.0.0.1:8080/healthz' }, { type: 'command', command: ['/usr/bin/app-selftest'], timeoutSeconds: 10 }] },
});

test('a valid config is completed with defaults and frozen', async (t) => {
  const config = await parseConfig(valid(), { configPath: join(dir, 'agent.json') });
  t.is(config.server, 'https://updates.example.com');
  t.is(config.trust.rootKeys.length, 1);
  t.is(config.tries, 3);
  t.deepEqual(config.rebootCommand, ['systemctl', 'reboot']);
  t.is(config.health.checks.length, 3);
  t.like(config.health.checks[1], { type: 'http', expectStatus: 200, timeoutSeconds: 30 });
  t.true(Object.isFrozen(config) && Object.isFrozen(config.download) && Object.isFrozen(config.health.checks[0]));
  t.is(slotPath(config.slots.A), '/dev/disk/by-partlabel/root_a');
  t.is(slotPath(config.slots.B), '/dev/disk/by-partuuid/0fc63daf-8483-4772-8e79-3d69d8477de4');
});

test('every bad field is reported at once, by name', async (t) => {
  const doc = {
    ...valid(),
    server: 'ftp://x',
    board: 'has spaces',
    version: '1.0',
    slots: { A: 'sda2', B: 'PARTLABEL=root_b' },
    bootControl: { kind: 'uboot' },
    tries: 0,
    health: { checks: [{ type: 'http', url: 'not a url' }, { type: 'command' }] },
    poll: { jitter: 2 },
    colour: 'blue',
  };
  const err = await t.throwsAsync(parseConfig(doc, { configPath: join(dir, 'agent.json') }));
  t.true(isTandemError(err, 'ERR_CONFIG'));
  const fields = ((err as unknown as { details: { errors: { field: string }[] } }).details.errors).map((e) => e.field);
  for (const field of ['board', 'slots.A', 'tries', 'poll.jitter', 'colour']) t.true(fields.includes(field), `${field} reported (${fields.join(', ')})`);
  t.regex((err as Error).message, /slots\.A: must be an absolute path, PARTLABEL=<label> or PARTUUID=<uuid>/);
});

test('semantic errors: URL, version, keys, backend fields, health checks, equal slots', async (t) => {
  const doc = {
    ...valid(),
    server: 'ftp://x',
    version: '1.0',
    rootKeys: ['missing.pub'],
    slots: { A: '/dev/sda2', B: '/dev/sda2' },
    bootControl: { kind: 'uboot' },
    health: { checks: [{ type: 'http', url: 'not a url' }, { type: 'command' }, { type: 'systemd', units: ['a.service'], url: 'http://x' }] },
  };
  const err = await t.throwsAsync(parseConfig(doc, { configPath: join(dir, 'agent.json') }));
  const fields = ((err as unknown as { details: { errors: { field: string }[] } }).details.errors).map((e) => e.field);
  for (const field of ['server', 'version', 'rootKeys.0', 'slots.B', 'bootControl.copies', 'health.checks.0.url', 'health.checks.1.command', 'health.checks.2.url']) {
    t.true(fields.includes(field), `${field} reported (${fields.join(', ')})`);
  }
});

test('loadConfig names the file and refuses invalid JSON', async (t) => {
  const path = join(dir, 'broken.json');
  await writeFile(path, '{"server": "x",, }');
  const err = await t.throwsAsync(loadConfig(path), { code: 'ERR_CONFIG' });
  t.regex(err!.message, /broken\.json/);
  await t.throwsAsync(loadConfig(join(dir, 'absent.json')), { code: 'ERR_CONFIG' });
});

test('a config whose target slot is the running root device is refused', async (t) => {
  const devDir = join(dir, 'device');
  await mkdir(devDir, { recursive: true });
  const image = makeImage(1, 5);
  // The boot env says A runs, but the running root is slot B's file: the slots are swapped.
  const dev = await makeDevice(devDir, { server: 'http://127.0.0.1:9', keys: { root }, version: '1.0.0', image, overrides: { rootDevice: join(devDir, 'slot-b.img') } });
  await t.throwsAsync(DeviceAgent.open(await dev.config()), { code: 'ERR_SLOT_IS_ROOT' });
  // Root device = slot A (the running one): fine.
  await writeFile(dev.configPath, JSON.stringify({ ...JSON.parse((await import('node:fs')).readFileSync(dev.configPath, 'utf8')), rootDevice: join(devDir, 'slot-a.img') }));
  const agent = await DeviceAgent.open(await dev.config());
  t.is(agent.booted, 'A');
  await agent.close();
});

test('one agent at a time: the state folder is locked', async (t) => {
  const devDir = join(dir, 'locked');
  const dev = await makeDevice(devDir, { server: 'http://127.0.0.1:9', keys: { root }, version: '1.0.0', image: makeImage(1, 6) });
  const first = await DeviceAgent.open(await dev.config());
  await t.throwsAsync(DeviceAgent.open(await dev.config()), { code: 'ERR_AGENT_LOCKED' });
  await first.close();
  const second = await DeviceAgent.open(await dev.config());
  await second.close();
});

test('the running version comes from versionFile (bare, or os-release VERSION_ID) when configured', async (t) => {
  const devDir = join(dir, 'versioned');
  const dev = await makeDevice(devDir, { server: 'http://127.0.0.1:9', keys: { root }, version: '1.0.0', image: makeImage(1, 7), overrides: { versionFile: 'os-release' } });
  await writeFile(join(devDir, 'os-release'), 'NAME="Appliance OS"\nID=appliance\nVERSION_ID="2.3.4"\n');
  let agent = await DeviceAgent.open(await dev.config());
  t.is(await agent.currentVersion(), '2.3.4');
  await agent.close();
  await writeFile(join(devDir, 'os-release'), '2.4.0\n');
  agent = await DeviceAgent.open(await dev.config());
  t.is(await agent.currentVersion(), '2.4.0');
  await agent.close();
});
