/** `tandem keys generate --out DIR`: root and release key pairs plus a keyring signed by the root key. */
import { generateKeySet } from '../../shared/key-files.ts';
import { EXIT, parseCommandArgs, printJson, requireOption, UsageError, type Io } from '../cli-kit.ts';

export async function keysCommand(argv: string[], io: Io): Promise<number> {
  const { values, positionals } = parseCommandArgs(argv, {
    out: { type: 'string' },
    'release-days': { type: 'string' },
    'keyring-days': { type: 'string' },
    'server-key': { type: 'boolean' },
    json: { type: 'boolean' },
  });
  if (positionals[0] !== 'generate' || positionals.length > 1) throw new UsageError('usage: tandem keys generate --out DIR [--release-days N] [--keyring-days N] [--server-key] [--json]');
  const days = (flag: string, value: string | undefined): number | undefined => {
    if (value === undefined) return undefined;
    const n = Number(value);
    if (!Number.isInteger(n) || n < 1 || n > 36500) throw new UsageError(`--${flag} must be a whole number of days between 1 and 36500.`);
    return n;
  };
  const paths = await generateKeySet(requireOption(values.out, 'out'), {
    ...(days('release-days', values['release-days']) !== undefined ? { releaseDays: days('release-days', values['release-days'])! } : {}),
    ...(days('keyring-days', values['keyring-days']) !== undefined ? { keyringDays: days('keyring-days', values['keyring-days'])! } : {}),
    serverKey: values['server-key'] === true,
  });
  if (values.json) printJson(io, paths);
  else {
    io.stdout.write(
      `root key (keep offline): ${paths.rootKey}\nroot public key (pin on devices): ${paths.rootPub}\n` +
        `release key: ${paths.releaseKey}\nkeyring: ${paths.keyring}\n${paths.serverKey ? `server key: ${paths.serverKey}\n` : ''}`,
    );
  }
  return EXIT.ok;
}
