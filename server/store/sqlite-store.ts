/**
 * The embedded store: one SQLite file under the data directory, in WAL mode so
 * readers never wait for the writer, with synchronous=NORMAL (a power cut may
 * lose the last transactions but never corrupts the file). better-sqlite3 is
 * synchronous; each method is one statement or one transaction, short enough
 * not to matter to the event loop.
 *
 * Check-ins are most of the traffic, so their path is kept short:
 * - locking_mode=EXCLUSIVE: this process is the file's only user, so SQLite
 *   takes its locks once instead of two fcntl calls per read and six per
 *   write, and keeps the WAL index in memory. It also makes a second server
 *   on the same data directory fail at start (ERR_CONFIG, after a 5 s wait)
 *   instead of running beside this one, which the in-memory caches rely on;
 *   other tools can open the file once the server has stopped.
 * - check records (recordCheck) are kept in memory and written together,
 *   once a second, in one transaction: a device's last-seen time, check
 *   count, version, slot and channel, and the offers made to it. An UPDATE
 *   and a commit per check-in cost more than the rest of the check-in path
 *   together. Every read of those columns or of offers flushes first, and so
 *   does every other write, so what the admin API, the stats and the halt
 *   rule see is exact; the device lookup of a check-in merges the pending
 *   record instead. What a crash of the process can lose: the last second
 *   of last-seen times and offers (devices say so again at their next poll).
 *   Failed versions a device reports are written at once (they decide what
 *   is offered next).
 * - the candidates of a check-in are cached (candidate-cache.ts).
 */
import Database from 'better-sqlite3';
import { TandemError } from '../../shared/errors.ts';
import { NO_OUTCOMES, OUTCOME_TYPES, outcomeDelta, type DeviceOutcomes, type OutcomeType } from '../rollout/should-halt.ts';
import { CandidateCache } from './candidate-cache.ts';
import { MIGRATIONS } from './migrations.ts';
import type {
  AdminToken,
  AuditEntry,
  CheckRecord,
  Device,
  DeviceFailure,
  DeviceFilter,
  EnrollmentToken,
  EventInsertResult,
  Job,
  PayloadRecord,
  Release,
  ReleaseCandidate,
  ReleaseStats,
  Rollout,
  Store,
  StoredEvent,
} from './store.ts';

type Row = Record<string, unknown>;

const str = (v: unknown): string => v as string;
const strOrNull = (v: unknown): string | null => (v === null || v === undefined ? null : (v as string));
const num = (v: unknown): number => Number(v);

function adminTokenOf(r: Row): AdminToken {
  return {
    id: str(r.id), name: str(r.name), role: str(r.role) as AdminToken['role'], tokenHash: str(r.token_hash),
    createdAt: str(r.created_at), createdBy: str(r.created_by), revokedAt: strOrNull(r.revoked_at),
  };
}

function enrollmentTokenOf(r: Row): EnrollmentToken {
  return {
    id: str(r.id), name: str(r.name), tokenHash: str(r.token_hash), product: str(r.product), channel: str(r.channel),
    board: strOrNull(r.board), maxUses: r.max_uses === null ? null : num(r.max_uses), uses: num(r.uses),
    expiresAt: strOrNull(r.expires_at), createdAt: str(r.created_at), createdBy: str(r.created_by), revokedAt: strOrNull(r.revoked_at),
  };
}

// Devices are read as arrays of these columns (better-sqlite3's raw mode), not as row objects: making an object
// of twelve named columns cost as much as the lookup itself, and the check-in path reads a device on every call.
const DEVICE_COLUMNS = 'id, product, board, channel, credential_hash, enrolled_at, enrollment_token_id, last_seen_at, version, slot, pinned_version, check_count';

function deviceOf(r: unknown[]): Device {
  const [id, product, board, channel, credentialHash, enrolledAt, enrollmentTokenId, lastSeenAt, version, slot, pinnedVersion, checkCount] = r;
  return {
    id: str(id), product: str(product), board: str(board), channel: str(channel), credentialHash: str(credentialHash),
    enrolledAt: str(enrolledAt), enrollmentTokenId: str(enrollmentTokenId), lastSeenAt: strOrNull(lastSeenAt),
    version: strOrNull(version), slot: strOrNull(slot), pinnedVersion: strOrNull(pinnedVersion), checkCount: num(checkCount),
  };
}

function releaseOf(r: Row): Release {
  return {
    id: str(r.id), product: str(r.product), channel: str(r.channel), version: str(r.version),
    steppingStone: num(r.stepping_stone) === 1, allowDowngrade: num(r.allow_downgrade) === 1,
    createdAt: str(r.created_at), createdBy: str(r.created_by), notes: strOrNull(r.notes),
  };
}

function payloadOf(r: Row): PayloadRecord {
  return {
    sha256: str(r.sha256), releaseId: str(r.release_id), board: str(r.board), kind: str(r.kind) as PayloadRecord['kind'],
    sourceVersion: strOrNull(r.source_version), size: num(r.size), preludeSize: num(r.prelude_size),
    manifest: r.manifest as Buffer, signatures: str(r.signatures), targetSha256: str(r.target_sha256), targetSize: num(r.target_size),
    createdAt: str(r.created_at),
  };
}

function rolloutOf(r: Row): Rollout {
  return {
    releaseId: str(r.release_id), basisPoints: num(r.basis_points), state: str(r.state) as Rollout['state'], salt: str(r.salt),
    failureThresholdBp: num(r.failure_threshold_bp), minAttempts: num(r.min_attempts), haltReason: strOrNull(r.halt_reason),
    updatedAt: str(r.updated_at), updatedBy: str(r.updated_by),
  };
}

function eventOf(r: Row): StoredEvent {
  return {
    deviceId: str(r.device_id), id: str(r.id), type: str(r.type), version: str(r.version), channel: str(r.channel), at: str(r.at),
    code: strOrNull(r.code), message: strOrNull(r.message), payloadKind: strOrNull(r.payload_kind),
    progressDone: r.progress_done === null ? null : num(r.progress_done), progressTotal: r.progress_total === null ? null : num(r.progress_total),
    releaseId: strOrNull(r.release_id), receivedAt: str(r.received_at),
  };
}

function jobOf(r: Row): Job {
  return {
    id: str(r.id), kind: str(r.kind), state: str(r.state) as Job['state'], releaseId: strOrNull(r.release_id),
    params: JSON.parse(str(r.params)) as Record<string, unknown>, progress: num(r.progress), message: strOrNull(r.message),
    error: strOrNull(r.error), createdAt: str(r.created_at), updatedAt: str(r.updated_at),
  };
}

/**
 * Only a rollback bars a release for a device on the server's own word: an
 * `error` is one failed attempt, and the agent decides when attempts are
 * exhausted (or the release itself is at fault) and then lists the version in
 * its check-in's `failedVersions`. Barring on any error would also defeat the
 * delta → full fallback the next check-in asks for.
 */
const BARRING_TYPES = new Set(['rolledBack']);

export class SqliteStore implements Store {
  readonly kind = 'sqlite';
  /**
   * The connection, for tests and benchmarks that seed data in bulk, before check-ins start (pending
   * check records would be written after a raw write to the same rows). A raw write to releases,
   * rollouts or payloads must be followed by `invalidateCaches()`, or check-ins keep the old answer.
   */
  readonly db: Database.Database;
  private readonly stmts = new Map<string, Database.Statement>();
  private readonly candidateCache = new CandidateCache();
  /** One transaction (a savepoint inside an open one); the wrapper is made once, since better-sqlite3 builds four closures per `transaction()`. */
  private readonly transaction: <T>(fn: () => T) => T;
  /** Check records not yet written, by device id: the latest one, and how many it stands for. */
  private readonly pendingChecks = new Map<string, { record: CheckRecord; changed: boolean; count: number }>();
  /** Offers not yet written, by release and device: the first time each was made. */
  private readonly pendingOffers = new Map<string, { deviceId: string; releaseId: string; at: string }>();
  private flushTimer: NodeJS.Timeout | undefined;

  constructor(path: string, private readonly options: { onBatchError?: (err: unknown) => void; lockTimeoutMs?: number } = {}) {
    this.db = new Database(path);
    // How long to wait for a previous server (say, one restarting) to let go of the file.
    this.db.pragma(`busy_timeout = ${options.lockTimeoutMs ?? 5000}`);
    try {
      // Before the first access, so the WAL index lives in this process's memory and the lock is taken now.
      this.db.pragma('locking_mode = EXCLUSIVE');
      this.db.pragma('journal_mode = WAL');
    } catch (err) {
      this.db.close();
      if ((err as { code?: unknown }).code !== 'SQLITE_BUSY') throw err;
      throw new TandemError('ERR_CONFIG', `The database ${path} is in use by another process (another tandem-server on this data directory?).`, { cause: err });
    }
    this.db.pragma('synchronous = NORMAL');
    this.db.pragma('foreign_keys = ON');
    this.migrate();
    const run = this.db.transaction((fn: () => unknown) => fn());
    this.transaction = <T>(fn: () => T): T => run(fn) as T;
  }

  /** Every write but a check record goes through here: its own transaction, committed before it returns, after the pending check records. */
  private atomically<T>(fn: () => T): T {
    this.flushChecks();
    return this.transaction(fn);
  }

  /** Writes the pending check records and offers in one transaction; runs each second, before any other write or read of them, and at close. */
  private flushChecks(): void {
    if (this.flushTimer !== undefined) {
      clearTimeout(this.flushTimer);
      this.flushTimer = undefined;
    }
    if (this.pendingChecks.size === 0 && this.pendingOffers.size === 0) return;
    const checks = [...this.pendingChecks.values()];
    const offers = [...this.pendingOffers.values()];
    this.pendingChecks.clear();
    this.pendingOffers.clear();
    try {
      this.transaction(() => {
        for (const { record: c, changed, count } of checks) {
          // Unchanged version, slot and channel (most check-ins) leave the devices_channel index alone.
          if (changed) {
            this.st('UPDATE devices SET version = ?, slot = ?, channel = ?, last_seen_at = ?, check_count = check_count + ? WHERE id = ?')
              .run(c.version, c.slot, c.channel, c.at, count, c.deviceId);
          } else {
            this.st('UPDATE devices SET last_seen_at = ?, check_count = check_count + ? WHERE id = ?').run(c.at, count, c.deviceId);
          }
        }
        for (const o of offers) {
          this.st('INSERT INTO offers (device_id, release_id, first_at) VALUES (?, ?, ?) ON CONFLICT DO NOTHING').run(o.deviceId, o.releaseId, o.at);
        }
      });
    } catch (err) {
      (this.options.onBatchError ?? ((e: unknown) => process.emitWarning(`check records not written: ${String(e)}`)))(err);
    }
  }

  invalidateCaches(): void {
    this.candidateCache.invalidate();
  }

  /** The schema version this file is at, after migrating. */
  schemaVersion(): number {
    return num((this.db.prepare('SELECT MAX(version) AS v FROM schema_migrations').get() as Row).v);
  }

  private migrate(): void {
    this.db.exec('CREATE TABLE IF NOT EXISTS schema_migrations (version INTEGER PRIMARY KEY, name TEXT NOT NULL, applied_at TEXT NOT NULL)');
    const current = num((this.db.prepare('SELECT COALESCE(MAX(version), 0) AS v FROM schema_migrations').get() as Row).v);
    const newest = MIGRATIONS[MIGRATIONS.length - 1]?.version ?? 0;
    if (current > newest) {
      throw new TandemError('ERR_CONFIG', `The database schema is version ${current}, newer than this server knows (${newest}); refusing to run an older server on it.`);
    }
    for (const m of MIGRATIONS) {
      if (m.version <= current) continue;
      this.db.transaction(() => {
        for (const sql of m.sql) this.db.exec(sql);
        this.db.prepare('INSERT INTO schema_migrations (version, name, applied_at) VALUES (?, ?, ?)').run(m.version, m.name, new Date().toISOString());
      })();
    }
  }

  private st(sql: string): Database.Statement {
    let s = this.stmts.get(sql);
    if (!s) {
      s = this.db.prepare(sql);
      this.stmts.set(sql, s);
    }
    return s;
  }

  /** A query of DEVICE_COLUMNS, whose rows deviceOf reads. */
  private devices(sql: string): Database.Statement {
    return this.st(sql).raw(true);
  }

  async close(): Promise<void> {
    if (!this.db.open) return;
    this.flushChecks();
    this.db.close();
  }

  // ---- Admin tokens ----------------------------------------------------------

  async createAdminToken(t: AdminToken): Promise<void> {
    this.atomically(() => {
      this.st('INSERT INTO admin_tokens (id, name, role, token_hash, created_at, created_by, revoked_at) VALUES (?, ?, ?, ?, ?, ?, ?)')
        .run(t.id, t.name, t.role, t.tokenHash, t.createdAt, t.createdBy, t.revokedAt);
    });
  }

  async findAdminTokenByHash(hash: string): Promise<AdminToken | undefined> {
    const r = this.st('SELECT * FROM admin_tokens WHERE token_hash = ?').get(hash) as Row | undefined;
    return r && adminTokenOf(r);
  }

  async listAdminTokens(): Promise<AdminToken[]> {
    return (this.st('SELECT * FROM admin_tokens ORDER BY created_at, id').all() as Row[]).map(adminTokenOf);
  }

  async revokeAdminToken(id: string, at: string): Promise<boolean> {
    return this.atomically(() => this.st('UPDATE admin_tokens SET revoked_at = ? WHERE id = ? AND revoked_at IS NULL').run(at, id).changes === 1);
  }

  // ---- Enrollment tokens -----------------------------------------------------

  async createEnrollmentToken(t: EnrollmentToken): Promise<void> {
    this.atomically(() => {
      this.st(`INSERT INTO enrollment_tokens (id, name, token_hash, product, channel, board, max_uses, uses, expires_at, created_at, created_by, revoked_at)
        VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)`)
        .run(t.id, t.name, t.tokenHash, t.product, t.channel, t.board, t.maxUses, t.uses, t.expiresAt, t.createdAt, t.createdBy, t.revokedAt);
    });
  }

  async findEnrollmentTokenByHash(hash: string): Promise<EnrollmentToken | undefined> {
    const r = this.st('SELECT * FROM enrollment_tokens WHERE token_hash = ?').get(hash) as Row | undefined;
    return r && enrollmentTokenOf(r);
  }

  async listEnrollmentTokens(): Promise<EnrollmentToken[]> {
    return (this.st('SELECT * FROM enrollment_tokens ORDER BY created_at, id').all() as Row[]).map(enrollmentTokenOf);
  }

  async revokeEnrollmentToken(id: string, at: string): Promise<boolean> {
    return this.atomically(() => this.st('UPDATE enrollment_tokens SET revoked_at = ? WHERE id = ? AND revoked_at IS NULL').run(at, id).changes === 1);
  }

  // ---- Devices ---------------------------------------------------------------

  async enrollDevice(d: Device, tokenId: string, now: string): Promise<void> {
    this.atomically(() => {
      if (this.st('SELECT 1 FROM devices WHERE id = ?').get(d.id)) {
        throw new TandemError('ERR_DEVICE_EXISTS', `Device ${d.id} is already enrolled; a release manager must remove it before it enrolls again.`, { details: { deviceId: d.id } });
      }
      const taken = this.st(`UPDATE enrollment_tokens SET uses = uses + 1 WHERE id = ? AND revoked_at IS NULL
        AND (max_uses IS NULL OR uses < max_uses) AND (expires_at IS NULL OR expires_at > ?)`).run(tokenId, now);
      if (taken.changes !== 1) throw new TandemError('ERR_ENROLLMENT_TOKEN', 'The enrollment token is revoked, expired or used up.');
      this.st(`INSERT INTO devices (id, product, board, channel, credential_hash, enrolled_at, enrollment_token_id, last_seen_at, version, slot, pinned_version, check_count)
        VALUES (?, ?, ?, ?, ?, ?, ?, NULL, NULL, NULL, NULL, 0)`).run(d.id, d.product, d.board, d.channel, d.credentialHash, d.enrolledAt, tokenId);
    });
  }

  async findDeviceByCredentialHash(hash: string): Promise<Device | undefined> {
    const r = this.devices(`SELECT ${DEVICE_COLUMNS} FROM devices WHERE credential_hash = ?`).get(hash) as unknown[] | undefined;
    if (r === undefined) return undefined;
    const device = deviceOf(r);
    // The check-in path reads the device as the pending record left it, without waiting for the write.
    const pending = this.pendingChecks.get(device.id);
    if (pending === undefined) return device;
    const c = pending.record;
    return { ...device, version: c.version, slot: c.slot, channel: c.channel, lastSeenAt: c.at, checkCount: device.checkCount + pending.count };
  }

  async getDevice(id: string): Promise<Device | undefined> {
    this.flushChecks();
    const r = this.devices(`SELECT ${DEVICE_COLUMNS} FROM devices WHERE id = ?`).get(id) as unknown[] | undefined;
    return r && deviceOf(r);
  }

  async listDevices(f: DeviceFilter): Promise<Device[]> {
    this.flushChecks();
    const where: string[] = [];
    const args: unknown[] = [];
    if (f.channel !== undefined) { where.push('channel = ?'); args.push(f.channel); }
    if (f.product !== undefined) { where.push('product = ?'); args.push(f.product); }
    if (f.version !== undefined) { where.push('version = ?'); args.push(f.version); }
    if (f.after !== undefined) { where.push('id > ?'); args.push(f.after); }
    const sql = `SELECT ${DEVICE_COLUMNS} FROM devices ${where.length ? `WHERE ${where.join(' AND ')}` : ''} ORDER BY id LIMIT ?`;
    return (this.devices(sql).all(...args, f.limit) as unknown[][]).map(deviceOf);
  }

  async deleteDevice(id: string): Promise<boolean> {
    return this.atomically(() => {
      const n = this.st('DELETE FROM devices WHERE id = ?').run(id).changes;
      this.st('DELETE FROM device_failures WHERE device_id = ?').run(id);
      return n === 1;
    });
  }

  async setPin(deviceId: string, version: string | null): Promise<boolean> {
    return this.atomically(() => this.st('UPDATE devices SET pinned_version = ? WHERE id = ?').run(version, deviceId).changes === 1);
  }

  async recordCheck(c: CheckRecord): Promise<void> {
    const prior = this.pendingChecks.get(c.deviceId);
    this.pendingChecks.set(c.deviceId, { record: c, changed: c.changed || (prior?.changed ?? false), count: (prior?.count ?? 0) + 1 });
    if (c.offeredReleaseId !== null) {
      const key = `${c.offeredReleaseId}\n${c.deviceId}`;
      if (!this.pendingOffers.has(key)) this.pendingOffers.set(key, { deviceId: c.deviceId, releaseId: c.offeredReleaseId, at: c.at });
    }
    if (c.failedVersions.length > 0) {
      this.atomically(() => {
        for (const v of c.failedVersions) {
          this.st("INSERT INTO device_failures (device_id, version, first_at, source, code) VALUES (?, ?, ?, 'check', NULL) ON CONFLICT DO NOTHING")
            .run(c.deviceId, v, c.at);
        }
      });
    }
    this.flushTimer ??= setTimeout(() => this.flushChecks(), 1000).unref();
  }

  async activeFailures(deviceId: string): Promise<string[]> {
    return (this.st('SELECT version FROM device_failures WHERE device_id = ? AND cleared_at IS NULL').all(deviceId) as Row[]).map((r) => str(r.version));
  }

  async listFailures(deviceId: string): Promise<DeviceFailure[]> {
    return (this.st('SELECT * FROM device_failures WHERE device_id = ? ORDER BY first_at, version').all(deviceId) as Row[]).map((r) => ({
      deviceId: str(r.device_id), version: str(r.version), firstAt: str(r.first_at), source: str(r.source) as DeviceFailure['source'],
      code: strOrNull(r.code), clearedAt: strOrNull(r.cleared_at), clearedBy: strOrNull(r.cleared_by),
    }));
  }

  async clearFailure(deviceId: string, version: string, at: string, by: string): Promise<boolean> {
    return this.atomically(() => this.st('UPDATE device_failures SET cleared_at = ?, cleared_by = ? WHERE device_id = ? AND version = ? AND cleared_at IS NULL')
      .run(at, by, deviceId, version).changes === 1);
  }

  async versionCounts(product: string | undefined, channel: string): Promise<{ product: string; version: string | null; devices: number }[]> {
    this.flushChecks();
    const rows = (product === undefined
      ? this.st('SELECT product, version, COUNT(*) AS n FROM devices WHERE channel = ? GROUP BY product, version ORDER BY product, version').all(channel)
      : this.st('SELECT product, version, COUNT(*) AS n FROM devices WHERE channel = ? AND product = ? GROUP BY product, version ORDER BY product, version').all(channel, product)) as Row[];
    return rows.map((r) => ({ product: str(r.product), version: strOrNull(r.version), devices: num(r.n) }));
  }

  async countDevices(): Promise<number> {
    return num((this.st('SELECT COUNT(*) AS n FROM devices').get() as Row).n);
  }

  // ---- Releases, payloads, rollouts -------------------------------------------

  async createRelease(r: Release, o: Rollout): Promise<void> {
    this.atomically(() => {
      if (this.st('SELECT 1 FROM releases WHERE product = ? AND channel = ? AND version = ?').get(r.product, r.channel, r.version)) {
        throw new TandemError('ERR_RELEASE_EXISTS', `Release ${r.product} ${r.version} already exists on channel ${r.channel}.`, {
          details: { product: r.product, channel: r.channel, version: r.version },
        });
      }
      this.st(`INSERT INTO releases (id, product, channel, version, stepping_stone, allow_downgrade, created_at, created_by, notes)
        VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)`)
        .run(r.id, r.product, r.channel, r.version, r.steppingStone ? 1 : 0, r.allowDowngrade ? 1 : 0, r.createdAt, r.createdBy, r.notes);
      this.st(`INSERT INTO rollouts (release_id, basis_points, state, salt, failure_threshold_bp, min_attempts, halt_reason, updated_at, updated_by)
        VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)`)
        .run(r.id, o.basisPoints, o.state, o.salt, o.failureThresholdBp, o.minAttempts, o.haltReason, o.updatedAt, o.updatedBy);
    });
    this.candidateCache.invalidate();
  }

  async getRelease(id: string): Promise<Release | undefined> {
    const r = this.st('SELECT * FROM releases WHERE id = ?').get(id) as Row | undefined;
    return r && releaseOf(r);
  }

  async findReleases(q: { product?: string; channel?: string; version?: string }): Promise<Release[]> {
    const where: string[] = [];
    const args: unknown[] = [];
    if (q.product !== undefined) { where.push('product = ?'); args.push(q.product); }
    if (q.channel !== undefined) { where.push('channel = ?'); args.push(q.channel); }
    if (q.version !== undefined) { where.push('version = ?'); args.push(q.version); }
    const sql = `SELECT * FROM releases ${where.length ? `WHERE ${where.join(' AND ')}` : ''} ORDER BY created_at, id`;
    return (this.st(sql).all(...args) as Row[]).map(releaseOf);
  }

  async updateRelease(id: string, patch: Partial<Pick<Release, 'steppingStone' | 'allowDowngrade' | 'notes'>>): Promise<void> {
    this.atomically(() => {
      if (patch.steppingStone !== undefined) this.st('UPDATE releases SET stepping_stone = ? WHERE id = ?').run(patch.steppingStone ? 1 : 0, id);
      if (patch.allowDowngrade !== undefined) this.st('UPDATE releases SET allow_downgrade = ? WHERE id = ?').run(patch.allowDowngrade ? 1 : 0, id);
      if (patch.notes !== undefined) this.st('UPDATE releases SET notes = ? WHERE id = ?').run(patch.notes, id);
    });
    this.candidateCache.invalidate();
  }

  async addPayload(p: PayloadRecord): Promise<void> {
    this.atomically(() => {
      this.st(`INSERT INTO payloads (sha256, release_id, board, kind, source_version, size, prelude_size, manifest, signatures, target_sha256, target_size, created_at)
        VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?) ON CONFLICT DO NOTHING`)
        .run(p.sha256, p.releaseId, p.board, p.kind, p.sourceVersion, p.size, p.preludeSize, p.manifest, p.signatures, p.targetSha256, p.targetSize, p.createdAt);
    });
    this.candidateCache.invalidate();
  }

  async listPayloads(releaseId: string): Promise<PayloadRecord[]> {
    return (this.st('SELECT * FROM payloads WHERE release_id = ? ORDER BY board, kind, source_version').all(releaseId) as Row[]).map(payloadOf);
  }

  async getPayload(sha256: string): Promise<PayloadRecord | undefined> {
    const r = this.st('SELECT * FROM payloads WHERE sha256 = ?').get(sha256) as Row | undefined;
    return r && payloadOf(r);
  }

  async candidates(product: string, channel: string, board: string): Promise<readonly ReleaseCandidate[]> {
    return this.candidateCache.get(product, channel, board, async () => this.loadCandidates(product, channel, board));
  }

  private loadCandidates(product: string, channel: string, board: string): ReleaseCandidate[] {
    const releases = this.st(`SELECT r.*, o.basis_points, o.state, o.salt, o.failure_threshold_bp, o.min_attempts, o.halt_reason, o.updated_at, o.updated_by
      FROM releases r JOIN rollouts o ON o.release_id = r.id WHERE r.product = ? AND r.channel = ?`).all(product, channel) as Row[];
    if (releases.length === 0) return [];
    const payloads = this.st(`SELECT p.* FROM payloads p JOIN releases r ON r.id = p.release_id
      WHERE r.product = ? AND r.channel = ? AND p.board = ?`).all(product, channel, board) as Row[];
    const byRelease = new Map<string, PayloadRecord[]>();
    for (const row of payloads) {
      const p = payloadOf(row);
      const list = byRelease.get(p.releaseId) ?? [];
      list.push(p);
      byRelease.set(p.releaseId, list);
    }
    return releases.map((row) => ({ release: releaseOf(row), rollout: rolloutOf({ ...row, release_id: row.id }), payloads: byRelease.get(str(row.id)) ?? [] }));
  }

  async getRollout(releaseId: string): Promise<Rollout | undefined> {
    const r = this.st('SELECT * FROM rollouts WHERE release_id = ?').get(releaseId) as Row | undefined;
    return r && rolloutOf(r);
  }

  async updateRollout(releaseId: string, patch: Partial<Omit<Rollout, 'releaseId' | 'salt'>>): Promise<Rollout> {
    const columns: Record<string, string> = {
      basisPoints: 'basis_points', state: 'state', failureThresholdBp: 'failure_threshold_bp', minAttempts: 'min_attempts',
      haltReason: 'halt_reason', updatedAt: 'updated_at', updatedBy: 'updated_by',
    };
    const sets: string[] = [];
    const args: unknown[] = [];
    for (const [key, column] of Object.entries(columns)) {
      const value = (patch as Record<string, unknown>)[key];
      if (value !== undefined) { sets.push(`${column} = ?`); args.push(value); }
    }
    if (sets.length > 0) this.atomically(() => this.st(`UPDATE rollouts SET ${sets.join(', ')} WHERE release_id = ?`).run(...args, releaseId));
    this.candidateCache.invalidate();
    const r = await this.getRollout(releaseId);
    if (!r) throw new TandemError('ERR_NOT_FOUND', `No rollout for release ${releaseId}.`);
    return r;
  }

  // ---- Events ----------------------------------------------------------------

  async insertEvents(deviceId: string, events: StoredEvent[]): Promise<EventInsertResult> {
    return this.atomically(() => {
      let accepted = 0;
      let duplicates = 0;
      const outcomes = new Set<string>();
      const inserted: StoredEvent[] = [];
      for (const e of events) {
        const existing = this.st('SELECT * FROM events WHERE device_id = ? AND id = ?').get(deviceId, e.id) as Row | undefined;
        if (existing) {
          const prior = eventOf(existing);
          // A retry carries the same report; the same id with other content is a different claim, refused whole.
          if (prior.type !== e.type || prior.version !== e.version || prior.channel !== e.channel || prior.at !== e.at || prior.code !== e.code) {
            throw new TandemError('ERR_EVENT_CONFLICT', `Event ${e.id} was already reported with different content.`, { details: { eventId: e.id } });
          }
          duplicates++;
          continue;
        }
        const isOutcome = OUTCOME_TYPES.has(e.type) && e.releaseId !== null;
        // Before the insert: the delta depends on the outcomes the device reported until now.
        if (isOutcome) this.countOutcome(e.releaseId!, deviceId, e.type as OutcomeType);
        this.st(`INSERT INTO events (device_id, id, type, version, channel, at, code, message, payload_kind, progress_done, progress_total, release_id, received_at)
          VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)`)
          .run(deviceId, e.id, e.type, e.version, e.channel, e.at, e.code, e.message, e.payloadKind, e.progressDone, e.progressTotal, e.releaseId, e.receivedAt);
        accepted++;
        inserted.push(e);
        if (BARRING_TYPES.has(e.type)) {
          this.st("INSERT INTO device_failures (device_id, version, first_at, source, code) VALUES (?, ?, ?, 'event', ?) ON CONFLICT DO NOTHING")
            .run(deviceId, e.version, e.receivedAt, e.code);
        }
        if (isOutcome) outcomes.add(e.releaseId!);
      }
      return { accepted, duplicates, outcomeReleases: [...outcomes], inserted };
    });
  }

  async releaseStats(releaseId: string): Promise<ReleaseStats> {
    this.flushChecks();
    const stats: ReleaseStats = {
      offered: num((this.st('SELECT COUNT(*) AS n FROM offers WHERE release_id = ?').get(releaseId) as Row).n),
      downloading: 0, installed: 0, rebooting: 0, committed: 0, rolledBack: 0, errors: 0, attempts: 0, failures: 0, errorsByCode: {},
    };
    const byType = this.st('SELECT type, COUNT(DISTINCT device_id) AS n FROM events WHERE release_id = ? GROUP BY type').all(releaseId) as Row[];
    for (const r of byType) {
      const n = num(r.n);
      switch (str(r.type)) {
        case 'downloading': stats.downloading = n; break;
        case 'installed': stats.installed = n; break;
        case 'rebooting': stats.rebooting = n; break;
        case 'committed': stats.committed = n; break;
        case 'rolledBack': stats.rolledBack = n; break;
        case 'error': stats.errors = n; break;
      }
    }
    Object.assign(stats, this.readOutcomeCounts(releaseId));
    const codes = this.st(`SELECT COALESCE(code, 'ERR_UNKNOWN') AS code, COUNT(DISTINCT device_id) AS n FROM events
      WHERE release_id = ? AND type IN ('rolledBack', 'error') GROUP BY COALESCE(code, 'ERR_UNKNOWN')`).all(releaseId) as Row[];
    for (const r of codes) stats.errorsByCode[str(r.code)] = num(r.n);
    return stats;
  }

  async outcomeCounts(releaseId: string): Promise<Pick<ReleaseStats, 'attempts' | 'failures'>> {
    // Outcomes are events, written at once (insertEvents): no pending check record bears on them.
    return this.readOutcomeCounts(releaseId);
  }

  private readOutcomeCounts(releaseId: string): Pick<ReleaseStats, 'attempts' | 'failures'> {
    const r = this.st('SELECT attempts, failures FROM release_outcomes WHERE release_id = ?').get(releaseId) as Row | undefined;
    return r === undefined ? { attempts: 0, failures: 0 } : { attempts: num(r.attempts), failures: num(r.failures) };
  }

  /**
   * Adds one outcome event, not yet inserted, to its release's counts (migration 2 backfilled them from the
   * events before it). What the device reported before comes from its own events of the release: at most
   * three index lookups (events_release), however many events the release has. Read then written in the
   * caller's transaction, which SQLite runs alone; a store on a shared database must keep two transactions
   * of one device from reading the same "before".
   */
  private countOutcome(releaseId: string, deviceId: string, type: OutcomeType): void {
    const before: DeviceOutcomes = { ...NO_OUTCOMES };
    const reported = this.st(`SELECT DISTINCT type FROM events WHERE release_id = ? AND device_id = ? AND type IN ('committed', 'rolledBack', 'error')`)
      .all(releaseId, deviceId) as Row[];
    for (const r of reported) before[str(r.type) as OutcomeType] = true;
    const delta = outcomeDelta(before, type);
    if (delta.attempts === 0 && delta.failures === 0) return;
    this.st(`INSERT INTO release_outcomes (release_id, attempts, failures) VALUES (?, ?, ?) ON CONFLICT (release_id)
      DO UPDATE SET attempts = release_outcomes.attempts + excluded.attempts, failures = release_outcomes.failures + excluded.failures`)
      .run(releaseId, delta.attempts, delta.failures);
  }

  async deviceEvents(deviceId: string, limit: number): Promise<StoredEvent[]> {
    return (this.st('SELECT * FROM events WHERE device_id = ? ORDER BY received_at DESC, at DESC LIMIT ?').all(deviceId, limit) as Row[]).map(eventOf);
  }

  // ---- Audit and jobs ---------------------------------------------------------

  async audit(e: AuditEntry): Promise<void> {
    this.atomically(() => {
      this.st('INSERT INTO audit_log (at, actor, action, target, details) VALUES (?, ?, ?, ?, ?)').run(e.at, e.actor, e.action, e.target, JSON.stringify(e.details));
    });
  }

  async listAudit(limit: number): Promise<AuditEntry[]> {
    return (this.st('SELECT * FROM audit_log ORDER BY id DESC LIMIT ?').all(limit) as Row[]).map((r) => ({
      id: num(r.id), at: str(r.at), actor: str(r.actor), action: str(r.action), target: str(r.target),
      details: JSON.parse(str(r.details)) as Record<string, unknown>,
    }));
  }

  async createJob(j: Job): Promise<void> {
    this.atomically(() => {
      this.st(`INSERT INTO jobs (id, kind, state, release_id, params, progress, message, error, created_at, updated_at)
        VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)`)
        .run(j.id, j.kind, j.state, j.releaseId, JSON.stringify(j.params), j.progress, j.message, j.error, j.createdAt, j.updatedAt);
    });
  }

  async updateJob(id: string, patch: Partial<Pick<Job, 'state' | 'progress' | 'message' | 'error' | 'updatedAt'>>): Promise<void> {
    const sets: string[] = [];
    const args: unknown[] = [];
    for (const key of ['state', 'progress', 'message', 'error'] as const) {
      if (patch[key] !== undefined) { sets.push(`${key} = ?`); args.push(patch[key]); }
    }
    sets.push('updated_at = ?');
    args.push(patch.updatedAt ?? new Date().toISOString());
    this.atomically(() => this.st(`UPDATE jobs SET ${sets.join(', ')} WHERE id = ?`).run(...args, id));
  }

  async getJob(id: string): Promise<Job | undefined> {
    const r = this.st('SELECT * FROM jobs WHERE id = ?').get(id) as Row | undefined;
    return r && jobOf(r);
  }

  async listJobs(limit: number): Promise<Job[]> {
    return (this.st('SELECT * FROM jobs ORDER BY created_at DESC, id LIMIT ?').all(limit) as Row[]).map(jobOf);
  }
}
