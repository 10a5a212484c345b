/**
 * A data directory for the server benchmarks, prepared in a setup phase by a
 * server that is then closed, so the server under test starts fresh on it
 * (its RSS and profile hold no trace of the setup): one published release
 * with its rollout at `rolloutPercent`, and `devices` enrolled devices
 * inserted in one transaction (enrollment over HTTP is what the tests cover;
 * here it would only make the setup slow). Device `i` is `bench-<i>` with the
 * credential `deviceCredential(i)`, so a load generator can speak for any of
 * them; every check-in of the benchmarks then goes over real HTTP.
 */
import { join } from 'node:path';
import { hashSecret } from '../../../server/http/auth.ts';
import type { SqliteStore } from '../../../server/store/sqlite-store.ts';
import { makeImage, startTestServer } from '../../server/helpers.ts';
import { tempDir } from './bench-kit.ts';

export interface Fleet {
  dataDir: string;
  devices: number;
  payload: { sha256: string; size: number; path: string };
  remove(): Promise<void>;
}

export const deviceId = (i: number): string => `bench-${i}`;
export const deviceCredential = (i: number): string => `tdc_bench_credential_${i}`;

export async function prepareFleet(options: { devices: number; imageMiB: number; rolloutPercent: number }): Promise<Fleet> {
  const dir = await tempDir('tandem-bench-server-');
  const dataDir = join(dir.path, 'data');
  const ts = await startTestServer({ deltaSources: 0 }, dataDir);
  try {
    const image = join(dir.path, 'bench.img');
    await makeImage(image, { mib: options.imageMiB });
    const pub = await ts.admin.publishImage(image, { channel: 'stable', version: '1.0.0', board: 'rpi4', product: 'acme' });
    await ts.admin.setRollout('stable', '1.0.0', { percentage: `${options.rolloutPercent}%` });
    const db = (ts.server.context.store as SqliteStore).db;
    const now = new Date().toISOString();
    db.prepare("INSERT INTO enrollment_tokens (id, name, token_hash, product, channel, created_at, created_by) VALUES ('bench', 'bench', 'bench', 'acme', 'stable', ?, 'bench')").run(now);
    const insert = db.prepare("INSERT INTO devices (id, product, board, channel, credential_hash, enrolled_at, enrollment_token_id) VALUES (?, 'acme', 'rpi4', 'stable', ?, ?, 'bench')");
    db.transaction(() => {
      for (let i = 0; i < options.devices; i++) insert.run(deviceId(i), hashSecret(deviceCredential(i)), now);
    })();
    return {
      dataDir,
      devices: options.devices,
      payload: { sha256: pub.payload.sha256, size: pub.payload.size, path: join(dataDir, 'payloads', pub.payload.sha256) },
      remove: () => dir.remove(),
    };
  } finally {
    await ts.stop();
  }
}
