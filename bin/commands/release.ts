/** `tandem release publish|list`: publish an image (or an offline payload) to a channel through the admin API. */
import { adminClientFrom } from '../../server/admin-client.ts';
import type { ReleaseView } from '../../shared/schemas/admin.ts';
import { EXIT, formatBytes, formatTable, parseCommandArgs, printJson, progressBar, requireOption, UsageError, type Command, type Io } from '../cli-kit.ts';

export const CONNECTION = {
  server: { type: 'string' },
  token: { type: 'string' },
  config: { type: 'string' },
  json: { type: 'boolean' },
} as const;

export function releaseRows(releases: ReleaseView[]): string[][] {
  return [
    ['PRODUCT', 'CHANNEL', 'VERSION', 'ROLLOUT', 'STATE', 'OFFERED', 'COMMITTED', 'FAILED', 'FLAGS'],
    ...releases.map((r) => [
      r.product, r.channel, r.version, r.rollout.percentage, r.rollout.state, String(r.stats.offered), String(r.stats.committed), String(r.stats.failures),
      [r.steppingStone ? 'stepping-stone' : '', r.allowDowngrade ? 'rollback-target' : ''].filter(Boolean).join(','),
    ]),
  ];
}

const USAGE = `usage:
  tandem release publish --channel C --version V --image FILE [--board B] [--product P] [--stepping-stone] [--allow-downgrade] [--notes TEXT] [--wait]
  tandem release publish --channel C --payload FILE [--stepping-stone] [--allow-downgrade]
  tandem release list [--channel C] [--product P]
common: --server URL --token T (or TANDEM_SERVER, TANDEM_TOKEN, --config FILE) --json
`;

export const releaseCommand: Command = async (argv, io) => {
  const [sub, ...rest] = argv;
  if (sub === 'publish') return publish(rest, io);
  if (sub === 'list') return list(rest, io);
  if (sub === undefined || sub === 'help' || sub === '--help') {
    io.stdout.write(USAGE);
    return EXIT.ok;
  }
  throw new UsageError(`Unknown release command ${JSON.stringify(sub)}.\n${USAGE}`);
};

async function publish(argv: string[], io: Io): Promise<number> {
  const { values } = parseCommandArgs(argv, {
    ...CONNECTION,
    channel: { type: 'string' },
    version: { type: 'string' },
    image: { type: 'string' },
    payload: { type: 'string' },
    board: { type: 'string' },
    product: { type: 'string' },
    'stepping-stone': { type: 'boolean' },
    'allow-downgrade': { type: 'boolean' },
    notes: { type: 'string' },
    wait: { type: 'boolean' },
  }, false);
  const client = await adminClientFrom(values, io.env);
  const channel = requireOption(values.channel, 'channel');
  const flags = {
    ...(values['stepping-stone'] ? { steppingStone: true } : {}),
    ...(values['allow-downgrade'] ? { allowDowngrade: true } : {}),
    ...(values.notes === undefined ? {} : { notes: values.notes }),
  };
  const bar = values.json ? { update() {}, done() {} } : progressBar(io, 'upload');
  let result;
  if (values.payload !== undefined) {
    if (values.image !== undefined) throw new UsageError('Pass --image or --payload, not both.');
    result = await client.publishPayload(values.payload, { channel, ...flags }, (d, t) => bar.update(d, t));
  } else {
    const image = requireOption(values.image, 'image');
    const version = requireOption(values.version, 'version');
    let board = values.board;
    if (board === undefined) {
      // Default to the one board the channel already has, so the common case needs no flag.
      const boards = new Set((await client.releases({ channel, ...(values.product ? { product: values.product } : {}) })).flatMap((r) => r.payloads.map((p) => p.board)));
      if (boards.size !== 1) throw new UsageError(`Pass --board: the channel has ${boards.size === 0 ? 'no release yet' : `several boards (${[...boards].join(', ')})`}.`);
      board = [...boards][0]!;
    }
    result = await client.publishImage(image, { channel, version, board, ...(values.product ? { product: values.product } : {}), ...flags }, (d, t) => bar.update(d, t));
  }
  bar.done();
  let job = result.job;
  if (job && values.wait) job = await client.waitForJob(job.id);
  if (values.json) {
    printJson(io, { ...result, job });
    return EXIT.ok;
  }
  const p = result.payload;
  io.stdout.write(`published ${result.release.product} ${result.release.version} on ${result.release.channel}: ${p.kind} payload for ${p.board}, ${formatBytes(p.size)}, sha256 ${p.sha256}\n`);
  io.stdout.write(`rollout: ${result.release.rollout.percentage} (${result.release.rollout.state}); raise it with: tandem rollout set ${channel} ${result.release.version} 10%\n`);
  if (job) io.stdout.write(`delta job ${job.id}: ${job.state}${job.message ? ` (${job.message})` : ''}${job.error ? ` error: ${job.error}` : ''}\n`);
  return job?.state === 'failed' ? EXIT.failure : EXIT.ok;
}

async function list(argv: string[], io: Io): Promise<number> {
  const { values } = parseCommandArgs(argv, { ...CONNECTION, channel: { type: 'string' }, product: { type: 'string' } }, false);
  const client = await adminClientFrom(values, io.env);
  const releases = await client.releases({ ...(values.channel ? { channel: values.channel } : {}), ...(values.product ? { product: values.product } : {}) });
  if (values.json) printJson(io, releases);
  else io.stdout.write(formatTable(releaseRows(releases)));
  return EXIT.ok;
}
