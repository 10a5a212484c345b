/**
 * Bearer secrets for devices and release managers. Only a sha256 of each
 * secret is stored, so a copy of the database does not let anyone pose as a
 * device or an admin; secrets are 256 random bits, so a plain hash (no salt,
 * no stretching) is enough, and lookups by hash are indexed.
 */
import { hash, randomBytes } from 'node:crypto';
import type { Context } from 'koa';
import { TandemError } from '../../shared/errors.ts';
import type { AdminToken, Device, Role, Store } from '../store/store.ts';

export type SecretKind = 'device' | 'admin' | 'enroll';
const PREFIX: Record<SecretKind, string> = { device: 'tdc_', admin: 'tda_', enroll: 'tde_' };

export function newSecret(kind: SecretKind): string {
  return `${PREFIX[kind]}${randomBytes(32).toString('base64url')}`;
}

/** Every device call hashes its credential: the one-shot hash, without a Hash object per call. */
export function hashSecret(secret: string): string {
  return hash('sha256', secret, 'hex');
}

function bearer(ctx: Context): string {
  const header = ctx.get('Authorization');
  const m = /^Bearer ([A-Za-z0-9_.~+/-]{16,256}=*)$/.exec(header);
  if (!m) {
    throw new TandemError('ERR_UNAUTHORIZED', header === '' ? 'Missing Authorization: Bearer credential.' : 'Malformed Authorization header.');
  }
  return m[1]!;
}

export async function authenticateDevice(ctx: Context, store: Store): Promise<Device> {
  const device = await store.findDeviceByCredentialHash(hashSecret(bearer(ctx)));
  if (!device) throw new TandemError('ERR_UNAUTHORIZED', 'Unknown or revoked device credential.');
  return device;
}

const RANK: Record<Role, number> = { viewer: 0, release: 1, admin: 2 };

export async function authenticateAdmin(ctx: Context, store: Store, needed: Role): Promise<AdminToken> {
  const token = await store.findAdminTokenByHash(hashSecret(bearer(ctx)));
  if (!token || token.revokedAt !== null) throw new TandemError('ERR_UNAUTHORIZED', 'Unknown or revoked admin token.');
  if (RANK[token.role] < RANK[needed]) {
    throw new TandemError('ERR_FORBIDDEN', `This call needs the ${needed} role; the token has ${token.role}.`, { details: { needed, role: token.role } });
  }
  return token;
}
