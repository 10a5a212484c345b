/** A root key, a release key and a keyring signed by the root: the trust chain tests build in one line. */
import type { KeyObject } from 'node:crypto';
import { generateKeyPair } from '../../shared/keys.ts';
import { createKeyring, type KeyringDocument, type RootTrust } from '../../shared/keyring.ts';

export interface TestTrust {
  root: { publicKey: Buffer; privateKey: KeyObject };
  release: { publicKey: Buffer; privateKey: KeyObject };
  keyring: KeyringDocument;
  trust: RootTrust;
}

const YEAR_MS = 365 * 24 * 3600 * 1000;

export function makeTrust(options: { releaseExpires?: Date; revoked?: boolean; keyringExpires?: Date } = {}): TestTrust {
  const root = generateKeyPair();
  const release = generateKeyPair();
  const keyring = createKeyring(
    {
      version: 1,
      expires: options.keyringExpires ?? new Date(Date.now() + YEAR_MS),
      roots: { threshold: 1, keys: [root.publicKey] },
      releaseKeys: [{ publicKey: release.publicKey, expires: options.releaseExpires ?? new Date(Date.now() + YEAR_MS), revoked: options.revoked ?? false }],
    },
    [root.privateKey],
  );
  return { root, release, keyring, trust: { rootKeys: [root.publicKey], threshold: 1 } };
}
