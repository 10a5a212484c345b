/** `tandem payload create|inspect|verify|apply`: thin wrappers over payloads/. */
import { createReadStream } from 'node:fs';
import { applyPayload } from '../../payloads/apply.ts';
import { createPayload } from '../../payloads/generate.ts';
import { inspectPayload, verifyPayload, type PayloadSummary } from '../../payloads/inspect.ts';
import { loadKeyring, loadPrivateKey, loadRootTrust } from '../../shared/key-files.ts';
import { EXIT, formatBytes, formatTable, parseCommandArgs, printJson, progressBar, requireOption, UsageError, type Io } from '../cli-kit.ts';

const USAGE = `usage:
  tandem payload create --image NEW.img [--source OLD.img --source-version 1.0.0] --version 1.1.0 --board BOARD
                        --key DIR/release.key --keyring DIR/keyring.json --out FILE [--product P] [--level 1-22] [--encoder auto|native|wasm] [--json]
  tandem payload inspect FILE [--json]
  tandem payload verify FILE --root DIR/root.pub [--root ...] [--threshold N] [--source OLD.img] [--json]
  tandem payload apply FILE --target SLOT.img [--source OLD.img] --root DIR/root.pub [--json]`;

export async function payloadCommand(argv: string[], io: Io): Promise<number> {
  const [verb, ...rest] = argv;
  switch (verb) {
    case 'create':
      return create(rest, io);
    case 'inspect':
      return inspect(rest, io);
    case 'verify':
      return verify(rest, io);
    case 'apply':
      return apply(rest, io);
    default:
      throw new UsageError(USAGE);
  }
}

function onePositional(positionals: string[], what: string): string {
  if (positionals.length !== 1) throw new UsageError(`Give exactly one ${what}.\n${USAGE}`);
  return positionals[0]!;
}

async function create(argv: string[], io: Io): Promise<number> {
  const { values, positionals } = parseCommandArgs(argv, {
    image: { type: 'string' },
    source: { type: 'string' },
    'source-version': { type: 'string' },
    version: { type: 'string' },
    board: { type: 'string' },
    product: { type: 'string' },
    key: { type: 'string' },
    keyring: { type: 'string' },
    out: { type: 'string' },
    level: { type: 'string' },
    encoder: { type: 'string' },
    json: { type: 'boolean' },
  });
  if (positionals.length > 0) throw new UsageError(`Unexpected argument ${positionals[0]}.\n${USAGE}`);
  if ((values.source === undefined) !== (values['source-version'] === undefined)) {
    throw new UsageError('--source and --source-version go together: a delta names the version it applies to.');
  }
  const level = values.level === undefined ? 19 : Number(values.level);
  if (!Number.isInteger(level) || level < 1 || level > 22) throw new UsageError('--level must be 1..22.');
  const encoder = values.encoder ?? 'auto';
  if (encoder !== 'auto' && encoder !== 'native' && encoder !== 'wasm') throw new UsageError('--encoder must be auto, native or wasm.');
  const { privateKey } = await loadPrivateKey(requireOption(values.key, 'key'));
  const keyring = await loadKeyring(requireOption(values.keyring, 'keyring'));
  const bar = progressBar(io, 'create');
  const result = await createPayload({
    image: requireOption(values.image, 'image'),
    ...(values.source ? { source: { path: values.source, version: values['source-version']! } } : {}),
    version: requireOption(values.version, 'version'),
    board: requireOption(values.board, 'board'),
    ...(values.product ? { product: values.product } : {}),
    signer: privateKey,
    keyring,
    out: requireOption(values.out, 'out'),
    level,
    encoder,
    onProgress: (p) => bar.update(p.done, p.total, p.phase),
  });
  bar.done();
  if (values.json) {
    printJson(io, { path: result.path, size: result.size, sha256: result.sha256, kind: result.manifest.kind, version: result.manifest.version, stats: result.stats });
  } else {
    const s = result.stats;
    io.stdout.write(
      `${result.manifest.kind} payload ${result.manifest.version} → ${result.path}\n` +
        `size ${formatBytes(result.size)} (${result.size} bytes), sha256 ${result.sha256}\n` +
        `operations ${s.operations}, blobs ${s.blobs}, manifest ${formatBytes(s.manifestBytes)}; ` +
        `literal ${formatBytes(s.literalBytes)}, source copies ${formatBytes(s.sourceCopyBytes)}, target copies ${formatBytes(s.targetCopyBytes)}, zeros ${formatBytes(s.zeroBytes)}\n`,
    );
  }
  return EXIT.ok;
}

function printSummary(io: Io, summary: PayloadSummary, verdict: string): void {
  const rows: string[][] = [
    ['kind', summary.kind],
    ['product / board', `${summary.product} / ${summary.board}`],
    ['version', summary.version],
    ...(summary.source ? [['source', `${summary.source.version} (${summary.source.size} bytes, sha256 ${summary.source.sha256})`]] : []),
    ['target', `${summary.target.size} bytes, sha256 ${summary.target.sha256}`],
    ['created', summary.createdAt],
    ['prelude / data', `${formatBytes(summary.preludeSize)} / ${formatBytes(summary.dataSize)} in ${summary.blobs} blobs`],
    ['signed by', `${summary.signatures.join(', ')} (keyring v${summary.keyringVersion})`],
    ...Object.entries(summary.operations)
      .filter(([, v]) => v.count > 0)
      .map(([k, v]) => [k, `${v.count} operations, ${formatBytes(v.bytes)}`]),
    ['status', verdict],
  ];
  io.stdout.write(formatTable(rows));
}

async function inspect(argv: string[], io: Io): Promise<number> {
  const { values, positionals } = parseCommandArgs(argv, { json: { type: 'boolean' }, operations: { type: 'boolean' } });
  const file = onePositional(positionals, 'payload file');
  const { summary, manifest } = await inspectPayload(createReadStream(file));
  if (values.json) printJson(io, values.operations ? { ...summary, manifest } : summary);
  else printSummary(io, summary, 'not verified (use `tandem payload verify`)');
  return EXIT.ok;
}

async function rootTrust(values: { root?: string[] | undefined; threshold?: string | undefined }) {
  if (!values.root || values.root.length === 0) throw new UsageError('Missing required option --root (the pinned root public key).');
  const threshold = values.threshold === undefined ? 1 : Number(values.threshold);
  if (!Number.isInteger(threshold) || threshold < 1) throw new UsageError('--threshold must be a positive whole number.');
  return loadRootTrust(values.root, threshold);
}

async function verify(argv: string[], io: Io): Promise<number> {
  const { values, positionals } = parseCommandArgs(argv, {
    root: { type: 'string', multiple: true },
    threshold: { type: 'string' },
    source: { type: 'string' },
    json: { type: 'boolean' },
  });
  const file = onePositional(positionals, 'payload file');
  const trust = await rootTrust(values);
  const bar = progressBar(io, 'verify');
  const { summary, keyId } = await verifyPayload(createReadStream(file), { trust, ...(values.source ? { source: values.source } : {}), onProgress: (d, t) => bar.update(d, t) });
  bar.done();
  if (values.json) printJson(io, { verified: true, keyId, ...summary });
  else printSummary(io, summary, `verified: signed by ${keyId}, every blob and decoded operation checked`);
  return EXIT.ok;
}

async function apply(argv: string[], io: Io): Promise<number> {
  const { values, positionals } = parseCommandArgs(argv, {
    target: { type: 'string' },
    source: { type: 'string' },
    root: { type: 'string', multiple: true },
    threshold: { type: 'string' },
    json: { type: 'boolean' },
  });
  const file = onePositional(positionals, 'payload file');
  const trust = await rootTrust(values);
  const bar = progressBar(io, 'apply');
  const started = Date.now();
  const result = await applyPayload(createReadStream(file), {
    trust,
    target: requireOption(values.target, 'target'),
    ...(values.source ? { source: values.source } : {}),
    onProgress: (p) => bar.update(p.done, p.total, p.phase),
  });
  bar.done();
  const seconds = (Date.now() - started) / 1000;
  if (values.json) {
    printJson(io, { applied: true, version: result.manifest.version, kind: result.manifest.kind, target: result.manifest.target, keyId: result.keyId, bytesWritten: result.bytesWritten, operations: result.operations, seconds });
  } else {
    io.stdout.write(
      `applied ${result.manifest.kind} payload ${result.manifest.version}: ${result.operations} operations, ${formatBytes(result.bytesWritten)} written in ${seconds.toFixed(1)} s\n` +
        `target verified: ${result.manifest.target.size} bytes, sha256 ${result.manifest.target.sha256}\n`,
    );
  }
  return EXIT.ok;
}
