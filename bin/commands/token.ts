/** `tandem token create|list`: admin API tokens (roles admin, release, viewer) and device enrollment tokens. */
import { adminClientFrom } from '../../server/admin-client.ts';
import { EXIT, formatTable, parseCommandArgs, printJson, requireOption, UsageError, type Command } from '../cli-kit.ts';
import { CONNECTION } from './release.ts';

const USAGE = `usage:
  tandem token create --role admin|release|viewer [--name NAME]
  tandem token create --enroll --product P --channel C [--board B] [--max-uses N] [--expires-in SECONDS]
  tandem token list [--enroll]
`;

export const tokenCommand: Command = async (argv, io) => {
  const [sub, ...rest] = argv;
  if (sub === undefined || sub === 'help' || sub === '--help') {
    io.stdout.write(USAGE);
    return EXIT.ok;
  }
  const { values } = parseCommandArgs(rest, {
    ...CONNECTION,
    role: { type: 'string' },
    name: { type: 'string' },
    enroll: { type: 'boolean' },
    product: { type: 'string' },
    channel: { type: 'string' },
    board: { type: 'string' },
    'max-uses': { type: 'string' },
    'expires-in': { type: 'string' },
  }, false);
  const client = await adminClientFrom(values, io.env);
  if (sub === 'create' && values.enroll) {
    const int = (v: string | undefined, flag: string): number | undefined => {
      if (v === undefined) return undefined;
      const n = Number(v);
      if (!Number.isSafeInteger(n) || n < 1) throw new UsageError(`--${flag} takes a positive integer.`);
      return n;
    };
    const maxUses = int(values['max-uses'], 'max-uses');
    const expires = int(values['expires-in'], 'expires-in');
    const r = await client.createEnrollmentToken({
      product: requireOption(values.product, 'product'),
      channel: requireOption(values.channel, 'channel'),
      ...(values.board ? { board: values.board } : {}),
      ...(values.name ? { name: values.name } : {}),
      ...(maxUses === undefined ? {} : { maxUses }),
      ...(expires === undefined ? {} : { expiresInSeconds: expires }),
    });
    if (values.json) printJson(io, r);
    else io.stdout.write(`${r.token}\n`);
    return EXIT.ok;
  }
  if (sub === 'create') {
    const role = requireOption(values.role, 'role');
    if (!['admin', 'release', 'viewer'].includes(role)) throw new UsageError('--role is admin, release or viewer.');
    const r = await client.createToken(role as 'admin', values.name);
    if (values.json) printJson(io, r);
    else io.stdout.write(`${r.token}\n`);
    return EXIT.ok;
  }
  if (sub === 'list') {
    const path = values.enroll ? '/v1/admin/enrollment-tokens' : '/v1/admin/tokens';
    const rows = await client.request<Record<string, unknown>[]>('GET', path);
    if (values.json) printJson(io, rows);
    else {
      const cols = values.enroll ? ['id', 'name', 'product', 'channel', 'board', 'uses', 'maxUses', 'expiresAt', 'revokedAt'] : ['id', 'name', 'role', 'createdAt', 'createdBy', 'revokedAt'];
      io.stdout.write(formatTable([cols.map((c) => c.toUpperCase()), ...rows.map((r) => cols.map((c) => (r[c] === null || r[c] === undefined ? '-' : String(r[c]))))]));
    }
    return EXIT.ok;
  }
  throw new UsageError(`Unknown token command ${JSON.stringify(sub)}.\n${USAGE}`);
};
