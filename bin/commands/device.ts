/** `tandem device list|show|clear-failure|pin|remove`: look at and steer single devices. */
import { adminClientFrom } from '../../server/admin-client.ts';
import { EXIT, formatTable, parseCommandArgs, printJson, UsageError, type Command } from '../cli-kit.ts';
import { CONNECTION } from './release.ts';

const USAGE = `usage:
  tandem device list [--channel C] [--version V] [--after ID] [--limit N]
  tandem device show ID
  tandem device clear-failure ID VERSION
  tandem device pin ID VERSION      (tandem device pin ID --unpin)
  tandem device remove ID
`;

export const deviceCommand: Command = async (argv, io) => {
  const [sub, ...rest] = argv;
  if (sub === undefined || sub === 'help' || sub === '--help') {
    io.stdout.write(USAGE);
    return EXIT.ok;
  }
  const { values, positionals } = parseCommandArgs(rest, {
    ...CONNECTION,
    channel: { type: 'string' },
    version: { type: 'string' },
    product: { type: 'string' },
    after: { type: 'string' },
    limit: { type: 'string' },
    unpin: { type: 'boolean' },
  });
  const client = await adminClientFrom(values, io.env);
  const [id, version] = positionals;
  const needId = (): string => {
    if (id === undefined) throw new UsageError(`Name the device.\n${USAGE}`);
    return id;
  };
  switch (sub) {
    case 'list': {
      const devices = await client.devices({
        ...(values.channel ? { channel: values.channel } : {}),
        ...(values.version ? { version: values.version } : {}),
        ...(values.product ? { product: values.product } : {}),
        ...(values.after ? { after: values.after } : {}),
        ...(values.limit ? { limit: Number(values.limit) } : {}),
      });
      if (values.json) printJson(io, devices);
      else {
        io.stdout.write(formatTable([
          ['ID', 'PRODUCT', 'BOARD', 'CHANNEL', 'VERSION', 'PINNED', 'LAST SEEN'],
          ...devices.map((d) => [d.id, d.product, d.board, d.channel, d.version ?? '-', d.pinnedVersion ?? '-', d.lastSeenAt ?? 'never']),
        ]));
      }
      return EXIT.ok;
    }
    case 'show': {
      const d = await client.device(needId());
      if (values.json) printJson(io, d);
      else {
        io.stdout.write(`${d.id}: ${d.product}/${d.board} on ${d.channel}, running ${d.version ?? 'unknown'} (slot ${d.slot ?? '-'})` +
          `${d.pinnedVersion ? `, pinned to ${d.pinnedVersion}` : ''}, last seen ${d.lastSeenAt ?? 'never'}\n`);
        for (const f of d.failures) io.stdout.write(`  failed ${f.version} (${f.code ?? f.source})${f.clearedAt ? `, cleared by ${f.clearedBy} at ${f.clearedAt}` : ''}\n`);
        if (d.events.length) {
          io.stdout.write(formatTable([['AT', 'EVENT', 'VERSION', 'CODE'], ...d.events.map((e) => [e.at, e.type, e.version, e.code ?? ''])]));
        }
      }
      return EXIT.ok;
    }
    case 'clear-failure': {
      if (version === undefined) throw new UsageError(`Name the version.\n${USAGE}`);
      const r = await client.clearFailure(needId(), version);
      if (values.json) printJson(io, r);
      else io.stdout.write(`${r.deviceId}: ${r.version} will be offered again\n`);
      return EXIT.ok;
    }
    case 'pin': {
      if (version === undefined && !values.unpin) throw new UsageError(`Name the version, or pass --unpin.\n${USAGE}`);
      const r = await client.pin(needId(), values.unpin ? null : version!);
      if (values.json) printJson(io, r);
      else io.stdout.write(r.pinnedVersion ? `${r.deviceId} pinned to ${r.pinnedVersion}\n` : `${r.deviceId} unpinned\n`);
      return EXIT.ok;
    }
    case 'remove': {
      await client.removeDevice(needId());
      if (values.json) printJson(io, { deviceId: id, removed: true });
      else io.stdout.write(`${id} removed; its credential no longer works\n`);
      return EXIT.ok;
    }
    default:
      throw new UsageError(`Unknown device command ${JSON.stringify(sub)}.\n${USAGE}`);
  }
};
