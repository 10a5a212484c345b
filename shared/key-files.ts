/**
 * Key sets on disk: what `tandem keys generate` writes and what the server
 * creates on first start. Private keys are PKCS#8 PEM (0600), public keys the
 * Tandem JSON key file, the keyring canonical JSON signed by the root key.
 */
import type { KeyObject } from 'node:crypto';
import { mkdir, readFile } from 'node:fs/promises';
import { join } from 'node:path';
import { canonicalize } from './canonical-json.ts';
import { writeFileDurable } from './durable-write.ts';
import { TandemError } from './errors.ts';
import { decodePrivateKeyFile, decodePublicKeyFile, encodePrivateKeyFile, encodePublicKeyFile, generateKeyPair } from './keys.ts';
import { createKeyring, type KeyringDocument, type RootTrust } from './keyring.ts';
import { parseSafeJson } from './safe-json.ts';

const DAY_MS = 24 * 3600 * 1000;

export interface KeySetOptions {
  /** Days the release (and server) keys stay valid (default 365). */
  releaseDays?: number;
  /** Days the keyring stays valid (default 365); devices refuse an expired keyring. */
  keyringDays?: number;
  /** Also create the server's online key for signing check-in responses. */
  serverKey?: boolean;
  now?: Date;
}

export interface KeySetPaths {
  rootKey: string;
  rootPub: string;
  releaseKey: string;
  releasePub: string;
  serverKey?: string;
  serverPub?: string;
  keyring: string;
}

/** Generates root, release (and server) key pairs and a keyring signed by the root; refuses to overwrite. */
export async function generateKeySet(dir: string, options: KeySetOptions = {}): Promise<KeySetPaths> {
  await mkdir(dir, { recursive: true });
  const paths: KeySetPaths = {
    rootKey: join(dir, 'root.key'),
    rootPub: join(dir, 'root.pub'),
    releaseKey: join(dir, 'release.key'),
    releasePub: join(dir, 'release.pub'),
    keyring: join(dir, 'keyring.json'),
    ...(options.serverKey ? { serverKey: join(dir, 'server.key'), serverPub: join(dir, 'server.pub') } : {}),
  };
  for (const path of Object.values(paths)) {
    if (await readFile(path).then(() => true, () => false)) {
      throw new TandemError('ERR_INVALID_ARGUMENT', `${path} already exists; keys are never overwritten. Choose an empty folder.`);
    }
  }
  const now = options.now ?? new Date();
  const root = generateKeyPair();
  const release = generateKeyPair();
  const server = options.serverKey ? generateKeyPair() : undefined;
  const releaseExpires = new Date(now.getTime() + (options.releaseDays ?? 365) * DAY_MS);
  const keyring = createKeyring(
    {
      version: 1,
      expires: new Date(now.getTime() + (options.keyringDays ?? 365) * DAY_MS),
      roots: { threshold: 1, keys: [root.publicKey] },
      releaseKeys: [{ publicKey: release.publicKey, expires: releaseExpires }],
      ...(server ? { serverKeys: [{ publicKey: server.publicKey, expires: releaseExpires }] } : {}),
    },
    [root.privateKey],
  );
  await writeFileDurable(paths.rootKey, encodePrivateKeyFile(root.privateKey), { mode: 0o600 });
  await writeFileDurable(paths.rootPub, encodePublicKeyFile(root.publicKey));
  await writeFileDurable(paths.releaseKey, encodePrivateKeyFile(release.privateKey), { mode: 0o600 });
  await writeFileDurable(paths.releasePub, encodePublicKeyFile(release.publicKey));
  if (server && paths.serverKey && paths.serverPub) {
    await writeFileDurable(paths.serverKey, encodePrivateKeyFile(server.privateKey), { mode: 0o600 });
    await writeFileDurable(paths.serverPub, encodePublicKeyFile(server.publicKey));
  }
  // The keyring last: its presence is what marks the set as complete.
  await writeFileDurable(paths.keyring, `${canonicalize(keyring)}\n`);
  return paths;
}

export async function loadPrivateKey(path: string): Promise<{ privateKey: KeyObject; keyId: string }> {
  return decodePrivateKeyFile(await readFile(path, 'utf8'));
}

/** Pinned root public keys → the trust anchor a keyring is verified against. */
export async function loadRootTrust(paths: readonly string[], threshold = 1): Promise<RootTrust> {
  const rootKeys = await Promise.all(paths.map(async (path) => decodePublicKeyFile(await readFile(path, 'utf8')).publicKey));
  return { rootKeys, threshold };
}

/** Reads a keyring file; its signatures are checked by whoever trusts it (verifyKeyring). */
export async function loadKeyring(path: string): Promise<KeyringDocument> {
  return parseSafeJson(await readFile(path), { maxBytes: 256 * 1024 }) as unknown as KeyringDocument;
}
