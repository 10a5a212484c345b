/**
 * A hostile or broken server (harness.ts's protocol server, told to
 * misbehave): every lie is refused with a clear code, the booted slot and the
 * boot flags are never touched, and each refusal comes in bounded time.
 * Transport faults that heal (a cut connection, a few 5xx) are retried and
 * resumed with Range + If-Range.
 */
import test from 'ava';
import type { ExecutionContext } from 'ava';
import { readFile, rm, writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import { DeviceAgent } from '../../agent/agent.ts';
import { generateKeyPair } from '../../shared/keys.ts';
import { createKeyring } from '../../shared/keyring.ts';
import { evolveImage, makeDevice, makeFleetKeys, makeImage, makeRelease, ProtocolServer, serveFile, slotHolds, tempDir, type Device, type Release, runCycle as cycle } from './harness.ts';

const keys = makeFleetKeys();
let dir = '';
let server: ProtocolServer;
let v1: Release;
let v2: Release;
let v3: Release;
let otherBoard: Release;
let old: Release;
let image1: Buffer;

test.before(async () => {
  dir = await tempDir('hostile');
  image1 = makeImage(3, 11);
  const releases = join(dir, 'releases');
  v1 = await makeRelease(releases, keys, '1.0.0', image1);
  v2 = await makeRelease(releases, keys, '1.1.0', evolveImage(image1, 12));
  v3 = await makeRelease(releases, keys, '1.2.0', evolveImage(image1, 13));
  otherBoard = await makeRelease(join(dir, 'other'), keys, '1.1.0', evolveImage(image1, 14), { board: 'otherboard' });
  old = await makeRelease(join(dir, 'old'), keys, '0.9.0', evolveImage(image1, 15));
  server = await new ProtocolServer({ keys }).start();
});
test.after.always(async () => {
  await server?.close();
  await rm(dir, { recursive: true, force: true });
});

test.afterEach.always(() => {
  server.offer = () => undefined;
  server.mutateBody = () => {};
  server.mutateResponse = (r) => r;
  server.intercept = undefined;
});

let n = 0;
async function device(overrides: Record<string, unknown> = {}): Promise<Device> {
  return makeDevice(join(dir, `device-${n++}`), { server: server.url, keys, version: '1.0.0', image: image1, overrides });
}


/** Refused with `code` within `seconds`; slot A and the boot flags untouched. */
async function refused(t: ExecutionContext, dev: Device, code: string, seconds = 10): Promise<void> {
  const started = Date.now();
  const bootBefore = await readFile(dev.bootEnv);
  await t.throwsAsync(cycle(dev), { code });
  t.true(Date.now() - started < seconds * 1000, `refused within ${seconds} s`);
  t.true(await slotHolds(dev.slotA, v1.image), 'the booted slot is untouched');
  t.deepEqual(await readFile(dev.bootEnv), bootBefore, 'boot flags untouched');
  t.false(await dev.rebootRequested());
  const agent = await DeviceAgent.open(await dev.config());
  t.is(agent.state.phase, 'idle');
  t.is(agent.state.lastError?.code, code);
  await agent.close();
}

const offerV2 = () => ({ version: '1.1.0', payload: v2.full });

test.serial('a response signed by a key the keyring does not list is refused', async (t) => {
  const dev = await device();
  server.offer = offerV2;
  const rogue = generateKeyPair();
  server.mutateResponse = (r) => server.sign(r.body, rogue.privateKey);
  await refused(t, dev, 'ERR_UNKNOWN_KEY');
});

test.serial('a response whose body was altered after signing is refused', async (t) => {
  const dev = await device();
  server.offer = offerV2;
  server.mutateResponse = (r) => ({ ...r, body: { ...r.body, pollAfterSeconds: r.body.pollAfterSeconds + 1 } });
  await refused(t, dev, 'ERR_BAD_SIGNATURE');
});

test.serial('a keyring not signed by the pinned root is refused', async (t) => {
  const dev = await device();
  const rogueRoot = generateKeyPair();
  const rogueKeyring = createKeyring(
    { version: 2, expires: new Date(Date.now() + 1e9), roots: { threshold: 1, keys: [rogueRoot.publicKey] }, releaseKeys: [{ publicKey: keys.release.publicKey, expires: new Date(Date.now() + 1e9) }], serverKeys: [{ publicKey: keys.server.publicKey, expires: new Date(Date.now() + 1e9) }] },
    [rogueRoot.privateKey],
  );
  server.offer = offerV2;
  server.mutateBody = (body) => {
    body.keyring = rogueKeyring;
  };
  await refused(t, dev, 'ERR_KEYRING_UNTRUSTED');
});

test.serial('an expired (frozen) response is refused', async (t) => {
  const dev = await device();
  server.offer = offerV2;
  server.mutateBody = (body) => {
    body.issuedAt = new Date(Date.now() - 600_000).toISOString();
    body.expires = new Date(Date.now() - 1000).toISOString();
  };
  await refused(t, dev, 'ERR_RESPONSE_EXPIRED');
});

test.serial('a replayed response (another request\'s nonce) is refused', async (t) => {
  const dev = await device();
  server.offer = offerV2;
  let recorded: unknown;
  server.mutateResponse = (r) => (recorded ??= r);
  await cycle(dev).catch(() => undefined); // first one installs; we only need its response recorded
  const dev2 = await device();
  // An attacker cannot re-sign; replayed as recorded, the nonce is another request's.
  server.mutateResponse = () => recorded;
  await refused(t, dev2, 'ERR_NONCE_MISMATCH');
});

test.serial('a release for another board is refused before download', async (t) => {
  const dev = await device();
  const before = server.payloadRequests.length;
  server.offer = () => ({ version: '1.1.0', payload: otherBoard.full });
  await refused(t, dev, 'ERR_WRONG_BOARD');
  t.is(server.payloadRequests.length, before, 'nothing downloaded');
});

test.serial('a downgrade is refused unless the release is an allowed rollback target', async (t) => {
  const dev = await device();
  server.offer = () => ({ version: '0.9.0', payload: old.full });
  await refused(t, dev, 'ERR_DOWNGRADE');
  const dev2 = await device();
  server.offer = () => ({ version: '0.9.0', payload: old.full, allowDowngrade: true });
  t.like(await cycle(dev2), { result: 'installed', version: '0.9.0' });
});

test.serial('an offer whose version disagrees with its signed manifest is refused', async (t) => {
  const dev = await device();
  server.offer = () => ({ version: '1.5.0', payload: v2.full });
  await refused(t, dev, 'ERR_OFFER_MISMATCH');
});

test.serial('payload bytes changed after the check (another payload at the URL) are refused', async (t) => {
  const dev = await device();
  server.offer = offerV2;
  server.intercept = async (req, res) => {
    if (!req.url?.startsWith('/v1/payloads/')) return false;
    await serveFile(req, res, v3.full.path, '"x"');
    return true;
  };
  await refused(t, dev, 'ERR_DOWNLOAD_TOO_LARGE');
});

test.serial('another payload of the same size at the URL is refused before a byte is written', async (t) => {
  const dev = await device();
  server.offer = offerV2;
  const other = await readFile(v3.full.path);
  const size = v2.full.size;
  const body = Buffer.concat([other, Buffer.alloc(Math.max(0, size - other.length))]).subarray(0, size);
  server.intercept = (req, res) => {
    if (!req.url?.startsWith('/v1/payloads/')) return false;
    res.writeHead(200, { 'content-length': size, etag: '"other"' }).end(body);
    return true;
  };
  const slotB = await readFile(dev.slotB);
  await refused(t, dev, 'ERR_PAYLOAD_CHANGED');
  t.deepEqual(await readFile(dev.slotB), slotB, 'not even the inactive slot was written');
});

test.serial('payload bytes corrupted in transit every time are refused by their signed hashes, after the retries', async (t) => {
  const dev = await device();
  server.offer = offerV2;
  const bad = await readFile(v2.full.path);
  bad[bad.length - 100]! ^= 0xff;
  const badPath = join(dev.dir, 'bad.tpl');
  await writeFile(badPath, bad);
  let requests = 0;
  server.intercept = async (req, res) => {
    if (!req.url?.startsWith('/v1/payloads/')) return false;
    requests++;
    await serveFile(req, res, badPath, '"bad"');
    return true;
  };
  await refused(t, dev, 'ERR_BLOB_HASH');
  t.is(requests, 1 + 3, 'the first attempt and the retries the config allows');
});

test.serial('a byte damaged in transit once: the download resumes from the last checkpoint and installs', async (t) => {
  const dev = await device({ download: { retries: 3, backoffBaseSeconds: 0.05, backoffMaxSeconds: 0.1, checkpointEveryBytes: 0 } });
  server.offer = offerV2;
  const good = await readFile(v2.full.path);
  const requests: (string | undefined)[] = [];
  server.intercept = async (req, res) => {
    if (!req.url?.startsWith('/v1/payloads/')) return false;
    requests.push(req.headers.range);
    if (requests.length === 1) {
      const bad = Buffer.from(good);
      bad[bad.length - 100]! ^= 0xff; // in the last blob, after checkpoints
      res.writeHead(200, { 'content-length': bad.length, etag: '"v2"' }).end(bad);
      return true;
    }
    await serveFile(req, res, v2.full.path, '"v2"');
    return true;
  };
  t.like(await cycle(dev), { result: 'installed', version: '1.1.0' });
  t.true(await slotHolds(dev.slotB, v2.image));
  t.is(requests.length, 2);
  const resumedAt = Number(/^bytes=(\d+)-$/.exec(requests[1] ?? '')?.[1]);
  t.true(resumedAt > 0 && resumedAt < good.length - 100, `resumed from a checkpoint before the damage: ${requests[1]}`);
  const agent = await DeviceAgent.open(await dev.config());
  t.is(agent.state.failedVersions.length, 0, 'the version is not recorded as failed');
  await agent.close();
});

test.serial('an endless body (no Content-Length) is cut at the signed size', async (t) => {
  const dev = await device();
  server.offer = offerV2;
  const good = await readFile(v2.full.path);
  server.intercept = (req, res) => {
    if (!req.url?.startsWith('/v1/payloads/')) return false;
    res.writeHead(200, { etag: '"endless"' });
    res.write(good);
    const junk = Buffer.alloc(64 * 1024, 7);
    const more = () => {
      if (res.destroyed) return;
      if (res.write(junk)) setImmediate(more);
      else res.once('drain', more);
    };
    more();
    return true;
  };
  await refused(t, dev, 'ERR_DOWNLOAD_TOO_LARGE');
});

test.serial('a dripping body is a stall; retried, then refused in bounded time', async (t) => {
  const dev = await device();
  server.offer = offerV2;
  const good = await readFile(v2.full.path);
  server.intercept = (req, res) => {
    if (!req.url?.startsWith('/v1/payloads/')) return false;
    res.writeHead(200, { etag: '"drip"' });
    let at = 0;
    // The real bytes, 320 bytes/s: below the 4096 bytes/s floor the test device sets.
    const timer = setInterval(() => (res.destroyed ? clearInterval(timer) : res.write(good.subarray(at, (at += 16)))), 50);
    res.on('close', () => clearInterval(timer));
    return true;
  };
  await refused(t, dev, 'ERR_DOWNLOAD_STALLED', 15);
});

test.serial('a silent body times out (read timeout)', async (t) => {
  const dev = await device({ download: { readTimeoutSeconds: 0.5, retries: 1, backoffBaseSeconds: 0.05, backoffMaxSeconds: 0.1, checkpointEveryBytes: 0 } });
  server.offer = offerV2;
  server.intercept = (req, res) => {
    if (!req.url?.startsWith('/v1/payloads/')) return false;
    res.writeHead(200, { etag: '"silent"' });
    res.write(Buffer.alloc(10));
    return true;
  };
  await refused(t, dev, 'ERR_NETWORK', 10);
});

test.serial('a wrong Content-Range on resume is refused', async (t) => {
  const dev = await device({ download: { retries: 2, backoffBaseSeconds: 0.05, backoffMaxSeconds: 0.1, checkpointEveryBytes: 0 } });
  server.offer = offerV2;
  const good = await readFile(v2.full.path);
  server.intercept = (req, res) => {
    if (!req.url?.startsWith('/v1/payloads/')) return false;
    if (!req.headers.range) {
      // Cut the first response half-way, so the agent resumes.
      res.writeHead(200, { 'content-length': good.length, etag: '"e"' });
      res.write(good.subarray(0, good.length >> 1), () => res.destroy());
      return true;
    }
    const start = Number(/bytes=(\d+)-/.exec(req.headers.range)![1]);
    res.writeHead(206, { 'content-range': `bytes ${start - 4096}-${good.length - 1}/${good.length}`, etag: '"e"' });
    res.end(good.subarray(start - 4096));
    return true;
  };
  await refused(t, dev, 'ERR_CONTENT_RANGE');
});

test.serial('a 5xx storm is retried with backoff, then refused in bounded time', async (t) => {
  const dev = await device();
  server.offer = offerV2;
  let hits = 0;
  server.intercept = (req, res) => {
    if (!req.url?.startsWith('/v1/payloads/')) return false;
    hits++;
    res.writeHead(503).end();
    return true;
  };
  await refused(t, dev, 'ERR_HTTP_STATUS');
  t.is(hits, 4, 'one attempt and 3 retries');
});

test.serial('a 5xx storm on check is an error, and nothing is queued for a server that is down', async (t) => {
  const dev = await device();
  server.intercept = (req, res) => {
    res.writeHead(500).end();
    return true;
  };
  await refused(t, dev, 'ERR_HTTP_STATUS');
  const agent = await DeviceAgent.open(await dev.config());
  t.is(agent.state.outbox.length, 0);
  await agent.close();
});

test.serial('a cut connection and a few 5xx heal: the download resumes with Range and If-Range', async (t) => {
  // A checkpoint after every operation, so the cut always lands after one.
  const dev = await device({ download: { retries: 3, backoffBaseSeconds: 0.05, backoffMaxSeconds: 0.1, checkpointEveryBytes: 0 } });
  server.offer = offerV2;
  const good = await readFile(v2.full.path);
  let hits = 0;
  const requests: { range?: string; ifRange?: string }[] = [];
  server.intercept = async (req, res) => {
    if (!req.url?.startsWith('/v1/payloads/')) return false;
    hits++;
    requests.push({ ...(req.headers.range ? { range: req.headers.range } : {}), ...(req.headers['if-range'] ? { ifRange: String(req.headers['if-range']) } : {}) });
    if (hits === 1) {
      res.writeHead(200, { 'content-length': good.length, etag: '"v2"' });
      res.write(good.subarray(0, Math.floor(good.length * 0.6)), () => res.destroy());
      return true;
    }
    if (hits === 2) {
      res.writeHead(503).end();
      return true;
    }
    await serveFile(req, res, v2.full.path, '"v2"');
    return true;
  };
  t.like(await cycle(dev), { result: 'installed', version: '1.1.0' });
  t.true(await slotHolds(dev.slotB, v2.image));
  t.is(requests[0]?.range, undefined);
  t.regex(requests[2]?.range ?? '', /^bytes=[1-9]\d*-$/);
  t.is(requests[2]?.ifRange, '"v2"');
});
