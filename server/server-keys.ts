/**
 * The server's keys (DESIGN.md "Keys and trust"). In development, the first
 * start creates a root key, a release key and an online server key under
 * `<data>/keys`, and a keyring signed by the root naming the other two. In
 * production the root stays offline: configure a keyring signed elsewhere and
 * the release and server private keys; no root private key is then needed.
 */
import type { KeyObject } from 'node:crypto';
import { access, mkdir, readFile } from 'node:fs/promises';
import { join } from 'node:path';
import { writeFileDurable } from '../shared/durable-write.ts';
import { TandemError } from '../shared/errors.ts';
import { createKeyring, verifyKeyring, type KeyringDocument, type VerifiedKeyring } from '../shared/keyring.ts';
import { generateKeySet } from '../shared/key-files.ts';
import { decodePrivateKeyFile, decodePublicKeyFile } from '../shared/keys.ts';
import { parseSafeJson } from '../shared/safe-json.ts';
import type { ServerConfig } from './config.ts';

export interface ServerKeys {
  keyring: KeyringDocument;
  verified: VerifiedKeyring;
  rootPublicKey: Buffer;
  releaseKey: KeyObject;
  releaseKeyId: string;
  serverKey: KeyObject;
  serverKeyId: string;
  paths: { dir: string; rootPublicKeyPath: string; rootPrivateKeyPath: string | null; keyringPath: string; releaseKeyPath: string; serverKeyPath: string };
  /** True when this start created development keys. */
  created: boolean;
}

const YEAR_MS = 365 * 24 * 3600 * 1000;
const RENEW_BEFORE_MS = 30 * 24 * 3600 * 1000;

async function exists(path: string): Promise<boolean> {
  return access(path).then(() => true, () => false);
}

export async function loadServerKeys(config: Readonly<ServerConfig>, now = new Date()): Promise<ServerKeys> {
  const dir = config.keys.dir ?? join(config.dataDir, 'keys');
  const paths = {
    dir,
    rootPublicKeyPath: config.keys.rootPublicKey ?? join(dir, 'root.pub'),
    rootPrivateKeyPath: join(dir, 'root.key') as string | null,
    keyringPath: config.keys.keyring ?? join(dir, 'keyring.json'),
    releaseKeyPath: config.keys.releaseKey ?? join(dir, 'release.key'),
    serverKeyPath: config.keys.serverKey ?? join(dir, 'server.key'),
  };
  let created = false;
  if (!(await exists(paths.keyringPath))) {
    if (config.keys.keyring !== undefined) throw new TandemError('ERR_CONFIG', `The configured keyring ${paths.keyringPath} does not exist.`);
    await createDevelopmentKeys(config, dir, now);
    created = true;
  }
  if (!(await exists(paths.rootPrivateKeyPath!))) paths.rootPrivateKeyPath = null;

  const rootPublicKey = decodePublicKeyFile(await readFile(paths.rootPublicKeyPath, 'utf8')).publicKey;
  const release = decodePrivateKeyFile(await readFile(paths.releaseKeyPath, 'utf8'));
  const server = decodePrivateKeyFile(await readFile(paths.serverKeyPath, 'utf8'));
  let keyring = parseSafeJson(await readFile(paths.keyringPath), { maxBytes: 1024 * 1024, maxDepth: 8 }) as unknown as KeyringDocument;
  const trust = { rootKeys: [rootPublicKey], threshold: 1 };
  let verified = verifyKeyring(keyring, trust, { now });

  // A development keyring renews itself while its root key is at hand; a production one is renewed offline.
  if (paths.rootPrivateKeyPath !== null && verified.expires.getTime() - now.getTime() < RENEW_BEFORE_MS) {
    const root = decodePrivateKeyFile(await readFile(paths.rootPrivateKeyPath, 'utf8'));
    keyring = devKeyring(verified.version + 1, root.privateKey, root.publicKey, release.publicKey, server.publicKey, now);
    await writeFileDurable(paths.keyringPath, `${JSON.stringify(keyring, null, 2)}\n`);
    verified = verifyKeyring(keyring, trust, { now });
  }
  if (!verified.releaseKeys.has(release.keyId)) {
    throw new TandemError('ERR_CONFIG', `The release key ${release.keyId} is not listed in the keyring ${paths.keyringPath}.`);
  }
  if (!verified.serverKeys.has(server.keyId)) {
    throw new TandemError('ERR_CONFIG', `The server key ${server.keyId} is not listed in the keyring ${paths.keyringPath} as a server key.`);
  }
  return {
    keyring, verified, rootPublicKey,
    releaseKey: release.privateKey, releaseKeyId: release.keyId,
    serverKey: server.privateKey, serverKeyId: server.keyId,
    paths, created,
  };
}

function devKeyring(version: number, rootKey: KeyObject, rootPub: Buffer, releasePub: Buffer, serverPub: Buffer, now: Date): KeyringDocument {
  const expires = new Date(now.getTime() + YEAR_MS);
  return createKeyring(
    {
      version,
      expires,
      roots: { threshold: 1, keys: [rootPub] },
      releaseKeys: [{ publicKey: releasePub, expires }],
      serverKeys: [{ publicKey: serverPub, expires }],
    },
    [rootKey],
  );
}

async function createDevelopmentKeys(config: Readonly<ServerConfig>, dir: string, now: Date): Promise<void> {
  const custom = (['rootPublicKey', 'releaseKey', 'serverKey'] as const).filter((k) => config.keys[k] !== undefined);
  if (custom.length > 0) {
    throw new TandemError('ERR_CONFIG', `keys.${custom[0]} is set but keys.keyring is not: configure the keyring signed for these keys, or unset them to get development keys under ${dir}.`);
  }
  await mkdir(dir, { recursive: true, mode: 0o700 });
  await generateKeySet(dir, { serverKey: true, now });
}
