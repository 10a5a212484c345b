/**
 * The server's persistence seam (STYLE.md 4): the rest of the server speaks to
 * this interface and never knows which database is behind it. SQLite is the
 * embedded default; PostgreSQL follows with the same tests, so every method is
 * async and the SQL behind it stays portable.
 */

export type Role = 'admin' | 'release' | 'viewer';
export const ROLES: readonly Role[] = ['admin', 'release', 'viewer'];

export type RolloutState = 'active' | 'paused' | 'halted' | 'complete';

export interface AdminToken {
  id: string;
  name: string;
  role: Role;
  tokenHash: string;
  createdAt: string;
  createdBy: string;
  revokedAt: string | null;
}

export interface EnrollmentToken {
  id: string;
  name: string;
  tokenHash: string;
  product: string;
  channel: string;
  /** null: any board of the product. */
  board: string | null;
  maxUses: number | null;
  uses: number;
  expiresAt: string | null;
  createdAt: string;
  createdBy: string;
  revokedAt: string | null;
}

export interface Device {
  id: string;
  product: string;
  board: string;
  channel: string;
  credentialHash: string;
  enrolledAt: string;
  enrollmentTokenId: string;
  lastSeenAt: string | null;
  version: string | null;
  slot: string | null;
  pinnedVersion: string | null;
  checkCount: number;
}

export interface DeviceFailure {
  deviceId: string;
  version: string;
  firstAt: string;
  /** Where the failure became known: the device's check-in list or an event. */
  source: 'check' | 'event';
  code: string | null;
  clearedAt: string | null;
  clearedBy: string | null;
}

export interface Release {
  id: string;
  product: string;
  channel: string;
  version: string;
  steppingStone: boolean;
  allowDowngrade: boolean;
  createdAt: string;
  createdBy: string;
  notes: string | null;
}

export interface PayloadRecord {
  sha256: string;
  releaseId: string;
  board: string;
  kind: 'full' | 'delta';
  sourceVersion: string | null;
  size: number;
  preludeSize: number;
  /** The signed manifest bytes (canonical JSON) and their release-key signatures, as sent to devices. */
  manifest: Buffer;
  signatures: string;
  targetSha256: string;
  targetSize: number;
  createdAt: string;
}

export interface Rollout {
  releaseId: string;
  basisPoints: number;
  state: RolloutState;
  /** Per-rollout salt, so the same devices are not always the first to get each release. */
  salt: string;
  /** Fraction of attempts, in basis points, above which the rollout halts itself. */
  failureThresholdBp: number;
  minAttempts: number;
  haltReason: string | null;
  updatedAt: string;
  updatedBy: string;
}

export interface ReleaseStats {
  offered: number;
  downloading: number;
  installed: number;
  rebooting: number;
  committed: number;
  rolledBack: number;
  errors: number;
  /** Devices with a terminal outcome: committed, rolled back or errored. */
  attempts: number;
  /** Devices that rolled this release back, or reported an error and no commit of it (rollout/should-halt.ts). */
  failures: number;
  errorsByCode: Record<string, number>;
}

export interface StoredEvent {
  deviceId: string;
  id: string;
  type: string;
  version: string;
  channel: string;
  at: string;
  code: string | null;
  message: string | null;
  payloadKind: string | null;
  progressDone: number | null;
  progressTotal: number | null;
  releaseId: string | null;
  receivedAt: string;
}

export interface AuditEntry {
  id?: number;
  at: string;
  actor: string;
  action: string;
  target: string;
  details: Record<string, unknown>;
}

export type JobState = 'queued' | 'running' | 'done' | 'failed';

export interface Job {
  id: string;
  kind: string;
  state: JobState;
  releaseId: string | null;
  params: Record<string, unknown>;
  progress: number;
  message: string | null;
  error: string | null;
  createdAt: string;
  updatedAt: string;
}

/** A release with its rollout and the payloads for one board: what the offer decision reads. */
export interface ReleaseCandidate {
  release: Release;
  rollout: Rollout;
  payloads: PayloadRecord[];
}

export interface CheckRecord {
  deviceId: string;
  version: string;
  slot: string;
  channel: string;
  at: string;
  offeredReleaseId: string | null;
  /** False when version, slot and channel are what the device row already says (most check-ins): only last-seen changes. */
  changed: boolean;
  /** Versions the device reports as failed; recorded unless a release manager cleared them. */
  failedVersions: string[];
}

export interface EventInsertResult {
  accepted: number;
  duplicates: number;
  /** Release ids that got a new outcome (committed, error, rolledBack), counted in their attempts and failures: the caller re-evaluates their halt condition. */
  outcomeReleases: string[];
  /** The events that were new (not retries of ones already stored): what metrics count. */
  inserted: StoredEvent[];
}

export interface DeviceFilter {
  channel?: string;
  product?: string;
  version?: string;
  after?: string;
  limit: number;
}

export interface Store {
  readonly kind: string;
  close(): Promise<void>;

  createAdminToken(token: AdminToken): Promise<void>;
  findAdminTokenByHash(hash: string): Promise<AdminToken | undefined>;
  listAdminTokens(): Promise<AdminToken[]>;
  revokeAdminToken(id: string, at: string): Promise<boolean>;

  createEnrollmentToken(token: EnrollmentToken): Promise<void>;
  findEnrollmentTokenByHash(hash: string): Promise<EnrollmentToken | undefined>;
  listEnrollmentTokens(): Promise<EnrollmentToken[]>;
  revokeEnrollmentToken(id: string, at: string): Promise<boolean>;

  /** Atomically takes one use of the token and inserts the device; ERR_DEVICE_EXISTS or ERR_ENROLLMENT_TOKEN otherwise. */
  enrollDevice(device: Device, tokenId: string, now: string): Promise<void>;
  findDeviceByCredentialHash(hash: string): Promise<Device | undefined>;
  getDevice(id: string): Promise<Device | undefined>;
  listDevices(filter: DeviceFilter): Promise<Device[]>;
  deleteDevice(id: string): Promise<boolean>;
  setPin(deviceId: string, version: string | null): Promise<boolean>;
  recordCheck(check: CheckRecord): Promise<void>;
  /** Versions that failed on the device and were not cleared since. */
  activeFailures(deviceId: string): Promise<string[]>;
  listFailures(deviceId: string): Promise<DeviceFailure[]>;
  clearFailure(deviceId: string, version: string, at: string, by: string): Promise<boolean>;
  /** Adoption: devices per current version on a channel. */
  versionCounts(product: string | undefined, channel: string): Promise<{ product: string; version: string | null; devices: number }[]>;
  countDevices(): Promise<number>;

  createRelease(release: Release, rollout: Rollout): Promise<void>;
  getRelease(id: string): Promise<Release | undefined>;
  findReleases(query: { product?: string; channel?: string; version?: string }): Promise<Release[]>;
  updateRelease(id: string, patch: Partial<Pick<Release, 'steppingStone' | 'allowDowngrade' | 'notes'>>): Promise<void>;
  addPayload(payload: PayloadRecord): Promise<void>;
  listPayloads(releaseId: string): Promise<PayloadRecord[]>;
  getPayload(sha256: string): Promise<PayloadRecord | undefined>;
  /** What a check-in reads: shared between check-ins and frozen (see candidate-cache.ts), so never mutate it. */
  candidates(product: string, channel: string, board: string): Promise<readonly ReleaseCandidate[]>;

  getRollout(releaseId: string): Promise<Rollout | undefined>;
  updateRollout(releaseId: string, patch: Partial<Omit<Rollout, 'releaseId' | 'salt'>>): Promise<Rollout>;

  insertEvents(deviceId: string, events: StoredEvent[]): Promise<EventInsertResult>;
  releaseStats(releaseId: string): Promise<ReleaseStats>;
  /** Just what the halt rule needs (ReleaseStats.attempts and .failures): counts kept per release as events are inserted, so one read. */
  outcomeCounts(releaseId: string): Promise<Pick<ReleaseStats, 'attempts' | 'failures'>>;
  deviceEvents(deviceId: string, limit: number): Promise<StoredEvent[]>;

  audit(entry: AuditEntry): Promise<void>;
  listAudit(limit: number): Promise<AuditEntry[]>;

  createJob(job: Job): Promise<void>;
  updateJob(id: string, patch: Partial<Pick<Job, 'state' | 'progress' | 'message' | 'error' | 'updatedAt'>>): Promise<void>;
  getJob(id: string): Promise<Job | undefined>;
  listJobs(limit: number): Promise<Job[]>;
}
