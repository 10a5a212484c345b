/** What every part of the running server shares, built once by startServer and passed down. */
import { join } from 'node:path';
import type { Logger } from 'pino';
import type { ServerConfig } from './config.ts';
import type { JobRunner } from './jobs.ts';
import type { Metrics } from './metrics.ts';
import type { ServerKeys } from './server-keys.ts';
import type { Store } from './store/store.ts';

export interface DataPaths {
  /** Content-addressed payloads: `<payloads>/<sha256>`, immutable once renamed into place. */
  payloads: string;
  /** Published images kept as delta sources: `<images>/<sha256 of the image>`. */
  images: string;
  /** Uploads in progress; swept at start. */
  uploads: string;
}

export interface ServerContext {
  config: Readonly<ServerConfig>;
  store: Store;
  keys: ServerKeys;
  metrics: Metrics;
  logger: Logger;
  jobs: JobRunner;
  paths: DataPaths;
}

export function dataPaths(dataDir: string): DataPaths {
  return { payloads: join(dataDir, 'payloads'), images: join(dataDir, 'images'), uploads: join(dataDir, 'uploads') };
}
