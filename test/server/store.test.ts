/**
 * What the SQLite store does for the check-in path's speed, and must not
 * change in behaviour: cached candidates that follow every write, check
 * records committed once per event-loop turn but visible at once and never
 * left behind another write or a close, one process per database, and the
 * halt rule's running outcome counts, equal to a recount from the events.
 */
import anyTest, { type TestFn } from 'ava';
import Database from 'better-sqlite3';
import { mkdtemp } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { isTandemError } from '../../shared/errors.ts';
import { SqliteStore } from '../../server/store/sqlite-store.ts';
import type { Device, PayloadRecord, Release, Rollout, StoredEvent } from '../../server/store/store.ts';
import { removeDir } from './helpers.ts';

const test = anyTest as TestFn<{ dir: string }>;
const now = '2026-01-01T00:00:00.000Z';

test.beforeEach(async (t) => {
  t.context = { dir: await mkdtemp(join(tmpdir(), 'tandem-store-')) };
});
test.afterEach.always(async (t) => {
  await removeDir(t.context.dir);
});

async function seeded(path: string): Promise<{ store: SqliteStore; device: Device }> {
  const store = new SqliteStore(path);
  await store.createEnrollmentToken({ id: 'tok', name: 't', tokenHash: 'h', product: 'acme', channel: 'stable', board: null, maxUses: null, uses: 0, expiresAt: null, createdAt: now, createdBy: 'test', revokedAt: null });
  const device: Device = {
    id: 'dev-1', product: 'acme', board: 'rpi4', channel: 'stable', credentialHash: 'c'.repeat(64), enrolledAt: now, enrollmentTokenId: 'tok',
    lastSeenAt: null, version: null, slot: null, pinnedVersion: null, checkCount: 0,
  };
  await store.enrollDevice(device, 'tok', now);
  return { store, device };
}

function release(version: string): { release: Release; rollout: Rollout; payload: PayloadRecord } {
  const id = `rel-${version}`;
  return {
    release: { id, product: 'acme', channel: 'stable', version, steppingStone: false, allowDowngrade: false, createdAt: now, createdBy: 'test', notes: null },
    rollout: { releaseId: id, basisPoints: 0, state: 'active', salt: `salt-${version}`, failureThresholdBp: 500, minAttempts: 20, haltReason: null, updatedAt: now, updatedBy: 'test' },
    payload: {
      sha256: version.replace(/\./g, '').padEnd(64, '0'), releaseId: id, board: 'rpi4', kind: 'full', sourceVersion: null, size: 10, preludeSize: 5,
      manifest: Buffer.from('m'), signatures: '[]', targetSha256: 'f'.repeat(64), targetSize: 10, createdAt: now,
    },
  };
}

test('candidates are cached, frozen, and follow every write to releases, rollouts and payloads', async (t) => {
  const { store } = await seeded(join(t.context.dir, 'db'));
  t.teardown(() => store.close());
  t.deepEqual(await store.candidates('acme', 'stable', 'rpi4'), []);
  const r1 = release('1.0.0');
  await store.createRelease(r1.release, r1.rollout);
  const first = await store.candidates('acme', 'stable', 'rpi4');
  t.is(first.length, 1);
  t.deepEqual(first[0]!.payloads, []);
  t.is(await store.candidates('acme', 'stable', 'rpi4'), first, 'served from the cache');
  t.true(Object.isFrozen(first) && Object.isFrozen(first[0]!.rollout));

  await store.addPayload(r1.payload);
  t.is((await store.candidates('acme', 'stable', 'rpi4'))[0]!.payloads.length, 1);
  await store.updateRollout(r1.release.id, { basisPoints: 1000 });
  t.is((await store.candidates('acme', 'stable', 'rpi4'))[0]!.rollout.basisPoints, 1000);
  await store.updateRelease(r1.release.id, { steppingStone: true });
  t.true((await store.candidates('acme', 'stable', 'rpi4'))[0]!.release.steppingStone);
  const r2 = release('1.1.0');
  await store.createRelease(r2.release, r2.rollout);
  t.is((await store.candidates('acme', 'stable', 'rpi4')).length, 2);
  t.deepEqual(await store.candidates('acme', 'beta', 'rpi4'), []);
});

test('check records wait in memory, merged per device, written each second, before any other write or read of them, and at close', async (t) => {
  const path = join(t.context.dir, 'db');
  const { store, device } = await seeded(path);
  const r1 = release('1.0.0');
  await store.createRelease(r1.release, r1.rollout);
  const check = (at: string, failedVersions: string[] = []) =>
    store.recordCheck({ deviceId: device.id, version: '0.9.0', slot: 'B', channel: 'stable', at, changed: true, offeredReleaseId: r1.release.id, failedVersions });
  const raw = () => store.db.prepare('SELECT last_seen_at AS at, check_count AS n, version FROM devices WHERE id = ?').get(device.id) as { at: string | null; n: number; version: string | null };

  await check('2026-01-01T00:00:01.000Z', ['0.8.0']);
  t.deepEqual(await store.activeFailures(device.id), ['0.8.0'], 'a failed version is written at once');
  await check('2026-01-01T00:00:02.000Z');
  t.is(raw().n, 1, 'the second is not written yet (the failure write took the first along)');
  t.like(await store.findDeviceByCredentialHash(device.credentialHash), { version: '0.9.0', slot: 'B', lastSeenAt: '2026-01-01T00:00:02.000Z', checkCount: 2 }, 'the check-in path sees the pending record');
  t.like(await store.getDevice(device.id), { lastSeenAt: '2026-01-01T00:00:02.000Z', checkCount: 2, version: '0.9.0' }, 'a read of the device flushes first');
  t.deepEqual(raw(), { at: '2026-01-01T00:00:02.000Z', n: 2, version: '0.9.0' });

  await check('2026-01-01T00:00:03.000Z');
  t.is((await store.releaseStats(r1.release.id)).offered, 1, 'stats flush first, and an offer counts once');
  await check('2026-01-01T00:00:04.000Z');
  await store.audit({ at: now, actor: 'test', action: 'x', target: 'y', details: {} });
  t.is(raw().n, 4, 'another write writes the pending records first');

  await check('2026-01-01T00:00:05.000Z');
  await new Promise((r) => setTimeout(r, 1100));
  t.is(raw().at, '2026-01-01T00:00:05.000Z', 'written within a second');

  await check('2026-01-01T00:00:06.000Z');
  await store.close();
  const reopened = new SqliteStore(path);
  t.teardown(() => reopened.close());
  const seen = await reopened.getDevice(device.id);
  t.is(seen?.lastSeenAt, '2026-01-01T00:00:06.000Z', 'close writes them');
  t.is(seen?.checkCount, 6);
  t.is((await reopened.listAudit(10)).length, 1);
});

test('a second store on the same file is refused while the first is open', async (t) => {
  const path = join(t.context.dir, 'db');
  const { store } = await seeded(path);
  const err = t.throws(() => new SqliteStore(path, { lockTimeoutMs: 50 }));
  t.true(isTandemError(err, 'ERR_CONFIG'), String(err));
  t.regex(err!.message, /in use by another process/);
  await store.close();
  const after = new SqliteStore(path, { lockTimeoutMs: 50 });
  t.is(await after.countDevices(), 1);
  await after.close();
});

/** The halt rule's counts recomputed from the raw events, independently of the store: per device, then per release. */
function recount(store: SqliteStore): Map<string, { attempts: number; failures: number }> {
  const rows = store.db.prepare('SELECT release_id AS releaseId, device_id AS deviceId, type FROM events WHERE release_id IS NOT NULL').all() as { releaseId: string; deviceId: string; type: string }[];
  const perDevice = new Map<string, { releaseId: string; types: Set<string> }>();
  for (const r of rows) {
    const key = `${r.releaseId}\n${r.deviceId}`;
    const entry = perDevice.get(key) ?? { releaseId: r.releaseId, types: new Set<string>() };
    entry.types.add(r.type);
    perDevice.set(key, entry);
  }
  const counts = new Map<string, { attempts: number; failures: number }>();
  for (const { releaseId, types } of perDevice.values()) {
    if (!types.has('committed') && !types.has('rolledBack') && !types.has('error')) continue;
    const c = counts.get(releaseId) ?? { attempts: 0, failures: 0 };
    c.attempts++;
    // A rollback is a failure; an error is one unless the device also committed the release.
    if (types.has('rolledBack') || (types.has('error') && !types.has('committed'))) c.failures++;
    counts.set(releaseId, c);
  }
  return counts;
}

test('outcome counts follow every event insert, equal a recount from the events, survive a restart, and are backfilled by the migration', async (t) => {
  const path = join(t.context.dir, 'db');
  let { store } = await seeded(path);
  const releases = ['1.0.0', '1.1.0', '1.2.0'].map(release);
  for (const r of releases) await store.createRelease(r.release, r.rollout);
  const releaseIds = releases.map((r) => r.release.id);
  // Deterministic pseudo-random sequence (mulberry32), so a failure reproduces.
  let seed = 0x7a4d3;
  const random = (): number => {
    seed = (seed + 0x6d2b79f5) | 0;
    let x = Math.imul(seed ^ (seed >>> 15), 1 | seed);
    x = (x + Math.imul(x ^ (x >>> 7), 61 | x)) ^ x;
    return ((x ^ (x >>> 14)) >>> 0) / 2 ** 32;
  };
  const pick = <T>(list: readonly T[]): T => list[Math.floor(random() * list.length)]!;
  const types = ['downloading', 'installed', 'rebooting', 'committed', 'rolledBack', 'error', 'error', 'committed'] as const;
  const sent: StoredEvent[] = [];
  const expectRecount = async (s: SqliteStore, why: string): Promise<void> => {
    const expected = recount(s);
    for (const id of [...releaseIds, 'rel-unknown']) {
      const want = expected.get(id) ?? { attempts: 0, failures: 0 };
      t.deepEqual(await s.outcomeCounts(id), want, `${why}: ${id}`);
      t.like(await s.releaseStats(id), want, `${why}: stats of ${id}`);
    }
  };

  for (let batch = 0; batch < 150; batch++) {
    const deviceId = `dev-${Math.floor(random() * 25)}`;
    const events: StoredEvent[] = [];
    for (let i = 1 + Math.floor(random() * 4); i > 0; i--) {
      // Now and then a retry of an event already stored (acknowledged, not counted again), or one of no known release.
      const retry = sent.length > 0 && random() < 0.1 ? pick(sent) : undefined;
      if (retry && retry.deviceId === deviceId && !events.some((e) => e.id === retry.id)) {
        events.push(retry);
        continue;
      }
      const releaseId = random() < 0.05 ? null : pick(releaseIds);
      events.push({
        deviceId, id: `e-${batch}-${i}`, type: pick(types), version: '1.0.0', channel: 'stable', at: now, code: null, message: null,
        payloadKind: null, progressDone: null, progressTotal: null, releaseId, receivedAt: now,
      });
    }
    await store.insertEvents(deviceId, events);
    sent.push(...events);
    if (batch % 10 === 9) await expectRecount(store, `after batch ${batch}`);
  }
  const final = recount(store);
  t.true([...final.values()].some((c) => c.failures > 0 && c.failures < c.attempts), 'the sequence mixes successes and failures');
  t.true(sent.some((e) => e.type === 'error') && sent.some((e) => e.type === 'committed'));

  await store.close();
  store = new SqliteStore(path);
  await expectRecount(store, 'after a restart');

  // A database from before the counts existed (schema 1): the migration backfills them from the events.
  await store.close();
  const raw = new Database(path);
  raw.exec('DROP TABLE release_outcomes; DELETE FROM schema_migrations WHERE version = 2');
  raw.close();
  store = new SqliteStore(path);
  t.teardown(() => store.close());
  t.is(store.schemaVersion(), 2);
  await expectRecount(store, 'after the migration');
});
