/**
 * The agent's configuration (STYLE.md 7): one JSON file, parsed and validated
 * once at start-up, every bad field reported at once with its path, then
 * frozen and passed down. Relative paths are taken from the config file's
 * folder. Durations are seconds (fractions allowed, so tests can be fast).
 */
import { readFile } from 'node:fs/promises';
import { dirname, isAbsolute, resolve } from 'node:path';
import type { ErrorObject } from 'ajv';
import { TandemError, isTandemError } from '../shared/errors.ts';
import { decodePublicKeyFile } from '../shared/keys.ts';
import type { RootTrust } from '../shared/keyring.ts';
import { parseSafeJson } from '../shared/safe-json.ts';
import { declareSchema } from '../shared/schema-validator.ts';
import { parseVersion } from '../shared/versions.ts';
import type { BootControlConfig } from './boot-control/index.ts';
import { MAX_TRIES, type Slot } from './boot-control/boot-control.ts';

export type HealthCheckConfig =
  | { type: 'command'; name: string; command: string[]; timeoutSeconds: number }
  | { type: 'http'; name: string; url: string; expectStatus: number; timeoutSeconds: number }
  | { type: 'systemd'; name: string; units: string[]; timeoutSeconds: number };

export interface AgentConfig {
  /** Where the config was read from ('' when built in memory). */
  readonly configPath: string;
  /** Base URL of the update server. */
  readonly server: string;
  readonly deviceId: string;
  readonly product: string;
  readonly board: string;
  readonly channel: string;
  /** Version of the factory image, used while the agent has not recorded one for the booted slot. */
  readonly version?: string;
  /** A file in the running image holding its version (e.g. /etc/tandem-version): the truth when present. */
  readonly versionFile?: string;
  readonly trust: RootTrust;
  /** Slot specs as written: a path, `PARTLABEL=x` or `PARTUUID=x`. */
  readonly slots: Readonly<Record<Slot, string>>;
  readonly bootControl: BootControlConfig;
  /** How the booted slot is known: kernel command line (`tandem.slot=A`), the bootloader's TANDEM_BOOTED, or auto (both, then the root device). */
  readonly bootedSlotFrom: 'auto' | 'cmdline' | 'bootenv';
  readonly cmdlinePath: string;
  /** The running root: `/` (its filesystem's device), or a device or file for tests. Slots are compared with it. */
  readonly rootDevice: string;
  /** Where PARTLABEL=/PARTUUID= links live (`/dev/disk`). */
  readonly diskDir: string;
  /** Boots a new slot gets on trial before the bootloader falls back. */
  readonly tries: number;
  /** argv run to reboot; null: never reboot, leave it to the operator (`check` exits 4). */
  readonly rebootCommand: readonly string[] | null;
  readonly health: {
    readonly deadlineSeconds: number;
    readonly intervalSeconds: number;
    readonly checks: readonly HealthCheckConfig[];
    readonly systemctl: string;
  };
  readonly poll: {
    /** Used until the server says when to come back. */
    readonly intervalSeconds: number;
    readonly minSeconds: number;
    readonly maxSeconds: number;
    /** Fraction of the interval added or removed at random, so a fleet never polls in step. */
    readonly jitter: number;
    readonly errorBackoffBaseSeconds: number;
    readonly errorBackoffMaxSeconds: number;
  };
  readonly download: {
    readonly connectTimeoutSeconds: number;
    /** Longest wait for response headers or for the next chunk of a body. */
    readonly readTimeoutSeconds: number;
    /** A body slower than this over lowSpeedSeconds of waiting is a stall (curl's --speed-limit/--speed-time). */
    readonly lowSpeedBytesPerSecond: number;
    readonly lowSpeedSeconds: number;
    /** Attempts per payload after the first (each resumes from the last checkpoint). */
    readonly retries: number;
    readonly backoffBaseSeconds: number;
    readonly backoffMaxSeconds: number;
    /** Failed delta installs before the agent asks for full payloads only. */
    readonly deltaFailuresBeforeFull: number;
    /** Failed installs of one version before it counts as failed here (never retried). */
    readonly maxAttemptsPerVersion: number;
    readonly checkpointEveryBytes: number;
    /** Largest check response accepted (it carries the manifest). */
    readonly maxCheckResponseBytes: number;
  };
  readonly stateDir: string;
  /** Process niceness applied at start (CPU and, with the default CFQ/BFQ class, I/O). */
  readonly nice?: number;
}

const seconds = (max = 30 * 24 * 3600) => ({ type: 'number', exclusiveMinimum: 0, maximum: max }) as const;
const argv = { type: 'array', minItems: 1, maxItems: 64, items: { type: 'string', minLength: 1, maxLength: 4096 } } as const;
const name = { type: 'string', minLength: 1, maxLength: 64, pattern: '^[A-Za-z0-9][A-Za-z0-9._-]*$' } as const;
const path = { type: 'string', minLength: 1, maxLength: 4096 } as const;
const slotSpec = { type: 'string', minLength: 1, maxLength: 4096, pattern: '^(/|PARTLABEL=|PARTUUID=|\\.)' } as const;

const schema = {
  type: 'object',
  required: ['server', 'deviceId', 'product', 'board', 'channel', 'rootKeys', 'slots', 'bootControl', 'stateDir'],
  additionalProperties: false,
  properties: {
    $comment: { type: 'string' },
    server: { type: 'string', minLength: 1, maxLength: 2048 },
    deviceId: { type: 'string', minLength: 1, maxLength: 128, pattern: '^[A-Za-z0-9][A-Za-z0-9._:-]*$' },
    product: name,
    board: name,
    channel: name,
    version: { type: 'string', maxLength: 64 },
    versionFile: path,
    rootKeys: { type: 'array', minItems: 1, maxItems: 16, items: path },
    rootThreshold: { type: 'integer', minimum: 1, maximum: 16 },
    slots: {
      type: 'object',
      required: ['A', 'B'],
      additionalProperties: false,
      properties: { A: slotSpec, B: slotSpec },
    },
    bootControl: {
      type: 'object',
      required: ['kind'],
      properties: {
        kind: { enum: ['file', 'grub', 'uboot', 'systemd-boot'] },
        path,
        esp: path,
        prefix: { type: 'string', minLength: 1, maxLength: 32, pattern: '^[a-z][a-z0-9_-]*$' },
        efivars: path,
        size: { type: 'integer', minimum: 8, maximum: 0x4000000 },
        inPlace: { type: 'boolean' },
        copies: {
          type: 'array',
          minItems: 1,
          maxItems: 2,
          items: {
            type: 'object',
            required: ['path'],
            additionalProperties: false,
            properties: { path, offset: { type: 'integer', minimum: 0, maximum: Number.MAX_SAFE_INTEGER } },
          },
        },
      },
      additionalProperties: false,
    },
    bootedSlotFrom: { enum: ['auto', 'cmdline', 'bootenv'] },
    cmdlinePath: path,
    rootDevice: path,
    diskDir: path,
    tries: { type: 'integer', minimum: 1, maximum: MAX_TRIES },
    rebootCommand: { anyOf: [argv, { type: 'null' }] },
    health: {
      type: 'object',
      additionalProperties: false,
      properties: {
        deadlineSeconds: seconds(),
        intervalSeconds: seconds(),
        systemctl: path,
        checks: {
          type: 'array',
          maxItems: 64,
          items: {
            type: 'object',
            required: ['type'],
            properties: {
              type: { enum: ['command', 'http', 'systemd'] },
              name: { type: 'string', minLength: 1, maxLength: 128 },
              command: argv,
              url: { type: 'string', minLength: 1, maxLength: 2048 },
              expectStatus: { type: 'integer', minimum: 100, maximum: 599 },
              units: { type: 'array', minItems: 1, maxItems: 64, items: { type: 'string', minLength: 1, maxLength: 256, pattern: '^[A-Za-z0-9@._:\\\\-]+$' } },
              timeoutSeconds: seconds(3600),
            },
            additionalProperties: false,
          },
        },
      },
    },
    poll: {
      type: 'object',
      additionalProperties: false,
      properties: {
        intervalSeconds: seconds(),
        minSeconds: seconds(),
        maxSeconds: seconds(),
        jitter: { type: 'number', minimum: 0, maximum: 0.5 },
        errorBackoffBaseSeconds: seconds(),
        errorBackoffMaxSeconds: seconds(),
      },
    },
    download: {
      type: 'object',
      additionalProperties: false,
      properties: {
        connectTimeoutSeconds: seconds(3600),
        readTimeoutSeconds: seconds(3600),
        lowSpeedBytesPerSecond: { type: 'integer', minimum: 0, maximum: 2 ** 40 },
        lowSpeedSeconds: seconds(3600),
        retries: { type: 'integer', minimum: 0, maximum: 100 },
        backoffBaseSeconds: seconds(3600),
        backoffMaxSeconds: seconds(24 * 3600),
        deltaFailuresBeforeFull: { type: 'integer', minimum: 1, maximum: 100 },
        maxAttemptsPerVersion: { type: 'integer', minimum: 1, maximum: 100 },
        checkpointEveryBytes: { type: 'integer', minimum: 0, maximum: 2 ** 40 },
        maxCheckResponseBytes: { type: 'integer', minimum: 4096, maximum: 256 * 1024 * 1024 },
      },
    },
    stateDir: path,
    nice: { type: 'integer', minimum: -20, maximum: 19 },
  },
} as const;

// Config errors are reported all at once (allErrors), unlike protocol bodies.
const configValidator = declareSchema(schema, 'allErrors');

export interface ConfigFieldError {
  field: string;
  message: string;
}

function describe(e: ErrorObject): ConfigFieldError {
  const field = e.instancePath.replace(/^\//, '').replace(/\//g, '.') || '(root)';
  if (e.keyword === 'additionalProperties') {
    const extra = (e.params as { additionalProperty: string }).additionalProperty;
    return { field: field === '(root)' ? extra : `${field}.${extra}`, message: 'is not a known setting' };
  }
  if (e.keyword === 'required') {
    const missing = (e.params as { missingProperty: string }).missingProperty;
    return { field: field === '(root)' ? missing : `${field}.${missing}`, message: 'is required' };
  }
  if (e.keyword === 'pattern' && field.startsWith('slots.')) {
    return { field, message: 'must be an absolute path, PARTLABEL=<label> or PARTUUID=<uuid>' };
  }
  if (e.keyword === 'enum') return { field, message: `must be one of ${(e.params as { allowedValues: unknown[] }).allowedValues.map((v) => JSON.stringify(v)).join(', ')}` };
  return { field, message: e.message ?? 'is invalid' };
}

function configError(errors: ConfigFieldError[], where: string): TandemError {
  const lines = errors.map((e) => `  ${e.field}: ${e.message}`).join('\n');
  return new TandemError('ERR_CONFIG', `Invalid agent configuration ${where}:\n${lines}`, { details: { errors } });
}

interface RawConfig {
  server: string;
  deviceId: string;
  product: string;
  board: string;
  channel: string;
  version?: string;
  versionFile?: string;
  rootKeys: string[];
  rootThreshold?: number;
  slots: Record<Slot, string>;
  bootControl: { kind: 'file' | 'grub' | 'uboot' | 'systemd-boot'; path?: string; size?: number; inPlace?: boolean; copies?: { path: string; offset?: number }[]; esp?: string; prefix?: string; efivars?: string };
  bootedSlotFrom?: 'auto' | 'cmdline' | 'bootenv';
  cmdlinePath?: string;
  rootDevice?: string;
  diskDir?: string;
  tries?: number;
  rebootCommand?: string[] | null;
  health?: { deadlineSeconds?: number; intervalSeconds?: number; systemctl?: string; checks?: Record<string, unknown>[] };
  poll?: Partial<AgentConfig['poll']>;
  download?: Partial<AgentConfig['download']>;
  stateDir: string;
  nice?: number;
}

export async function loadConfig(file: string): Promise<AgentConfig> {
  let bytes: Buffer;
  try {
    bytes = await readFile(file);
  } catch (cause) {
    throw new TandemError('ERR_CONFIG', `Cannot read the agent configuration ${file}: ${(cause as Error).message}`, { cause });
  }
  let doc: unknown;
  try {
    doc = parseSafeJson(bytes, { maxBytes: 1024 * 1024, maxDepth: 16 });
  } catch (cause) {
    throw new TandemError('ERR_CONFIG', `The agent configuration ${file} is not valid JSON: ${(cause as Error).message}`, { cause });
  }
  return parseConfig(doc, { configPath: resolve(file) });
}

/** Validates a parsed config document; `configPath` anchors relative paths (default: the working directory). */
export async function parseConfig(doc: unknown, options: { configPath?: string } = {}): Promise<AgentConfig> {
  const configPath = options.configPath ?? '';
  const where = configPath === '' ? '' : `(${configPath})`;
  const base = configPath === '' ? process.cwd() : dirname(configPath);
  const abs = (p: string) => (isAbsolute(p) ? p : resolve(base, p));
  const validate = configValidator();
  if (!validate(doc)) throw configError((validate.errors ?? []).map(describe), where);
  const raw = doc as unknown as RawConfig;
  const errors: ConfigFieldError[] = [];

  let server = raw.server;
  try {
    const url = new URL(raw.server);
    if (url.protocol !== 'http:' && url.protocol !== 'https:') errors.push({ field: 'server', message: 'must be an http:// or https:// URL' });
    server = url.href.replace(/\/+$/, '');
  } catch {
    errors.push({ field: 'server', message: 'is not a URL' });
  }
  if (raw.version !== undefined) {
    try {
      parseVersion(raw.version);
    } catch (err) {
      errors.push({ field: 'version', message: (err as Error).message });
    }
  }
  if (raw.version === undefined && raw.versionFile === undefined) {
    errors.push({ field: 'version', message: 'is required unless versionFile names where the running image keeps its version' });
  }
  const slots = { A: raw.slots.A.startsWith('.') ? abs(raw.slots.A) : raw.slots.A, B: raw.slots.B.startsWith('.') ? abs(raw.slots.B) : raw.slots.B };
  if (slots.A === slots.B) errors.push({ field: 'slots.B', message: 'is the same as slots.A: the two slots must differ' });

  const rootKeys: Buffer[] = [];
  for (const [i, keyPath] of raw.rootKeys.entries()) {
    try {
      rootKeys.push(decodePublicKeyFile(await readFile(abs(keyPath), 'utf8')).publicKey);
    } catch (err) {
      errors.push({ field: `rootKeys.${i}`, message: isTandemError(err) ? err.message : `cannot read ${abs(keyPath)}: ${(err as Error).message}` });
    }
  }
  const rootThreshold = raw.rootThreshold ?? 1;
  if (rootThreshold > raw.rootKeys.length) errors.push({ field: 'rootThreshold', message: `is more than the ${raw.rootKeys.length} root key(s)` });

  let bootControl: BootControlConfig | undefined;
  const bc = raw.bootControl;
  const foreign = (allowed: string[]) => Object.keys(bc).filter((k) => k !== 'kind' && !allowed.includes(k));
  if (bc.kind !== 'systemd-boot' && (bc.esp !== undefined || bc.prefix !== undefined || bc.efivars !== undefined)) {
    errors.push({ field: 'bootControl', message: 'esp, prefix and efivars are for the systemd-boot backend' });
  }
  if (bc.kind === 'systemd-boot') {
    const extra = foreign(['esp', 'prefix', 'efivars']);
    if (bc.esp === undefined) errors.push({ field: 'bootControl.esp', message: 'is required for the systemd-boot backend (where the ESP is mounted)' });
    else if (extra.length > 0) errors.push({ field: `bootControl.${extra[0]}`, message: 'does not apply to the systemd-boot backend' });
    else bootControl = { kind: 'systemd-boot', esp: abs(bc.esp), ...(bc.prefix !== undefined ? { prefix: bc.prefix } : {}), ...(bc.efivars !== undefined ? { efivars: abs(bc.efivars) } : {}) };
  } else if (bc.kind === 'uboot') {
    if (bc.copies === undefined) errors.push({ field: 'bootControl.copies', message: 'is required for the uboot backend' });
    if (bc.path !== undefined || bc.inPlace !== undefined) errors.push({ field: 'bootControl', message: 'uboot takes copies (and size), not path or inPlace' });
    else if (bc.copies) bootControl = { kind: 'uboot', copies: bc.copies.map((c) => ({ path: abs(c.path), ...(c.offset !== undefined ? { offset: c.offset } : {}) })), ...(bc.size !== undefined ? { size: bc.size } : {}) };
  } else {
    if (bc.path === undefined) errors.push({ field: 'bootControl.path', message: `is required for the ${bc.kind} backend` });
    else if (bc.copies !== undefined) errors.push({ field: 'bootControl.copies', message: `is for the uboot backend, not ${bc.kind}` });
    else if (bc.kind === 'file') {
      if (bc.size !== undefined || bc.inPlace !== undefined) errors.push({ field: 'bootControl', message: 'the file backend takes only path' });
      else bootControl = { kind: 'file', path: abs(bc.path) };
    } else {
      bootControl = { kind: 'grub', path: abs(bc.path), ...(bc.size !== undefined ? { size: bc.size } : {}), ...(bc.inPlace !== undefined ? { inPlace: bc.inPlace } : {}) };
    }
  }

  const checks: HealthCheckConfig[] = [];
  for (const [i, c] of (raw.health?.checks ?? []).entries()) {
    const field = `health.checks.${i}`;
    const timeoutSeconds = (c.timeoutSeconds as number | undefined) ?? 30;
    const only = (allowed: string[]) => {
      for (const key of Object.keys(c)) {
        if (!['type', 'name', 'timeoutSeconds', ...allowed].includes(key)) errors.push({ field: `${field}.${key}`, message: `does not apply to a ${String(c.type)} check` });
      }
    };
    if (c.type === 'command') {
      only(['command']);
      if (!c.command) errors.push({ field: `${field}.command`, message: 'is required for a command check' });
      else checks.push({ type: 'command', name: (c.name as string | undefined) ?? (c.command as string[]).join(' '), command: c.command as string[], timeoutSeconds });
    } else if (c.type === 'http') {
      only(['url', 'expectStatus']);
      let ok = false;
      try {
        ok = ['http:', 'https:'].includes(new URL(String(c.url)).protocol);
      } catch {
        ok = false;
      }
      if (!ok) errors.push({ field: `${field}.url`, message: 'must be an http:// or https:// URL' });
      else checks.push({ type: 'http', name: (c.name as string | undefined) ?? String(c.url), url: String(c.url), expectStatus: (c.expectStatus as number | undefined) ?? 200, timeoutSeconds });
    } else {
      only(['units']);
      if (!c.units) errors.push({ field: `${field}.units`, message: 'is required for a systemd check' });
      else checks.push({ type: 'systemd', name: (c.name as string | undefined) ?? `systemd ${(c.units as string[]).join(' ')}`, units: c.units as string[], timeoutSeconds });
    }
  }

  const poll = {
    intervalSeconds: 3600,
    minSeconds: 60,
    maxSeconds: 7 * 24 * 3600,
    jitter: 0.1,
    errorBackoffBaseSeconds: 60,
    errorBackoffMaxSeconds: 6 * 3600,
    ...raw.poll,
  };
  if (poll.minSeconds > poll.maxSeconds) errors.push({ field: 'poll.minSeconds', message: 'is more than poll.maxSeconds' });
  const download = {
    connectTimeoutSeconds: 30,
    readTimeoutSeconds: 60,
    lowSpeedBytesPerSecond: 1024,
    lowSpeedSeconds: 120,
    retries: 5,
    backoffBaseSeconds: 2,
    backoffMaxSeconds: 300,
    deltaFailuresBeforeFull: 2,
    maxAttemptsPerVersion: 3,
    checkpointEveryBytes: 8 * 1024 * 1024,
    maxCheckResponseBytes: 32 * 1024 * 1024,
    ...raw.download,
  };
  if (errors.length > 0 || bootControl === undefined) throw configError(errors, where);

  const config: AgentConfig = {
    configPath,
    server,
    deviceId: raw.deviceId,
    product: raw.product,
    board: raw.board,
    channel: raw.channel,
    ...(raw.version !== undefined ? { version: raw.version } : {}),
    ...(raw.versionFile !== undefined ? { versionFile: abs(raw.versionFile) } : {}),
    trust: { rootKeys, threshold: rootThreshold },
    slots,
    bootControl,
    bootedSlotFrom: raw.bootedSlotFrom ?? 'auto',
    cmdlinePath: abs(raw.cmdlinePath ?? '/proc/cmdline'),
    rootDevice: abs(raw.rootDevice ?? '/'),
    diskDir: abs(raw.diskDir ?? '/dev/disk'),
    tries: raw.tries ?? 3,
    rebootCommand: raw.rebootCommand === undefined ? ['systemctl', 'reboot'] : raw.rebootCommand,
    health: {
      deadlineSeconds: raw.health?.deadlineSeconds ?? 300,
      intervalSeconds: raw.health?.intervalSeconds ?? 5,
      systemctl: raw.health?.systemctl ?? 'systemctl',
      checks,
    },
    poll,
    download,
    stateDir: abs(raw.stateDir),
    ...(raw.nice !== undefined ? { nice: raw.nice } : {}),
  };
  return deepFreeze(config);
}

function deepFreeze<T>(value: T): T {
  if (value !== null && typeof value === 'object' && !Object.isFrozen(value)) {
    Object.freeze(value);
    for (const v of Object.values(value as Record<string, unknown>)) {
      // Key bytes stay mutable Buffers (a frozen typed array throws); nothing writes them.
      if (!(v instanceof Uint8Array)) deepFreeze(v);
    }
  }
  return value;
}
