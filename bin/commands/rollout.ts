/** `tandem rollout set|pause|resume|halt|show CHANNEL VERSION`: steer a staged rollout. */
import { adminClientFrom } from '../../server/admin-client.ts';
import { percentToBasisPoints } from '../../shared/rollout-bucket.ts';
import type { ReleaseView, RolloutUpdateRequest } from '../../shared/schemas/admin.ts';
import { EXIT, parseCommandArgs, printJson, UsageError, type Command, type Io } from '../cli-kit.ts';
import { CONNECTION } from './release.ts';

const USAGE = `usage:
  tandem rollout set CHANNEL VERSION PERCENT [--threshold PERCENT] [--min-attempts N] [--product P]
  tandem rollout pause|resume CHANNEL VERSION [--product P]
  tandem rollout halt CHANNEL VERSION [--reason TEXT] [--product P]
  tandem rollout show CHANNEL VERSION [--product P]
`;

export const rolloutCommand: Command = async (argv, io) => {
  const [sub, ...rest] = argv;
  if (sub === undefined || sub === 'help' || sub === '--help') {
    io.stdout.write(USAGE);
    return EXIT.ok;
  }
  if (!['set', 'pause', 'resume', 'halt', 'show'].includes(sub)) throw new UsageError(`Unknown rollout command ${JSON.stringify(sub)}.\n${USAGE}`);
  const { values, positionals } = parseCommandArgs(rest, {
    ...CONNECTION,
    product: { type: 'string' },
    reason: { type: 'string' },
    threshold: { type: 'string' },
    'min-attempts': { type: 'string' },
  });
  const [channel, version, percent] = positionals;
  if (channel === undefined || version === undefined) throw new UsageError(`Name the channel and version.\n${USAGE}`);
  const client = await adminClientFrom(values, io.env);
  let view: ReleaseView;
  if (sub === 'show') {
    view = await client.rollout(channel, version, values.product);
  } else {
    const req: RolloutUpdateRequest = { ...(values.product ? { product: values.product } : {}) };
    if (sub === 'set') {
      if (percent === undefined) throw new UsageError(`Give the percentage, e.g. 10%.\n${USAGE}`);
      req.percentage = /%$/.test(percent) ? percent : `${percent}%`;
      percentToBasisPoints(req.percentage);
      if (values.threshold !== undefined) req.failureThresholdBp = percentToBasisPoints(/%$/.test(values.threshold) ? values.threshold : `${values.threshold}%`);
      if (values['min-attempts'] !== undefined) {
        const n = Number(values['min-attempts']);
        if (!Number.isSafeInteger(n) || n < 1) throw new UsageError('--min-attempts takes a positive integer.');
        req.minAttempts = n;
      }
    } else {
      req.action = sub as 'pause' | 'resume' | 'halt';
      if (values.reason !== undefined) req.reason = values.reason;
    }
    view = await client.setRollout(channel, version, req);
  }
  print(io, view, values.json === true);
  return EXIT.ok;
};

function print(io: Io, r: ReleaseView, json: boolean): void {
  if (json) {
    printJson(io, r);
    return;
  }
  const s = r.stats;
  io.stdout.write(
    `${r.product} ${r.version} on ${r.channel}: ${r.rollout.percentage} ${r.rollout.state}` +
      `${r.rollout.haltReason ? ` (${r.rollout.haltReason})` : ''}\n` +
      `  offered ${s.offered}, downloading ${s.downloading}, installed ${s.installed}, committed ${s.committed}, rolled back ${s.rolledBack}, errors ${s.errors}\n` +
      `  halts above ${r.rollout.failureThresholdBp / 100}% failures after ${r.rollout.minAttempts} attempts\n`,
  );
}
