/**
 * startServer: the whole update server in one call, on embedded defaults
 * (DESIGN.md "Storage and scale": `npm start` needs nothing else). Tests start
 * it on 127.0.0.1:0 with a temp data dir; `bin/tandem-server.ts` adds flags.
 */
import { createServer, type Server } from 'node:http';
import type { AddressInfo } from 'node:net';
import { mkdir, readFile } from 'node:fs/promises';
import { join } from 'node:path';
import { pino, type Logger } from 'pino';
import { writeFileDurable } from '../shared/durable-write.ts';
import { createApp } from './app.ts';
import { createAdminToken } from './admin/operations.ts';
import { buildConfig, parseListen, type ServerConfig, type ServerConfigInput } from './config.ts';
import { dataPaths, type ServerContext } from './context.ts';
import { hashSecret } from './http/auth.ts';
import { JobRunner } from './jobs.ts';
import { Metrics } from './metrics.ts';
import { ensureDataDirs } from './releases/publish.ts';
import { loadServerKeys } from './server-keys.ts';
import { createStore } from './store/create-store.ts';

export { buildConfig, readConfigFile, type ServerConfig, type ServerConfigInput } from './config.ts';
export { createAdminToken, createEnrollmentToken, updateRollout, findRelease, pinDevice, clearDeviceFailure } from './admin/operations.ts';
export { publishImage, publishPayload } from './releases/publish.ts';
export { AdminClient } from './admin-client.ts';
export type { ServerContext } from './context.ts';

export interface StartServerOptions {
  /** HOST:PORT; default 127.0.0.1:8080; port 0 picks a free one. */
  listen?: string;
  dataDir: string;
  config?: ServerConfigInput;
  logger?: Logger;
}

export interface RunningServer {
  url: string;
  /** The bootstrap admin token (also in `<data>/admin-token`, mode 0600). */
  adminToken: string;
  keys: {
    dir: string;
    rootPublicKeyPath: string;
    rootPrivateKeyPath: string | null;
    keyringPath: string;
    releaseKeyPath: string;
    serverKeyPath: string;
    /** True when this start created the development keys. */
    created: boolean;
  };
  config: Readonly<ServerConfig>;
  /** Store, keys and jobs, for tests and helpers that act without HTTP. */
  context: ServerContext;
  close(): Promise<void>;
}

export async function startServer(options: StartServerOptions): Promise<RunningServer> {
  const config = buildConfig(options.config, { dataDir: options.dataDir, ...(options.listen === undefined ? {} : { listen: options.listen }) });
  await mkdir(config.dataDir, { recursive: true });
  const logger = options.logger ?? pino({ level: config.logLevel });
  const keys = await loadServerKeys(config);
  const store = createStore(config.store, config.dataDir, { onBackgroundError: (err) => logger.error({ err }, 'check-in records could not be committed') });
  const paths = dataPaths(config.dataDir);
  await ensureDataDirs({ paths });
  const metrics = new Metrics();
  const jobs = new JobRunner(store, logger);
  await jobs.recover();
  const sc: ServerContext = { config, store, keys, metrics, logger, jobs, paths };
  metrics.gauge('tandem_devices', 'Enrolled devices.', () => store.countDevices());
  const adminToken = await bootstrapAdminToken(sc);

  const app = createApp(sc);
  const server: Server = createServer(app.callback());
  // Devices behind slow links upload nothing big; a stalled client must not hold a socket forever.
  server.requestTimeout = 0;
  server.headersTimeout = 30_000;
  server.keepAliveTimeout = 65_000;
  const { host, port } = parseListen(config.listen);
  await new Promise<void>((resolve, reject) => {
    server.once('error', reject);
    server.listen(port, host, () => {
      server.off('error', reject);
      resolve();
    });
  });
  const address = server.address() as AddressInfo;
  const url = `http://${address.family === 'IPv6' ? `[${address.address}]` : address.address}:${address.port}`;
  logger.info({ url, dataDir: config.dataDir, keys: keys.paths.dir, createdKeys: keys.created }, 'tandem-server listening');

  let closed = false;
  return {
    url,
    adminToken,
    keys: { ...keys.paths, created: keys.created },
    config,
    context: sc,
    async close() {
      if (closed) return;
      closed = true;
      await jobs.close();
      await new Promise<void>((resolve) => {
        server.close(() => resolve());
        server.closeAllConnections();
      });
      await store.close();
    },
  };
}

/** The first start creates an admin token and writes it, 0600, beside the data; later starts reuse it. */
async function bootstrapAdminToken(sc: ServerContext): Promise<string> {
  const path = join(sc.config.dataDir, 'admin-token');
  const existing = await readFile(path, 'utf8').then((t) => t.trim(), () => undefined);
  if (existing) {
    const record = await sc.store.findAdminTokenByHash(hashSecret(existing));
    if (record && record.revokedAt === null) return existing;
  }
  const { token } = await createAdminToken(sc, 'admin', 'bootstrap', 'tandem-server');
  await writeFileDurable(path, `${token}\n`, { mode: 0o600 });
  return token;
}
