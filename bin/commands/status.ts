/** `tandem status [CHANNEL]`: adoption and failures per version, rollout state and why it halted. */
import { adminClientFrom } from '../../server/admin-client.ts';
import { EXIT, formatTable, parseCommandArgs, printJson, type Command } from '../cli-kit.ts';
import { CONNECTION, releaseRows } from './release.ts';

export const statusCommand: Command = async (argv, io) => {
  const { values, positionals } = parseCommandArgs(argv, { ...CONNECTION, product: { type: 'string' } });
  const client = await adminClientFrom(values, io.env);
  const status = await client.status({ ...(positionals[0] ? { channel: positionals[0] } : {}), ...(values.product ? { product: values.product } : {}) });
  if (values.json) {
    printJson(io, status);
    return EXIT.ok;
  }
  for (const channel of status) {
    io.stdout.write(`channel ${channel.channel}\n`);
    io.stdout.write(formatTable(releaseRows(channel.releases)));
    for (const r of channel.releases) {
      if (r.rollout.haltReason) io.stdout.write(`  ${r.version} halted: ${r.rollout.haltReason}\n`);
      const codes = Object.entries(r.stats.errorsByCode);
      if (codes.length) io.stdout.write(`  ${r.version} failures: ${codes.map(([c, n]) => `${c} ×${n}`).join(', ')}\n`);
    }
    io.stdout.write(`adoption: ${channel.adoption.map((a) => `${a.version ?? 'unknown'} ${a.devices}`).join(', ') || 'no devices'}\n\n`);
  }
  if (status.length === 0) io.stdout.write('no releases\n');
  return EXIT.ok;
};
