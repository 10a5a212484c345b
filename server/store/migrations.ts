/**
 * Versioned schema migrations, applied in order inside one transaction each.
 * Portable SQL only (TEXT, INTEGER, BIGINT, ON CONFLICT): PostgreSQL runs the same
 * statements, with BLOB read as BYTEA by its store.
 */
export interface Migration {
  version: number;
  name: string;
  sql: string[];
}

export const MIGRATIONS: readonly Migration[] = [
  {
    version: 1,
    name: 'initial',
    sql: [
      `CREATE TABLE admin_tokens (
        id TEXT PRIMARY KEY, name TEXT NOT NULL, role TEXT NOT NULL, token_hash TEXT NOT NULL UNIQUE,
        created_at TEXT NOT NULL, created_by TEXT NOT NULL, revoked_at TEXT)`,
      `CREATE TABLE enrollment_tokens (
        id TEXT PRIMARY KEY, name TEXT NOT NULL, token_hash TEXT NOT NULL UNIQUE, product TEXT NOT NULL, channel TEXT NOT NULL,
        board TEXT, max_uses INTEGER, uses INTEGER NOT NULL DEFAULT 0, expires_at TEXT,
        created_at TEXT NOT NULL, created_by TEXT NOT NULL, revoked_at TEXT)`,
      `CREATE TABLE devices (
        id TEXT PRIMARY KEY, product TEXT NOT NULL, board TEXT NOT NULL, channel TEXT NOT NULL,
        credential_hash TEXT NOT NULL UNIQUE, enrolled_at TEXT NOT NULL, enrollment_token_id TEXT NOT NULL,
        last_seen_at TEXT, version TEXT, slot TEXT, pinned_version TEXT, check_count BIGINT NOT NULL DEFAULT 0)`,
      `CREATE INDEX devices_channel ON devices (channel, product, version)`,
      `CREATE TABLE device_failures (
        device_id TEXT NOT NULL, version TEXT NOT NULL, first_at TEXT NOT NULL, source TEXT NOT NULL, code TEXT,
        cleared_at TEXT, cleared_by TEXT, PRIMARY KEY (device_id, version))`,
      `CREATE TABLE releases (
        id TEXT PRIMARY KEY, product TEXT NOT NULL, channel TEXT NOT NULL, version TEXT NOT NULL,
        stepping_stone INTEGER NOT NULL DEFAULT 0, allow_downgrade INTEGER NOT NULL DEFAULT 0,
        created_at TEXT NOT NULL, created_by TEXT NOT NULL, notes TEXT, UNIQUE (product, channel, version))`,
      `CREATE TABLE payloads (
        sha256 TEXT PRIMARY KEY, release_id TEXT NOT NULL REFERENCES releases (id), board TEXT NOT NULL, kind TEXT NOT NULL,
        source_version TEXT, size BIGINT NOT NULL, prelude_size BIGINT NOT NULL, manifest BLOB NOT NULL, signatures TEXT NOT NULL,
        target_sha256 TEXT NOT NULL, target_size BIGINT NOT NULL, created_at TEXT NOT NULL)`,
      `CREATE INDEX payloads_release ON payloads (release_id, board)`,
      `CREATE TABLE rollouts (
        release_id TEXT PRIMARY KEY REFERENCES releases (id), basis_points INTEGER NOT NULL, state TEXT NOT NULL, salt TEXT NOT NULL,
        failure_threshold_bp INTEGER NOT NULL, min_attempts INTEGER NOT NULL, halt_reason TEXT,
        updated_at TEXT NOT NULL, updated_by TEXT NOT NULL)`,
      `CREATE TABLE offers (
        device_id TEXT NOT NULL, release_id TEXT NOT NULL, first_at TEXT NOT NULL, PRIMARY KEY (release_id, device_id))`,
      `CREATE TABLE events (
        device_id TEXT NOT NULL, id TEXT NOT NULL, type TEXT NOT NULL, version TEXT NOT NULL, channel TEXT NOT NULL, at TEXT NOT NULL,
        code TEXT, message TEXT, payload_kind TEXT, progress_done BIGINT, progress_total BIGINT, release_id TEXT,
        received_at TEXT NOT NULL, PRIMARY KEY (device_id, id))`,
      `CREATE INDEX events_release ON events (release_id, type, device_id)`,
      `CREATE INDEX events_device ON events (device_id, received_at)`,
      `CREATE TABLE audit_log (
        id INTEGER PRIMARY KEY, at TEXT NOT NULL, actor TEXT NOT NULL, action TEXT NOT NULL, target TEXT NOT NULL, details TEXT NOT NULL)`,
      `CREATE TABLE jobs (
        id TEXT PRIMARY KEY, kind TEXT NOT NULL, state TEXT NOT NULL, release_id TEXT, params TEXT NOT NULL, progress INTEGER NOT NULL,
        message TEXT, error TEXT, created_at TEXT NOT NULL, updated_at TEXT NOT NULL)`,
    ],
  },
  {
    version: 2,
    name: 'release outcome counts',
    // The halt rule's attempts and failures per release (rollout/should-halt.ts), kept up to date by insertEvents
    // instead of counted from the events on each outcome; backfilled here by the same rule, per device then per release.
    sql: [
      `CREATE TABLE release_outcomes (release_id TEXT PRIMARY KEY, attempts BIGINT NOT NULL, failures BIGINT NOT NULL)`,
      `INSERT INTO release_outcomes (release_id, attempts, failures)
        SELECT release_id, COUNT(*), SUM(CASE WHEN has_rolled_back = 1 OR (has_error = 1 AND has_committed = 0) THEN 1 ELSE 0 END)
        FROM (SELECT release_id, device_id,
            MAX(CASE WHEN type = 'committed' THEN 1 ELSE 0 END) AS has_committed,
            MAX(CASE WHEN type = 'rolledBack' THEN 1 ELSE 0 END) AS has_rolled_back,
            MAX(CASE WHEN type = 'error' THEN 1 ELSE 0 END) AS has_error
          FROM events WHERE release_id IS NOT NULL AND type IN ('committed', 'rolledBack', 'error')
          GROUP BY release_id, device_id) AS device_outcomes
        GROUP BY release_id`,
    ],
  },
];
