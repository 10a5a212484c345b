/**
 * Bad input and abuse: hand-picked cases with their stable codes, then
 * 10,000+ generated malformed requests across every route. Each must get a
 * 4xx JSON error with an ERR_ code, and the database must not change.
 */
import anyTest, { type TestFn } from 'ava';
import { createHash, randomBytes } from 'node:crypto';
import { join } from 'node:path';
import { Pool } from 'undici';
import type { SqliteStore } from '../../server/store/sqlite-store.ts';
import { makeImage, nonce, removeDir, startTestServer, TestDevice, type TestServer } from './helpers.ts';

interface Ctx {
  ts: TestServer;
  device: TestDevice;
  other: TestDevice;
  enrollToken: string;
  releaseId: string;
  sha256: string;
}
const test = anyTest.serial as TestFn<Ctx>;

test.before(async (t) => {
  const ts = await startTestServer({ deltaSources: 0 });
  const image = join(ts.dir, 'f.img');
  await makeImage(image, { mib: 1 });
  const pub = await ts.admin.publishImage(image, { channel: 'stable', version: '1.0.0', board: 'rpi4', product: 'acme' });
  await ts.admin.setRollout('stable', '1.0.0', { percentage: '50%' });
  const { token } = await ts.admin.createEnrollmentToken({ product: 'acme', channel: 'stable', maxUses: 2 });
  const device = new TestDevice(ts.server.url, 'fuzz-dev');
  await device.enroll(token);
  const other = new TestDevice(ts.server.url, 'fuzz-other');
  await other.enroll(token);
  await device.check('0.9.0');
  t.context = { ts, device, other, enrollToken: token, releaseId: pub.release.id, sha256: pub.payload.sha256 };
});

test.after.always(async (t) => {
  if (!t.context.ts) return;
  await t.context.ts.stop();
  await removeDir(t.context.ts.dir);
});

function snapshot(ts: TestServer): string {
  const db = (ts.server.context.store as SqliteStore).db;
  const tables = (db.prepare("SELECT name FROM sqlite_master WHERE type = 'table' ORDER BY name").all() as { name: string }[]).map((r) => r.name);
  const hash = createHash('sha256');
  for (const table of tables) {
    const rows = db.prepare(`SELECT * FROM "${table}"`).all();
    const lines = rows.map((r) => JSON.stringify(r, (_k, v: unknown) => (Buffer.isBuffer(v) ? v.toString('base64') : v))).sort();
    hash.update(`${table}\n${lines.join('\n')}\n`);
  }
  return hash.digest('hex');
}

interface Req {
  method: string;
  path: string;
  headers: Record<string, string>;
  body?: string | Buffer;
}

async function send(pool: Pool, r: Req): Promise<{ status: number; body: string }> {
  const res = await pool.request({ method: r.method as 'GET', path: r.path, headers: r.headers, ...(r.body === undefined ? {} : { body: r.body }) });
  return { status: res.statusCode, body: await res.body.text() };
}

const json = (credential?: string): Record<string, string> => ({ 'content-type': 'application/json', ...(credential ? { authorization: `Bearer ${credential}` } : {}) });

test('hand-picked bad input gets a 4xx with a stable code and changes nothing', async (t) => {
  const { ts, device } = t.context;
  const pool = new Pool(ts.server.url, { connections: 4 });
  const before = snapshot(ts);
  const good = JSON.stringify(device.checkRequest('0.9.0'));
  const cases: [string, Req, number, string][] = [
    ['malformed JSON', { method: 'POST', path: '/v1/check', headers: json(device.credential), body: good.slice(0, -3) }, 400, 'ERR_JSON_SYNTAX'],
    ['wrong type', { method: 'POST', path: '/v1/check', headers: json(device.credential), body: good.replace('"slot":"A"', '"slot":1') }, 400, 'ERR_SCHEMA'],
    ['unknown field', { method: 'POST', path: '/v1/check', headers: json(device.credential), body: good.replace('{', '{"extra":1,') }, 400, 'ERR_SCHEMA'],
    ['duplicate key', { method: 'POST', path: '/v1/check', headers: json(device.credential), body: good.replace('{', '{"deviceId":"fuzz-other",') }, 400, 'ERR_JSON_DUPLICATE_KEY'],
    ['huge number', { method: 'POST', path: '/v1/check', headers: json(device.credential), body: good.replace('{', '{"keyringVersion":9007199254740993,') }, 400, 'ERR_JSON_UNSAFE_NUMBER'],
    ['__proto__', { method: 'POST', path: '/v1/check', headers: json(device.credential), body: good.replace('{', '{"__proto__":{},') }, 400, 'ERR_JSON_FORBIDDEN_KEY'],
    ['oversize', { method: 'POST', path: '/v1/check', headers: json(device.credential), body: JSON.stringify({ pad: 'x'.repeat(100_000) }) }, 413, 'ERR_BODY_TOO_LARGE'],
    ['not JSON content type', { method: 'POST', path: '/v1/check', headers: { ...json(device.credential), 'content-type': 'text/plain' }, body: good }, 415, 'ERR_UNSUPPORTED_MEDIA_TYPE'],
    ['no credential', { method: 'POST', path: '/v1/check', headers: json(), body: good }, 401, 'ERR_UNAUTHORIZED'],
    ['another device id', { method: 'POST', path: '/v1/check', headers: json(t.context.other.credential), body: good }, 403, 'ERR_DEVICE_MISMATCH'],
    ['enroll token used up', { method: 'POST', path: '/v1/devices/enroll', headers: json(), body: JSON.stringify({ token: t.context.enrollToken, deviceId: 'third', product: 'acme', board: 'rpi4', channel: 'stable' }) }, 401, 'ERR_ENROLLMENT_TOKEN'],
    ['path trick in a device id', { method: 'GET', path: '/v1/admin/devices/..%2F..%2Fetc%2Fpasswd', headers: json(ts.server.adminToken) }, 400, 'ERR_INVALID_ARGUMENT'],
    ['path trick in a payload name', { method: 'GET', path: '/v1/payloads/..%2Ftandem.db', headers: {} }, 400, 'ERR_INVALID_ARGUMENT'],
    ['unknown route', { method: 'GET', path: '/v1/nothing', headers: {} }, 404, 'ERR_NOT_FOUND'],
    ['wrong method', { method: 'DELETE', path: '/v1/check', headers: {} }, 405, 'ERR_METHOD_NOT_ALLOWED'],
    ['bad rollout percentage', { method: 'PUT', path: '/v1/admin/rollouts/stable/1.0.0', headers: json(ts.server.adminToken), body: '{"percentage":"101%"}' }, 400, 'ERR_INVALID_ARGUMENT'],
    ['unknown release', { method: 'PUT', path: '/v1/admin/rollouts/stable/9.9.9', headers: json(ts.server.adminToken), body: '{"percentage":"1%"}' }, 404, 'ERR_NOT_FOUND'],
    ['bad query', { method: 'GET', path: '/v1/admin/devices?limit=-1', headers: json(ts.server.adminToken) }, 400, 'ERR_SCHEMA'],
    ['garbage payload upload', { method: 'POST', path: '/v1/admin/payloads?channel=stable', headers: { authorization: `Bearer ${ts.server.adminToken}`, 'content-type': 'application/octet-stream' }, body: randomBytes(5000) }, 422, 'ERR_PAYLOAD_MAGIC'],
    ['release exists', { method: 'POST', path: '/v1/admin/releases?channel=stable&version=1.0.0&board=rpi4&product=acme', headers: { authorization: `Bearer ${ts.server.adminToken}`, 'content-type': 'application/octet-stream' }, body: randomBytes(5000) }, 409, 'ERR_RELEASE_EXISTS'],
  ];
  for (const [name, req, status, code] of cases) {
    const res = await send(pool, req);
    t.is(res.status, status, `${name}: ${res.body}`);
    t.is((JSON.parse(res.body) as { error: { code: string } }).error.code, code, name);
  }
  // A replayed events batch is counted once: the second copy changes nothing.
  const batch = JSON.stringify({ deviceId: device.id, events: [{ id: 'replay-0001', type: 'downloading', version: '1.0.0', channel: 'stable', at: '2025-01-01T00:00:00Z' }] });
  t.is((await send(pool, { method: 'POST', path: '/v1/events', headers: json(device.credential), body: batch })).status, 200);
  const afterFirst = snapshot(ts);
  t.is((await send(pool, { method: 'POST', path: '/v1/events', headers: json(device.credential), body: batch })).status, 200);
  t.is(snapshot(ts), afterFirst);
  t.not(before, afterFirst);
  await pool.close();
});

// ---- Generated malformed requests -----------------------------------------------

function rand(n: number): number {
  return Math.floor(Math.random() * n);
}
function pick<T>(items: readonly T[]): T {
  return items[rand(items.length)]!;
}

const ODD_VALUES: unknown[] = [null, true, false, 0, -1, 1.5, 1e300, '', ' ', 'x'.repeat(300), '../..', '%00', '\u0000', 'ünïcødé', [], [1, 2], {}, { a: 1 }, '1.0.0', 'ERR_X'];

function differentType(value: unknown, key: string): unknown {
  const kind = (v: unknown) => (Array.isArray(v) ? 'array' : v === null ? 'null' : typeof v);
  for (;;) {
    const candidate = pick(ODD_VALUES);
    // null is a valid pin version (it unpins): never the replacement there.
    if (kind(candidate) !== kind(value) && !(key === 'version' && candidate === null)) return candidate;
  }
}

/** One way of breaking a valid JSON body that no schema can accept. */
function breakBody(valid: Record<string, unknown>, required: string[]): string {
  const text = JSON.stringify(valid);
  switch (rand(12)) {
    case 0: return text.slice(0, rand(text.length)); // truncated
    case 1: { const i = rand(text.length); return text.slice(0, i) + pick(['{', '}', '"', ',', ':', '\\', '\u0001', ']']) + text.slice(i); }
    case 2: return JSON.stringify({ ...valid, [`extra${rand(100)}`]: pick(ODD_VALUES) });
    case 3: { const k = pick(Object.keys(valid)); return JSON.stringify({ ...valid, [k]: differentType(valid[k], k) }); }
    case 4: { const k = pick(Object.keys(valid)); return text.replace('{', `{${JSON.stringify(k)}:${JSON.stringify(valid[k])},`); } // duplicate key
    case 5: return text.replace('{', `{"n":${pick(['9007199254740993', '1e400', '-1e999', '123456789012345678901234567890'])},`);
    case 6: return text.replace('{', '{"__proto__":{"admin":true},');
    case 7: { const copy = { ...valid }; delete copy[pick(required)]; return JSON.stringify(copy); }
    case 8: return '['.repeat(100 + rand(1000)) + ']'.repeat(10);
    case 9: return pick(['', 'null', '[]', '"string"', '42', 'true', '{}']);
    case 10: return Buffer.from(text).toString('base64');
    default: { const k = pick(Object.keys(valid)); return JSON.stringify({ ...valid, [k]: pick(['', 'x'.repeat(5000), '../etc/passwd', '\u0000', -5, 1.25]) }); }
  }
}

function generate(c: Ctx): Req {
  const admin = c.ts.server.adminToken;
  const dev = c.device;
  const checkBody = dev.checkRequest('0.9.0') as unknown as Record<string, unknown>;
  const eventsBody = { deviceId: dev.id, events: [{ id: randomBytes(6).toString('hex'), type: 'downloading', version: '1.0.0', channel: 'stable', at: '2025-01-01T00:00:00Z' }] };
  const enrollBody = { token: c.enrollToken, deviceId: `new-${rand(1e6)}`, product: 'acme', board: 'rpi4', channel: 'stable' };
  const routes: { method: string; path: string; cred: string | undefined; body: Record<string, unknown>; required: string[] }[] = [
    { method: 'POST', path: '/v1/check', cred: dev.credential, body: checkBody, required: ['deviceId', 'nonce', 'version', 'slot'] },
    { method: 'POST', path: '/v1/events', cred: dev.credential, body: eventsBody, required: ['deviceId', 'events'] },
    { method: 'POST', path: '/v1/devices/enroll', cred: undefined, body: enrollBody, required: ['token', 'deviceId'] },
    { method: 'POST', path: '/v1/admin/tokens', cred: admin, body: { role: 'viewer' }, required: ['role'] },
    { method: 'POST', path: '/v1/admin/enrollment-tokens', cred: admin, body: { product: 'acme', channel: 'stable' }, required: ['product', 'channel'] },
    { method: 'PUT', path: '/v1/admin/rollouts/stable/1.0.0', cred: admin, body: { percentage: '10%' }, required: ['percentage'] },
    { method: 'PUT', path: `/v1/admin/devices/${dev.id}/pin`, cred: admin, body: { version: '1.0.0' }, required: ['version'] },
    { method: 'POST', path: `/v1/admin/devices/${dev.id}/clear-failure`, cred: admin, body: { version: '1.0.0' }, required: ['version'] },
    { method: 'PATCH', path: `/v1/admin/releases/${c.releaseId}`, cred: admin, body: { steppingStone: true }, required: ['steppingStone'] },
  ];
  const kind = rand(10);
  if (kind <= 5) {
    const r = pick(routes);
    return { method: r.method, path: r.path, headers: json(r.cred), body: breakBody(r.body, r.required) };
  }
  if (kind === 6) {
    // A valid body with a bad credential.
    const r = pick(routes);
    const cred = pick(['', 'Bearer', `Bearer ${randomBytes(32).toString('base64url')}`, `Basic ${randomBytes(8).toString('base64')}`, `Bearer ${'a'.repeat(5000)}`, `Bearer tdc_${randomBytes(3).toString('hex')}\u0000`]);
    const body = r.path === '/v1/devices/enroll' ? { ...r.body, token: `tde_${randomBytes(32).toString('base64url')}` } : r.body;
    return { method: r.method, path: r.path, headers: { 'content-type': 'application/json', ...(cred ? { authorization: cred.replace(/[^\t\x20-\x7e]/g, '') } : {}) }, body: JSON.stringify(body) };
  }
  if (kind === 7) {
    // Path tricks and unknown routes.
    const paths = [
      '/v1/payloads/../../admin-token', '/v1/payloads/%2e%2e%2fadmin-token', `/v1/payloads/${c.sha256.toUpperCase()}`, `/v1/payloads/${c.sha256}x`,
      '/v1/admin/devices/%00', '/v1/admin/devices/a%2Fb', `/v1/admin/devices/${'d'.repeat(300)}`, '/v1/admin/rollouts/stable/1.0.0%2F..%2F2.0.0',
      '/v1/admin/rollouts/../1.0.0', '/v1/admin/releases/not-a-uuid', '/v1/admin/jobs/..', '/v1/admin/tokens/%ff', '/v1//check', '/v1/check/',
      `/v1/${randomBytes(4).toString('hex')}`, '/v1/admin/devices?limit=abc', '/v1/admin/devices?channel=a&channel=b', '/v1/admin/audit?limit=99999999999',
      '/v1/admin/status?x=1', '/v1/admin/releases?channel=%00',
    ];
    return { method: pick(['GET', 'DELETE', 'PUT', 'POST']), path: pick(paths), headers: json(admin) };
  }
  if (kind === 8) {
    // Uploads that must be refused: bad queries, garbage payloads, wrong types.
    const q = pick(['channel=stable&version=1.0.0', 'channel=stable&version=v1&board=rpi4', 'channel=..&version=1.0.0&board=rpi4', 'version=2.0.0&board=rpi4', 'channel=stable&version=1.0.0&board=rpi4&product=acme', 'channel=stable&version=2.0.0&board=rpi4&steppingStone=yes']);
    if (rand(2) === 0) return { method: 'POST', path: `/v1/admin/releases?${q}`, headers: { authorization: `Bearer ${admin}`, 'content-type': 'application/octet-stream' }, body: randomBytes(rand(3000) + 1) };
    const garbage = rand(2) === 0 ? randomBytes(rand(4000) + 1) : Buffer.concat([Buffer.from([0x89, 0x54, 0x41, 0x4e, 0x44, 0x45, 0x4d, 0x0a]), randomBytes(rand(200))]);
    return { method: 'POST', path: `/v1/admin/payloads?channel=${pick(['stable', 'x%20y', ''])}`, headers: { authorization: `Bearer ${admin}`, 'content-type': pick(['application/octet-stream', 'application/json']) }, body: garbage };
  }
  // Oversize, and bodies on the wrong content type.
  const r = pick(routes);
  if (rand(2) === 0) return { method: r.method, path: r.path, headers: json(r.cred), body: JSON.stringify({ ...r.body, pad: 'p'.repeat(300_000) }) };
  return { method: r.method, path: r.path, headers: { ...json(r.cred), 'content-type': pick(['text/plain', 'application/xml', 'multipart/form-data; boundary=x']) }, body: JSON.stringify(r.body) };
}

test('10,000 generated malformed requests: no 5xx, stable codes, database unchanged', async (t) => {
  const { ts } = t.context;
  const pool = new Pool(ts.server.url, { connections: 16 });
  const before = snapshot(ts);
  const codes = new Map<string, number>();
  const total = 10_000;
  let next = 0;
  await Promise.all(Array.from({ length: 32 }, async () => {
    while (next < total) {
      next++;
      const req = generate(t.context);
      let res;
      try {
        res = await send(pool, req);
      } catch (err) {
        // The server may close the socket after refusing an oversize body: that is a refusal, not a crash.
        if ((err as { code?: string }).code === 'UND_ERR_SOCKET' || (err as { code?: string }).code === 'ECONNRESET') continue;
        throw err;
      }
      if (res.status >= 500 || res.status < 400) t.fail(`${req.method} ${req.path} -> ${res.status} ${res.body.slice(0, 300)} (body ${String(req.body).slice(0, 200)})`);
      const code = (JSON.parse(res.body) as { error?: { code?: string } }).error?.code ?? 'none';
      if (!/^ERR_[A-Z_]+$/.test(code)) t.fail(`no error code: ${res.body.slice(0, 200)}`);
      codes.set(code, (codes.get(code) ?? 0) + 1);
    }
  }));
  await pool.close();
  t.is(snapshot(ts), before, 'the database changed');
  t.log([...codes].sort((a, b) => b[1] - a[1]).map(([c, n]) => `${c} ${n}`).join(', '));
  t.true(codes.size >= 10);
  // The server still works.
  t.is((await t.context.device.check('0.9.0')).body.type, 'tandem-check-response');
  void nonce;
});
