/** Staged rollouts against the real server: membership statistics, auto-halt, exclusion, pinning, stepping stones, downgrades, deltas. */
import anyTest, { type TestFn } from 'ava';
import { join } from 'node:path';
import { inRollout } from '../../shared/rollout-bucket.ts';
import { checkDevice } from '../../server/routes/device-api.ts';
import type { SqliteStore } from '../../server/store/sqlite-store.ts';
import { makeImage, nonce, post, removeDir, startTestServer, TestDevice, type TestServer } from './helpers.ts';

const test = anyTest.serial as TestFn<{ ts: TestServer; token: string; betaToken: string }>;

async function publish(ts: TestServer, channel: string, version: string, seed: string, extra: { steppingStone?: boolean; allowDowngrade?: boolean } = {}) {
  const path = join(ts.dir, `${channel}-${version}.img`);
  await makeImage(path, { mib: 2, seed, changed: 64 });
  return ts.admin.publishImage(path, { channel, version, board: 'rpi4', product: 'acme', ...extra });
}

test.before(async (t) => {
  const ts = await startTestServer({ deltaSources: 1 });
  await publish(ts, 'stable', '1.0.0', 'a');
  await publish(ts, 'stable', '1.1.0', 'b');
  const { token } = await ts.admin.createEnrollmentToken({ product: 'acme', channel: 'stable' });
  const { token: betaToken } = await ts.admin.createEnrollmentToken({ product: 'acme', channel: 'beta' });
  t.context = { ts, token, betaToken };
});

test.after.always(async (t) => {
  if (!t.context.ts) return;
  await t.context.ts.stop();
  await removeDir(t.context.ts.dir);
});

test('rollout membership for 10,000 devices: 10 % ± 0.6 %, monotonic when raised, independent across rollouts', async (t) => {
  const { ts, token } = t.context;
  const sc = ts.server.context;
  // 10,000 devices straight into the store (enrollment over HTTP is tested elsewhere), checked in through the
  // server's own check-in path; a sample also goes over HTTP and must get the same answers.
  const now = new Date().toISOString();
  const devices = Array.from({ length: 10_000 }, (_, i) => ({
    id: `fleet-${i}`, product: 'acme', board: 'rpi4', channel: 'stable', credentialHash: `hash-${i}`, enrolledAt: now,
    enrollmentTokenId: 'bulk', lastSeenAt: null, version: null, slot: null, pinnedVersion: null, checkCount: 0,
  }));
  const bulk = (sc.store as SqliteStore).db;
  bulk.prepare("INSERT INTO enrollment_tokens (id, name, token_hash, product, channel, created_at, created_by) VALUES ('bulk', 'bulk', 'bulk', 'acme', 'stable', ?, 'test')").run(now);
  // One transaction around them all: each enrollment is then a savepoint, not a commit of its own.
  await Promise.all(bulk.transaction(() => devices.map((d) => sc.store.enrollDevice(d, 'bulk', now)))());
  // 32 check-ins at a time, as a fleet sends them: each waits for its signature from the thread pool.
  const offered = async (): Promise<Set<string>> => {
    const ids = new Set<string>();
    let next = 0;
    await Promise.all(Array.from({ length: 32 }, async () => {
      for (let d = devices[next++]; d !== undefined; d = devices[next++]) {
        const res = await checkDevice(sc, d, { deviceId: d.id, product: 'acme', board: 'rpi4', channel: 'stable', version: '1.0.0', slot: 'A', failedVersions: [], nonce: nonce() });
        if (res.body.result === 'update') ids.add(d.id);
      }
    }));
    return ids;
  };
  // The salt is random per rollout, so the server's answers are checked against the bucketing exactly, and the
  // share only loosely (± 5 σ; uniformity itself is tested with fixed salts in test/shared).
  const salt = async (): Promise<string> => (await sc.store.getRollout((await ts.admin.rollout('stable', '1.1.0')).id))!.salt;
  const expected = (s: string, bp: number): Set<string> => new Set(devices.filter((d) => inRollout(d.id, s, bp)).map((d) => d.id));
  await ts.admin.setRollout('stable', '1.1.0', { percentage: '10%' });
  const at10 = await offered();
  t.deepEqual([...at10].sort(), [...expected(await salt(), 1000)].sort());
  t.true(Math.abs(at10.size - 1000) <= 150, `${at10.size} of 10,000 at 10 %`);
  const sample = Array.from({ length: 200 }, (_, i) => new TestDevice(ts.server.url, `sample-${i}`));
  for (const d of sample) await d.enroll(token);
  const sampleSalt = await salt();
  for (const d of sample) {
    const res = await d.check('1.0.0');
    t.is(res.body.result === 'update', inRollout(d.id, sampleSalt, 1000), d.id);
  }
  await ts.admin.setRollout('stable', '1.1.0', { percentage: '25%' });
  const at25 = await offered();
  t.deepEqual([...at25].sort(), [...expected(await salt(), 2500)].sort());
  t.true(Math.abs(at25.size - 2500) <= 220, `${at25.size} at 25 %`);
  for (const id of at10) t.true(at25.has(id), `raising the percentage dropped ${id}`);
  // Another rollout's 10 % is another set of devices: the overlap is ~1 %, not 10 %.
  const [r1, r0] = [await ts.admin.rollout('stable', '1.1.0'), await ts.admin.rollout('stable', '1.0.0')];
  const salts = await Promise.all([r1.id, r0.id].map(async (id) => (await sc.store.getRollout(id))!.salt));
  t.not(salts[0], salts[1]);
  const both = devices.filter((d) => inRollout(d.id, salts[1]!, 1000) && at10.has(d.id)).length;
  t.true(both > 50 && both < 160, `overlap ${both}`); // expected 100, σ ≈ 9.5
  const status = await ts.admin.rollout('stable', '1.1.0');
  t.is(status.stats.offered, at25.size + sample.filter((d) => inRollout(d.id, sampleSalt, 1000)).length);
  await ts.admin.setRollout('stable', '1.1.0', { basisPoints: 0 });
});

test('deltas are generated in a background job and offered when smaller; full when deltas failed', async (t) => {
  const { ts, token } = t.context;
  const jobs = await ts.admin.jobs();
  const job = jobs.find((j) => j.kind === 'deltas');
  t.truthy(job);
  const done = await ts.admin.waitForJob(job!.id);
  t.is(done.state, 'done', done.error ?? '');
  const release = await ts.admin.rollout('stable', '1.1.0');
  const delta = release.payloads.find((p) => p.kind === 'delta');
  t.is(delta?.sourceVersion, '1.0.0');
  await ts.admin.setRollout('stable', '1.1.0', { percentage: '100%' });
  const d = new TestDevice(ts.server.url, 'delta-1');
  await d.enroll(token);
  const res = await d.check('1.0.0');
  t.is(res.body.update?.payload.kind, 'delta');
  t.is(res.body.update?.payload.sourceVersion, '1.0.0');
  const full = await d.check('1.0.0', { deltaFailed: true });
  t.is(full.body.update?.payload.kind, 'full');
  const fromOld = await d.check('0.5.0');
  t.is(fromOld.body.update?.payload.kind, 'full');
  t.is((await ts.admin.rollout('stable', '1.1.0')).rollout.state, 'complete');
});

test('a failed release is not offered again until cleared', async (t) => {
  const { ts, token } = t.context;
  const d = new TestDevice(ts.server.url, 'failer-1');
  await d.enroll(token);
  t.is((await d.check('1.0.0')).body.update?.version, '1.1.0');
  // One failed attempt is not a verdict: the device retries, here with the full payload.
  const ev = await d.events([{ type: 'error', version: '1.1.0', code: 'ERR_TARGET_HASH', payloadKind: 'delta' }]);
  t.is(ev.status, 200);
  t.is((await d.check('1.0.0', { deltaFailed: true })).body.update?.payload.kind, 'full');
  // A rollback is.
  await d.events([{ type: 'rolledBack', version: '1.1.0', code: 'ERR_HEALTH_CHECK' }]);
  t.is((await d.check('1.0.0')).body.result, 'noUpdate');
  // A failure the device reports itself counts too.
  const d2 = new TestDevice(ts.server.url, 'failer-2');
  await d2.enroll(token);
  t.is((await d2.check('1.0.0', { failedVersions: ['1.1.0'] })).body.result, 'noUpdate');
  t.is((await d2.check('1.0.0')).body.result, 'noUpdate');
  await ts.admin.clearFailure('failer-1', '1.1.0');
  t.is((await d.check('1.0.0')).body.update?.version, '1.1.0');
  const detail = await ts.admin.device('failer-1');
  t.is(detail.failures[0]?.version, '1.1.0');
  t.truthy(detail.failures[0]?.clearedAt);
  t.deepEqual(detail.events.map((e) => e.code), ['ERR_HEALTH_CHECK', 'ERR_TARGET_HASH']);
});

test('pinning offers the pinned version, whatever the rollout', async (t) => {
  const { ts, token } = t.context;
  const d = new TestDevice(ts.server.url, 'pinned-1');
  await d.enroll(token);
  await ts.admin.pin('pinned-1', '1.0.0');
  t.is((await d.check('0.9.0')).body.update?.version, '1.0.0');
  t.is((await d.check('1.0.0')).body.result, 'noUpdate');
  // Pinned below the running version: refused unless the release allows downgrade.
  t.is((await d.check('1.1.0')).body.result, 'noUpdate');
  await ts.admin.pin('pinned-1', null);
  t.is((await d.check('1.0.0')).body.update?.version, '1.1.0');
});

test('stepping stones, and downgrades only to an allowed rollback target', async (t) => {
  const { ts, betaToken } = t.context;
  await publish(ts, 'beta', '2.0.0', 'c');
  await publish(ts, 'beta', '2.1.0', 'd', { steppingStone: true });
  await publish(ts, 'beta', '2.2.0', 'e');
  for (const v of ['2.0.0', '2.1.0', '2.2.0']) await ts.admin.setRollout('beta', v, { percentage: '100%' });
  const d = new TestDevice(ts.server.url, 'stone-1', 'acme', 'rpi4', 'beta');
  await d.enroll(betaToken);
  t.is((await d.check('1.9.0')).body.update?.version, '2.1.0');
  t.is((await d.check('2.1.0')).body.update?.version, '2.2.0');
  t.is((await d.check('2.2.0')).body.result, 'noUpdate');

  // 2.2.0 goes bad: halt it; devices on it are not sent back unless 2.1.0 is marked as a rollback target.
  await ts.admin.setRollout('beta', '2.2.0', { action: 'halt', reason: 'boot loop' });
  const halted = await d.check('2.2.0');
  t.is(halted.body.result, 'noUpdate');
  const r21 = await ts.admin.rollout('beta', '2.1.0');
  await ts.admin.patchRelease(r21.id, { allowDowngrade: true });
  const back = await d.check('2.2.0');
  t.is(back.body.update?.version, '2.1.0');
  t.true(back.body.update?.allowDowngrade);
  const r22 = await ts.admin.rollout('beta', '2.2.0');
  t.regex(r22.rollout.haltReason ?? '', /boot loop/);
  t.is((await d.check('2.1.0')).body.result, 'noUpdate');
});

test('auto-halt when failures exceed the threshold over the minimum attempts', async (t) => {
  const { ts, token } = t.context;
  await publish(ts, 'stable', '1.2.0', 'f');
  await ts.admin.setRollout('stable', '1.2.0', { percentage: '100%', failureThresholdBp: 2000, minAttempts: 5 });
  const devices = await Promise.all(Array.from({ length: 6 }, async (_, i) => {
    const d = new TestDevice(ts.server.url, `halt-${i}`);
    await d.enroll(token);
    return d;
  }));
  // Two failures among the first attempts: below the minimum, no halt.
  await devices[0]!.events([{ type: 'error', version: '1.2.0', code: 'ERR_IO' }]);
  await devices[1]!.events([{ type: 'rolledBack', version: '1.2.0', code: 'ERR_HEALTH_CHECK' }]);
  t.is((await ts.admin.rollout('stable', '1.2.0')).rollout.state, 'complete');
  await devices[2]!.events([{ type: 'committed', version: '1.2.0' }]);
  await devices[3]!.events([{ type: 'committed', version: '1.2.0' }]);
  t.is((await ts.admin.rollout('stable', '1.2.0')).rollout.state, 'complete');
  // The fifth outcome reaches the minimum with 2 of 5 failed (40 % > 20 %).
  await devices[4]!.events([{ type: 'committed', version: '1.2.0' }]);
  const r = await ts.admin.rollout('stable', '1.2.0');
  t.is(r.rollout.state, 'halted');
  t.regex(r.rollout.haltReason ?? '', /auto-halted: 2 of 5/);
  t.is(r.stats.errorsByCode.ERR_IO, 1);
  t.is(r.stats.errorsByCode.ERR_HEALTH_CHECK, 1);
  t.is((await devices[5]!.check('1.1.0')).body.result, 'noUpdate');
  const audit = await ts.admin.audit(20);
  t.true(audit.some((a) => a.action === 'rollout.auto-halt' && a.actor === 'system'));
});

test('an attempt that failed and then committed is not counted as a failure', async (t) => {
  const { ts, token } = t.context;
  await publish(ts, 'stable', '1.3.0', 'g');
  await ts.admin.setRollout('stable', '1.3.0', { percentage: '100%' });
  const d = new TestDevice(ts.server.url, 'retry-1');
  await d.enroll(token);
  const other = new TestDevice(ts.server.url, 'retry-2');
  await other.enroll(token);
  await d.events([{ type: 'error', version: '1.3.0', code: 'ERR_TARGET_HASH', payloadKind: 'delta' }]);
  await other.events([{ type: 'error', version: '1.3.0', code: 'ERR_IO' }]);
  t.is((await ts.admin.rollout('stable', '1.3.0')).stats.failures, 2);
  await d.events([{ type: 'committed', version: '1.3.0' }]);
  const { stats } = await ts.admin.rollout('stable', '1.3.0');
  t.is(stats.failures, 1);
  t.is(stats.attempts, 2);
  t.is(stats.committed, 1);
});

test('events are idempotent per id; the same id with other content is refused', async (t) => {
  const { ts, token } = t.context;
  const d = new TestDevice(ts.server.url, 'events-1');
  await d.enroll(token);
  const event = { id: 'evt-000000001', type: 'installed', version: '1.1.0', channel: 'stable', at: '2025-01-01T00:00:00Z' };
  const installedCount = async (): Promise<number> => {
    const text = await (await fetch(`${ts.server.url}/metrics`)).text();
    return Number(/^tandem_events_total\{type="installed"\} (\d+)$/m.exec(text)?.[1] ?? 0);
  };
  const before = await installedCount();
  const first = await post(ts.server.url, '/v1/events', { deviceId: d.id, events: [event] }, d.credential);
  t.deepEqual(first.body, { accepted: 1, duplicates: 0 });
  const retry = await post(ts.server.url, '/v1/events', { deviceId: d.id, events: [event] }, d.credential);
  t.deepEqual(retry.body, { accepted: 0, duplicates: 1 });
  t.is(await installedCount(), before + 1, 'a retried event is counted once in /metrics too');
  const forged = await post(ts.server.url, '/v1/events', { deviceId: d.id, events: [{ ...event, type: 'committed' }] }, d.credential);
  t.is(forged.status, 409);
  t.is(forged.body.error.code, 'ERR_EVENT_CONFLICT');
  const history = await ts.admin.device(d.id);
  t.is(history.events.length, 1);
});
