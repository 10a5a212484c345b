/** The one place that picks a store implementation (STYLE.md 4). */
import { join } from 'node:path';
import { TandemError } from '../../shared/errors.ts';
import { SqliteStore } from './sqlite-store.ts';
import type { Store } from './store.ts';

export interface StoreConfig {
  kind: 'sqlite';
  /** SQLite file; default `<data>/tandem.db`. */
  path?: string;
}

export interface StoreHooks {
  /** A write the store made after answering (a batch of check records) failed. */
  onBackgroundError?: (err: unknown) => void;
}

export function createStore(config: StoreConfig, dataDir: string, hooks: StoreHooks = {}): Store {
  switch (config.kind) {
    case 'sqlite':
      return new SqliteStore(config.path ?? join(dataDir, 'tandem.db'), hooks.onBackgroundError ? { onBatchError: hooks.onBackgroundError } : {});
    default:
      throw new TandemError('ERR_CONFIG', `Unknown store kind ${JSON.stringify((config as { kind: unknown }).kind)}.`);
  }
}
