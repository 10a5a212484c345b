/** Restart durability, roles and audit, OpenAPI coverage, metrics, configuration errors, offline payload upload. */
import anyTest, { type TestFn } from 'ava';
import { readFile } from 'node:fs/promises';
import { join } from 'node:path';
import { request } from 'undici';
import { AdminClient } from '../../server/admin-client.ts';
import { buildConfig } from '../../server/config.ts';
import { createApp } from '../../server/app.ts';
import { ROUTES } from '../../server/openapi.ts';
import { isTandemError } from '../../shared/errors.ts';
import { makeImage, removeDir, startTestServer, TestDevice, type TestServer } from './helpers.ts';

// One holder shared by every test: ava gives each test a shallow copy of t.context, and the restart test replaces the server.
const test = anyTest.serial as TestFn<{ holder: { ts: TestServer } }>;

test.before(async (t) => {
  t.context = { holder: { ts: await startTestServer({ deltaSources: 0 }) } };
});

test.after.always(async (t) => {
  if (!t.context.holder) return;
  await t.context.holder.ts.stop();
  await removeDir(t.context.holder.ts.dir);
});

test('roles: viewers read, release managers steer, only admins manage tokens; every change is audited', async (t) => {
  const { ts } = t.context.holder;
  const image = join(ts.dir, 'r.img');
  await makeImage(image, { mib: 1 });
  await ts.admin.publishImage(image, { channel: 'stable', version: '1.0.0', board: 'rpi4', product: 'acme' });
  const viewer = new AdminClient(ts.server.url, (await ts.admin.createToken('viewer', 'eve')).token);
  const release = new AdminClient(ts.server.url, (await ts.admin.createToken('release', 'rita')).token);
  t.is((await viewer.releases()).length, 1);
  await t.throwsAsync(viewer.setRollout('stable', '1.0.0', { percentage: '5%' }), { code: 'ERR_FORBIDDEN' });
  t.is((await release.setRollout('stable', '1.0.0', { percentage: '5%' })).rollout.basisPoints, 500);
  await t.throwsAsync(release.createToken('admin'), { code: 'ERR_FORBIDDEN' });
  const audit = await ts.admin.audit();
  const set = audit.find((a) => a.action === 'rollout.set');
  t.regex(set?.actor ?? '', /^rita#/);
  t.deepEqual(set?.details.to, { basisPoints: 500, state: 'active' });
});

test('a restarted server keeps keys, tokens, devices, releases, rollouts and payloads', async (t) => {
  const { ts } = t.context.holder;
  const { token } = await ts.admin.createEnrollmentToken({ product: 'acme', channel: 'stable' });
  const device = new TestDevice(ts.server.url, 'restart-1');
  await device.enroll(token);
  await ts.admin.setRollout('stable', '1.0.0', { percentage: '100%' });
  const before = await device.check('0.9.0');
  const keyring = await readFile(join(ts.dir, 'keys', 'keyring.json'), 'utf8');
  const adminToken = ts.server.adminToken;
  await ts.stop();

  const again = await startTestServer({ deltaSources: 0 }, ts.dir);
  t.context.holder.ts = again;
  t.is(again.server.adminToken, adminToken);
  t.false(again.server.keys.created);
  t.is(await readFile(join(ts.dir, 'keys', 'keyring.json'), 'utf8'), keyring);
  const moved = new TestDevice(again.server.url, 'restart-1');
  moved.credential = device.credential;
  const after = await moved.check('0.9.0');
  t.is(after.body.update?.payload.sha256, before.body.update?.payload.sha256);
  t.is(after.signature.keyId, before.signature.keyId);
  const r = await again.admin.rollout('stable', '1.0.0');
  t.is(r.rollout.state, 'complete');
  t.is(r.stats.offered, 1);
  const dl = await request(`${again.server.url}/v1/payloads/${r.payloads[0]!.sha256}`, { method: 'HEAD' });
  t.is(dl.statusCode, 200);
  await dl.body.dump();
});

test('a payload made offline is verified on upload; a tampered one is refused', async (t) => {
  const { ts } = t.context.holder;
  const sc = ts.server.context;
  const { createPayload } = await import('../../payloads/generate.ts');
  const image = join(ts.dir, 'off.img');
  await makeImage(image, { mib: 1, seed: 'offline' });
  const out = join(ts.dir, 'off.payload');
  await createPayload({ image, version: '3.0.0', board: 'rpi4', product: 'acme', signer: sc.keys.releaseKey, keyring: sc.keys.keyring, out, level: 3 });
  const tampered = join(ts.dir, 'tampered.payload');
  const bytes = await readFile(out);
  bytes[bytes.length - 10]! ^= 0xff;
  await (await import('node:fs/promises')).writeFile(tampered, bytes);
  await t.throwsAsync(ts.admin.publishPayload(tampered, { channel: 'beta' }), { code: 'ERR_BLOB_HASH' });
  const ok = await ts.admin.publishPayload(out, { channel: 'beta' });
  t.is(ok.release.version, '3.0.0');
  t.is(ok.payload.kind, 'full');
  await t.throwsAsync(ts.admin.publishPayload(out, { channel: 'beta' }), { code: 'ERR_RELEASE_EXISTS' });
});

test('the OpenAPI document lists exactly the routes the app serves', async (t) => {
  const { ts } = t.context.holder;
  const doc = (await (await request(`${ts.server.url}/v1/openapi.json`)).body.json()) as { openapi: string; paths: Record<string, Record<string, unknown>> };
  t.is(doc.openapi, '3.1.0');
  const app = createApp(ts.server.context);
  const served = new Set<string>();
  for (const mw of app.middleware as { router?: { stack: { path: string; methods: string[] }[] } }[]) {
    for (const layer of mw.router?.stack ?? []) {
      for (const m of layer.methods) if (m !== 'HEAD') served.add(`${m.toLowerCase()} ${layer.path.replace(/:([a-z0-9]+)/gi, '{$1}')}`);
    }
  }
  const documented = new Set(ROUTES.map((r) => `${r.method} ${r.path}`));
  t.deepEqual([...served].sort(), [...documented].sort());
  t.truthy((doc.paths['/v1/check']!.post as { requestBody: unknown }).requestBody);
});

test('metrics count check-ins, offers, events and payload bytes', async (t) => {
  const { ts } = t.context.holder;
  const text = await (await request(`${ts.server.url}/metrics`)).body.text();
  t.regex(text, /# TYPE tandem_checks_total counter/);
  t.regex(text, /tandem_checks_total\{result="update"\} \d+/);
  t.regex(text, /tandem_offers_total\{kind="full"\} \d+/);
  t.regex(text, /tandem_devices \d+/);
  t.regex(text, /tandem_http_errors_total\{code="ERR_BLOB_HASH"\} 1/);
});

test('configuration errors name the bad field', (t) => {
  const bad = (input: object, field: RegExp) => {
    const err = t.throws(() => buildConfig({ dataDir: '/tmp/x', ...input }));
    t.true(isTandemError(err, 'ERR_CONFIG'));
    t.regex(err!.message, field);
  };
  bad({ pollJitter: 2 }, /pollJitter/);
  bad({ listen: 'nohost' }, /listen/);
  bad({ limits: { checkBytes: 0 } }, /checkBytes/);
  bad({ colour: 'blue' }, /colour/);
  t.is(buildConfig({ dataDir: '/tmp/x' }).listen, '127.0.0.1:8080');
});
