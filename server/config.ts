/**
 * Server configuration, parsed and validated once at start-up, frozen and
 * passed down (STYLE.md 7): nothing else reads the environment or a file.
 * A JSON file (`--config FILE`) overrides the embedded defaults; flags
 * (`--listen`, `--data`) override the file. A bad field is named in the error.
 */
import { readFile } from 'node:fs/promises';
import { resolve } from 'node:path';
import { TandemError } from '../shared/errors.ts';
import { parseSafeJson } from '../shared/safe-json.ts';
import { compileValidator } from '../shared/schema-validator.ts';

export interface LimitsConfig {
  /** Request body limits in bytes, per route: small for devices, big for uploads. */
  enrollBytes: number;
  checkBytes: number;
  eventsBytes: number;
  adminJsonBytes: number;
  imageBytes: number;
  payloadBytes: number;
}

export interface ServerConfig {
  listen: string;
  dataDir: string;
  /** Where payload URLs in offers point: null serves them from this server at /v1/payloads/<sha256>; a CDN base otherwise. */
  payloadBaseUrl: string | null;
  pollIntervalSeconds: number;
  /** ±fraction of the poll interval, so a fleet never polls in step. */
  pollJitter: number;
  /** How long a signed check response is valid: short, so a frozen response is refused soon. */
  responseTtlSeconds: number;
  /** Delta payloads are generated from this many previous releases on the channel. */
  deltaSources: number;
  zstdLevel: number;
  rolloutDefaults: { failureThresholdBp: number; minAttempts: number };
  limits: LimitsConfig;
  logLevel: 'fatal' | 'error' | 'warn' | 'info' | 'debug' | 'trace' | 'silent';
  store: { kind: 'sqlite'; path?: string };
  /**
   * Key files. Unset: development keys are created under `<data>/keys` on first start.
   * Production: point these at a keyring signed offline and the online release and server keys.
   */
  keys: { dir?: string; keyring?: string; rootPublicKey?: string; releaseKey?: string; serverKey?: string };
}

export type ServerConfigInput = Partial<Omit<ServerConfig, 'limits' | 'rolloutDefaults' | 'keys' | 'store'>> & {
  limits?: Partial<LimitsConfig>;
  rolloutDefaults?: Partial<ServerConfig['rolloutDefaults']>;
  keys?: ServerConfig['keys'];
  store?: ServerConfig['store'];
};

export const DEFAULT_CONFIG: Omit<ServerConfig, 'dataDir'> = {
  listen: '127.0.0.1:8080',
  payloadBaseUrl: null,
  pollIntervalSeconds: 3600,
  pollJitter: 0.2,
  responseTtlSeconds: 300,
  deltaSources: 2,
  zstdLevel: 19,
  rolloutDefaults: { failureThresholdBp: 500, minAttempts: 20 },
  limits: {
    enrollBytes: 4 * 1024,
    checkBytes: 16 * 1024,
    eventsBytes: 256 * 1024,
    adminJsonBytes: 64 * 1024,
    imageBytes: 64 * 1024 ** 3,
    payloadBytes: 64 * 1024 ** 3,
  },
  logLevel: 'info',
  store: { kind: 'sqlite' },
  keys: {},
};

const POSITIVE = (max: number) => ({ type: 'integer', minimum: 1, maximum: max }) as const;
const PATH = { type: 'string', minLength: 1, maxLength: 4096 } as const;

const configSchema = {
  type: 'object',
  additionalProperties: false,
  properties: {
    listen: { type: 'string', maxLength: 300, pattern: '^(\\[[0-9a-fA-F:.]+\\]|[A-Za-z0-9.-]+):[0-9]{1,5}$' },
    dataDir: PATH,
    payloadBaseUrl: { anyOf: [{ type: 'null' }, { type: 'string', maxLength: 1024, pattern: '^https?://[^\\s]+[^/\\s]$' }] },
    pollIntervalSeconds: POSITIVE(7 * 24 * 3600),
    pollJitter: { type: 'number', minimum: 0, maximum: 0.9 },
    responseTtlSeconds: { type: 'integer', minimum: 10, maximum: 24 * 3600 },
    deltaSources: { type: 'integer', minimum: 0, maximum: 16 },
    zstdLevel: { type: 'integer', minimum: 1, maximum: 22 },
    rolloutDefaults: {
      type: 'object',
      additionalProperties: false,
      properties: { failureThresholdBp: { type: 'integer', minimum: 0, maximum: 10_000 }, minAttempts: POSITIVE(1_000_000) },
    },
    limits: {
      type: 'object',
      additionalProperties: false,
      properties: {
        enrollBytes: POSITIVE(1024 * 1024),
        checkBytes: POSITIVE(1024 * 1024),
        eventsBytes: POSITIVE(16 * 1024 * 1024),
        adminJsonBytes: POSITIVE(16 * 1024 * 1024),
        imageBytes: POSITIVE(Number.MAX_SAFE_INTEGER),
        payloadBytes: POSITIVE(Number.MAX_SAFE_INTEGER),
      },
    },
    logLevel: { enum: ['fatal', 'error', 'warn', 'info', 'debug', 'trace', 'silent'] },
    store: {
      type: 'object',
      additionalProperties: false,
      required: ['kind'],
      properties: { kind: { const: 'sqlite' }, path: PATH },
    },
    keys: {
      type: 'object',
      additionalProperties: false,
      properties: { dir: PATH, keyring: PATH, rootPublicKey: PATH, releaseKey: PATH, serverKey: PATH },
    },
  },
} as const;

const validateConfigInput = compileValidator<ServerConfigInput>(configSchema, 'ERR_CONFIG');

/** Merges defaults, the file and the flags; validates; freezes. */
export function buildConfig(...layers: (ServerConfigInput | undefined)[]): Readonly<ServerConfig> {
  let merged: ServerConfigInput = {};
  for (const layer of layers) {
    if (layer === undefined) continue;
    validateConfigInput(layer, 'configuration');
    merged = {
      ...merged,
      ...layer,
      limits: { ...merged.limits, ...layer.limits },
      rolloutDefaults: { ...merged.rolloutDefaults, ...layer.rolloutDefaults },
      keys: { ...merged.keys, ...layer.keys },
    };
  }
  if (merged.dataDir === undefined) throw new TandemError('ERR_CONFIG', 'Invalid configuration: dataDir is required.', { details: { path: '/dataDir' } });
  const config: ServerConfig = {
    ...DEFAULT_CONFIG,
    ...merged,
    dataDir: resolve(merged.dataDir),
    limits: { ...DEFAULT_CONFIG.limits, ...merged.limits },
    rolloutDefaults: { ...DEFAULT_CONFIG.rolloutDefaults, ...merged.rolloutDefaults },
    keys: { ...merged.keys },
    store: merged.store ?? DEFAULT_CONFIG.store,
  };
  parseListen(config.listen);
  return deepFreeze(config);
}

export async function readConfigFile(path: string): Promise<ServerConfigInput> {
  let text: Buffer;
  try {
    text = await readFile(path);
  } catch (cause) {
    throw new TandemError('ERR_CONFIG', `Cannot read the configuration file ${path}: ${(cause as Error).message}`, { cause });
  }
  try {
    return validateConfigInput(parseSafeJson(text, { maxBytes: 1024 * 1024, maxDepth: 8 }), `configuration file ${path}`);
  } catch (cause) {
    if (cause instanceof TandemError && cause.code === 'ERR_CONFIG') throw cause;
    throw new TandemError('ERR_CONFIG', `Invalid configuration file ${path}: ${(cause as Error).message}`, { cause });
  }
}

export function parseListen(listen: string): { host: string; port: number } {
  const m = /^(\[[0-9a-fA-F:.]+\]|[A-Za-z0-9.-]+):([0-9]{1,5})$/.exec(listen);
  const port = m ? Number(m[2]) : NaN;
  if (!m || !(port >= 0 && port <= 65535)) {
    throw new TandemError('ERR_CONFIG', `Invalid configuration: listen must be HOST:PORT with a port from 0 to 65535, not ${JSON.stringify(listen)}.`, {
      details: { path: '/listen' },
    });
  }
  return { host: m[1]!.replace(/^\[|\]$/g, ''), port };
}

function deepFreeze<T>(value: T): T {
  if (value !== null && typeof value === 'object') {
    for (const v of Object.values(value)) deepFreeze(v);
    Object.freeze(value);
  }
  return value;
}
