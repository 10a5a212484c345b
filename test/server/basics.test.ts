import anyTest, { type TestFn } from 'ava';
import { createHash } from 'node:crypto';
import { mkdtemp, readdir, readFile, readlink, stat } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { request } from 'undici';
import { canonicalBytes } from '../../shared/canonical-json.ts';
import { verifyKeyring, verifySignedBytes } from '../../shared/keyring.ts';
import { decodePublicKeyFile } from '../../shared/keys.ts';
import { CHECK_RESPONSE_DOMAIN, validateCheckResponse } from '../../shared/schemas/protocol.ts';
import { makeImage, post, removeDir, sameBytes, startTestServer, TestDevice, type TestServer } from './helpers.ts';

const test = anyTest as TestFn<{ ts: TestServer; image: Buffer; payloadSha: string; enrollToken: string }>;

test.before(async (t) => {
  const ts = await startTestServer();
  const imagePath = join(ts.dir, 'v1.img');
  const image = await makeImage(imagePath, { mib: 3 });
  const published = await ts.admin.publishImage(imagePath, { channel: 'stable', version: '1.0.0', board: 'rpi4', product: 'acme' });
  const { token } = await ts.admin.createEnrollmentToken({ product: 'acme', channel: 'stable' });
  t.context = { ts, image, payloadSha: published.payload.sha256, enrollToken: token };
});

test.after.always(async (t) => {
  if (!t.context.ts) return;
  await t.context.ts.stop();
  await removeDir(t.context.ts.dir);
});

test('healthz, keys on disk and the admin token file', async (t) => {
  const { ts } = t.context;
  const res = await request(`${ts.server.url}/healthz`);
  t.is(res.statusCode, 200);
  t.deepEqual(await res.body.json(), { status: 'ok' });
  for (const f of ['root.key', 'root.pub', 'release.key', 'release.pub', 'server.key', 'server.pub', 'keyring.json']) t.true((await stat(join(ts.dir, 'keys', f))).isFile(), f);
  const tokenFile = await stat(join(ts.dir, 'admin-token'));
  t.is(tokenFile.mode & 0o777, 0o600);
  t.is((await readFile(join(ts.dir, 'admin-token'), 'utf8')).trim(), ts.server.adminToken);
});

test('a key path configured without its keyring is a configuration error, not a new key set', async (t) => {
  const dir = await mkdtemp(join(tmpdir(), 'tandem-server-keys-'));
  try {
    const error = await t.throwsAsync(startTestServer({ keys: { releaseKey: join(dir, 'offline-release.key') } }, dir));
    t.is((error as { code?: string }).code, 'ERR_CONFIG');
    t.deepEqual(await readdir(dir).then((names) => names.filter((n) => n === 'keys')), []);
  } finally {
    await removeDir(dir);
  }
});

test('enrollment, then a signed check-in verified with the keyring server key', async (t) => {
  const { ts, enrollToken } = t.context;
  const device = new TestDevice(ts.server.url, 'dev-sig-1', 'acme', 'rpi4');
  await device.enroll(enrollToken);
  t.regex(device.credential, /^tdc_/);
  await ts.admin.setRollout('stable', '1.0.0', { percentage: '100%' });
  const res = await device.check('0.9.0');
  validateCheckResponse(res);
  t.is(res.body.result, 'update');
  t.is(res.body.update?.version, '1.0.0');
  t.is(res.body.update?.payload.kind, 'full');
  t.is(res.body.update?.payload.sha256, t.context.payloadSha);
  // The device's view: pin the root, verify the keyring, then the response with a server key from it.
  const root = decodePublicKeyFile(await readFile(ts.server.keys.rootPublicKeyPath, 'utf8'));
  const keyring = verifyKeyring(res.body.keyring, { rootKeys: [root.publicKey], threshold: 1 }, { now: new Date() });
  t.notThrows(() => verifySignedBytes(canonicalBytes(res.body), [res.signature], keyring, CHECK_RESPONSE_DOMAIN, new Date(), 'server'));
  // Tampering breaks it.
  const forged = { ...res.body, pollAfterSeconds: res.body.pollAfterSeconds + 1 };
  t.throws(() => verifySignedBytes(canonicalBytes(forged), [res.signature], keyring, CHECK_RESPONSE_DOMAIN, new Date(), 'server'));
  // A server key cannot pass as a release key.
  t.throws(() => verifySignedBytes(canonicalBytes(res.body), [res.signature], keyring, CHECK_RESPONSE_DOMAIN, new Date(), 'release'));
  t.true(new Date(res.body.expires).getTime() - new Date(res.body.issuedAt).getTime() <= 300_000);
});

test('payload downloads: full, ranges, resumption, 416, HEAD, ETag', async (t) => {
  const { ts, payloadSha } = t.context;
  const url = `${ts.server.url}/v1/payloads/${payloadSha}`;
  const whole = Buffer.from(await (await request(url)).body.arrayBuffer());
  t.is(createHash('sha256').update(whole).digest('hex'), payloadSha);

  const r1 = await request(url, { headers: { range: 'bytes=0-99' } });
  t.is(r1.statusCode, 206);
  t.is(r1.headers['content-range'], `bytes 0-99/${whole.length}`);
  t.is(r1.headers.etag, `"${payloadSha}"`);
  t.is(r1.headers['cache-control'], 'public, max-age=31536000, immutable');
  t.deepEqual(Buffer.from(await r1.body.arrayBuffer()), whole.subarray(0, 100));

  // Resume: the rest from byte 100 completes the file byte for byte.
  const r2 = await request(url, { headers: { range: 'bytes=100-', 'if-range': `"${payloadSha}"` } });
  t.is(r2.statusCode, 206);
  const rest = Buffer.from(await r2.body.arrayBuffer());
  sameBytes(t, Buffer.concat([whole.subarray(0, 100), rest]), whole, 'resumed download');

  const suffix = await request(url, { headers: { range: 'bytes=-10' } });
  t.deepEqual(Buffer.from(await suffix.body.arrayBuffer()), whole.subarray(whole.length - 10));

  for (const bad of [`bytes=${whole.length}-`, 'bytes=5-2', 'bytes=0-1,5-6', 'bytes=-0']) {
    const r = await request(url, { headers: { range: bad } });
    t.is(r.statusCode, 416, bad);
    t.is(r.headers['content-range'], `bytes */${whole.length}`);
    t.is(((await r.body.json()) as { error: { code: string } }).error.code, 'ERR_RANGE_NOT_SATISFIABLE');
  }
  const stale = await request(url, { headers: { range: 'bytes=0-9', 'if-range': '"other"' } });
  t.is(stale.statusCode, 200);
  await stale.body.dump();

  const head = await request(url, { method: 'HEAD' });
  t.is(head.statusCode, 200);
  t.is(Number(head.headers['content-length']), whole.length);
  await head.body.dump();

  const cached = await request(url, { headers: { 'if-none-match': `"${payloadSha}"` } });
  t.is(cached.statusCode, 304);
  await cached.body.dump();

  for (const [path, status] of [['/v1/payloads/' + '0'.repeat(64), 404], ['/v1/payloads/..%2F..%2Fadmin-token', 400], ['/v1/payloads/ABC', 400]] as const) {
    const r = await request(ts.server.url + path);
    t.is(r.statusCode, status, path);
    await r.body.dump();
  }
});

// Serial, so no other test's download is running when the open files are counted.
test.serial('parallel range downloads are byte-exact while other readers stall or hang up, and no file stays open', async (t) => {
  const { ts, payloadSha } = t.context;
  const url = `${ts.server.url}/v1/payloads/${payloadSha}`;
  const file = join(ts.dir, 'payloads', payloadSha);
  const whole = await readFile(file);
  // The server runs in this process: its descriptors of the payload file are ours to count.
  const openFiles = async (): Promise<number> => {
    const targets = await Promise.all((await readdir('/proc/self/fd')).map((fd) => readlink(`/proc/self/fd/${fd}`).catch(() => '')));
    return targets.filter((target) => target === file).length;
  };
  // Read buffers are reused between responses: a buffer handed back too early would show up as wrong bytes here.
  const exact = Array.from({ length: 24 }, async (_, i) => {
    const start = (i * 7919 * 97) % whole.length;
    const end = Math.min(whole.length - 1, start + ((i * 104_729) % (900 * 1024)));
    const res = await request(url, { headers: { range: `bytes=${start}-${end}` } });
    t.is(res.statusCode, 206);
    const got = Buffer.from(await res.body.arrayBuffer());
    t.true(got.equals(whole.subarray(start, end + 1)), `range ${start}-${end}`);
  });
  // Slow readers (backpressure) and readers that hang up mid-body, alongside.
  const slow = Array.from({ length: 4 }, async () => {
    const res = await request(url);
    const chunks: Buffer[] = [];
    for await (const chunk of res.body) {
      chunks.push(chunk as Buffer);
      await new Promise((r) => setTimeout(r, 5));
    }
    t.true(Buffer.concat(chunks).equals(whole), 'slow full download');
  });
  const quitters = Array.from({ length: 4 }, async () => {
    const res = await request(url);
    for await (const _ of res.body) break;
  });
  await Promise.all([...exact, ...slow, ...quitters]);
  // The server closes each payload file once its response is done or cut short.
  let open = await openFiles();
  for (let i = 0; i < 100 && open > 0; i++) {
    await new Promise((r) => setTimeout(r, 20));
    open = await openFiles();
  }
  t.is(open, 0, 'payload file descriptors left open');
});

test('bad credentials and a device claiming another id', async (t) => {
  const { ts, enrollToken } = t.context;
  const a = new TestDevice(ts.server.url, 'dev-a');
  await a.enroll(enrollToken);
  const b = new TestDevice(ts.server.url, 'dev-b');
  await b.enroll(enrollToken);
  const noAuth = await post(ts.server.url, '/v1/check', a.checkRequest('1.0.0'));
  t.is(noAuth.status, 401);
  t.is(noAuth.body.error.code, 'ERR_UNAUTHORIZED');
  const wrong = await post(ts.server.url, '/v1/check', a.checkRequest('1.0.0'), 'tdc_' + 'x'.repeat(43));
  t.is(wrong.body.error.code, 'ERR_UNAUTHORIZED');
  const claim = await post(ts.server.url, '/v1/check', b.checkRequest('1.0.0'), a.credential);
  t.is(claim.status, 403);
  t.is(claim.body.error.code, 'ERR_DEVICE_MISMATCH');
  const events = await post(ts.server.url, '/v1/events', { deviceId: 'dev-b', events: [{ id: 'abcdefgh1', type: 'downloading', version: '1.0.0', channel: 'stable', at: new Date().toISOString() }] }, a.credential);
  t.is(events.body.error.code, 'ERR_DEVICE_MISMATCH');
  const again = await post(ts.server.url, '/v1/devices/enroll', { token: enrollToken, deviceId: 'dev-a', product: 'acme', board: 'rpi4', channel: 'stable' });
  t.is(again.status, 409);
  t.is(again.body.error.code, 'ERR_DEVICE_EXISTS');
  const badToken = await post(ts.server.url, '/v1/devices/enroll', { token: 'tde_' + 'y'.repeat(43), deviceId: 'dev-z', product: 'acme', board: 'rpi4', channel: 'stable' });
  t.is(badToken.status, 401);
  t.is(badToken.body.error.code, 'ERR_ENROLLMENT_TOKEN');
  const wrongChannel = await post(ts.server.url, '/v1/devices/enroll', { token: enrollToken, deviceId: 'dev-z', product: 'acme', board: 'rpi4', channel: 'beta' });
  t.is(wrongChannel.body.error.code, 'ERR_ENROLLMENT_TOKEN');
});
