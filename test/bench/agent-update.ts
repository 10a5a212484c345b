/**
 * Agent benchmarks (issue 5), against what a user would script instead, in the
 * same run on the same payload server:
 * - update throughput: `tandem-agent check` (download + apply + read-back verify +
 *   boot flag) vs `curl URL | zstd -d | dd bs=2M conv=fsync of=SLOT` + `sha256sum SLOT`
 *   (target ≥ 0.7×);
 * - the agent's peak RSS for each image size (target: equal within 16 MiB, ≤ 80 MiB).
 * Sizes: TANDEM_BENCH_AGENT_MIB (default "512,2048"). Two kinds of image
 * (TANDEM_BENCH_AGENT_IMAGES, default "fixture,synthetic"): `fixture`, the
 * Debian appliance image of ../shared/fixtures (1.1.0) followed by zeros up to
 * the size — a real root filesystem with free space; and `synthetic`, whose
 * 4 KiB blocks switch at random between zero, copied and literal runs — the
 * adversarial case for the manifest (~150 runs per MiB, merged into operations
 * of up to 512 extents: ~0.5 M extents at 2 GiB). The agent runs on the
 * bench's own node unless TANDEM_BENCH_AGENT_NODE names another binary (e.g.
 * Node 24's, whose node:zlib zstd the agent decodes with instead of zstd-codec).
 */
import { execFileSync } from 'node:child_process';
import { open, readFile, rm, writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import { createPayload } from '../../payloads/generate.ts';
import { makeDevice, makeFleetKeys, makeImage, ProtocolServer } from '../agent/harness.ts';
import { emit, fixtureImages, measure, REPO, round, tempDir, type FixtureImages } from './lib/bench-kit.ts';

const AGENT = join(REPO, 'bin', 'tandem-agent.js');

/**
 * The agent runs as agent/tandem-agent.service runs it: the node flags of its
 * ExecStart and its Environment= lines (NODE_OPTIONS, the malloc arena cap),
 * read from the unit so the figures follow what is installed on a device.
 */
async function serviceLaunch(): Promise<{ nodeFlags: string[]; env: Record<string, string> }> {
  const unit = await readFile(join(REPO, 'agent', 'tandem-agent.service'), 'utf8');
  const exec = /^ExecStart=\S*node((?:\s+--\S+)*)\s/m.exec(unit);
  if (!exec) throw new Error('agent/tandem-agent.service: no ExecStart running node');
  const env: Record<string, string> = {};
  for (const m of unit.matchAll(/^Environment=(\w+)=(.*)$/gm)) env[m[1]!] = m[2]!;
  return { nodeFlags: exec[1]!.trim().split(/\s+/).filter(Boolean), env };
}
const service = await serviceLaunch();
const agentNode = process.env.TANDEM_BENCH_AGENT_NODE || process.execPath;
const node = execFileSync(agentNode, ['--version'], { encoding: 'utf8' }).trim();
const sizes = (process.env.TANDEM_BENCH_AGENT_MIB ?? '512,2048').split(',').map(Number).filter((n) => n > 0);
const kinds = (process.env.TANDEM_BENCH_AGENT_IMAGES ?? 'fixture,synthetic').split(',').filter((k) => k === 'fixture' || k === 'synthetic');
const fixtures = kinds.includes('fixture') ? await fixtureImages() : undefined;
if (fixtures && 'skipped' in fixtures) emit({ bench: 'agent-update', image: 'fixture', skipped: fixtures.skipped });

/** Writes the image 1 MiB at a time: the bench itself must not hold a 2 GiB image. */
async function writeImage(path: string, kind: string, mib: number): Promise<void> {
  const fh = await open(path, 'w');
  try {
    if (kind === 'synthetic') {
      for (let i = 0; i < mib; i++) await fh.write(makeImage(1, 1000 + i));
      return;
    }
    const source = await open((fixtures as FixtureImages).new, 'r');
    try {
      const chunk = Buffer.alloc(1024 * 1024);
      for (let i = 0; i < mib; i++) {
        chunk.fill(0);
        await source.read(chunk, 0, chunk.length, i * chunk.length);
        await fh.write(chunk);
      }
    } finally {
      await source.close();
    }
  } finally {
    await fh.close();
  }
}
const work = await tempDir('tandem-bench-agent-');
const keys = makeFleetKeys();
const server = await new ProtocolServer({ keys }).start();
const rss: { kind: string; mib: number; maxRssMiB: number }[] = [];
try {
  for (const kind of kinds) for (const mib of sizes) {
    if (kind === 'fixture' && (fixtures === undefined || 'skipped' in fixtures)) continue;
    const imagePath = join(work.path, `image-${mib}.img`);
    await writeImage(imagePath, kind, mib);
    const payload = await createPayload({ image: imagePath, version: '2.0.0', board: 'testboard', product: 'appliance', signer: keys.release.privateKey, keyring: keys.keyring, out: join(work.path, `image-${mib}.tpl`), level: 3 });
    const zst = join(work.path, `image-${mib}.img.zst`);
    const compressed = await measure('zstd', ['-q', '-f', '-3', '-T0', imagePath, '-o', zst]);
    if (compressed.code !== 0) throw new Error('zstd failed');
    server.payloads.set('f'.repeat(64), zst);
    server.offer = () => ({ version: '2.0.0', payload });

    const seed = Buffer.alloc(4096);
    const dev = await makeDevice(join(work.path, `device-${mib}`), {
      server: server.url,
      keys,
      version: '1.0.0',
      image: seed,
      overrides: { rebootCommand: null, download: { checkpointEveryBytes: 8 * 1024 * 1024 } },
    });
    const ours = await measure(agentNode, [...service.nodeFlags, AGENT, 'check', '--config', dev.configPath, '--quiet'], { env: service.env });
    if (ours.code !== 4) throw new Error(`tandem-agent check exited ${ours.code}`);

    const slot = join(work.path, `baseline-slot-${mib}.img`);
    await writeFile(slot, '');
    const script = `curl -sf "$1" | zstd -d -q | dd bs=2M conv=fsync of="$2" status=none && sha256sum "$2" > /dev/null`;
    const baseline = await measure('bash', ['-c', script, 'baseline', `${server.url}/v1/payloads/${'f'.repeat(64)}`, slot]);
    if (baseline.code !== 0) throw new Error(`baseline exited ${baseline.code}`);

    emit({
      bench: 'agent-update',
      node,
      image: kind,
      imageMiB: mib,
      operations: payload.manifest.operations.length,
      payloadMiB: round(payload.size / 2 ** 20),
      seconds: ours.seconds,
      throughputMiBps: round(mib / ours.seconds),
      baseline: 'curl | zstd -d | dd bs=2M conv=fsync + sha256sum',
      baselineSeconds: baseline.seconds,
      ratio: round(baseline.seconds / ours.seconds),
      target: '>= 0.7',
    });
    rss.push({ kind, mib, maxRssMiB: Math.round(ours.maxRssKiB / 1024) });
    emit({ bench: 'agent-rss', node, image: kind, imageMiB: mib, maxRssMiB: Math.round(ours.maxRssKiB / 1024), baseline: 'dd pipeline', baselineMaxRssMiB: Math.round(baseline.maxRssKiB / 1024), target: '<= 80' });
    await rm(imagePath, { force: true });
    await rm(slot, { force: true });
    await rm(dev.dir, { recursive: true, force: true });
  }
  for (const kind of kinds) {
    const mine = rss.filter((r) => r.kind === kind);
    if (mine.length < 2) continue;
    const spread = Math.max(...mine.map((r) => r.maxRssMiB)) - Math.min(...mine.map((r) => r.maxRssMiB));
    emit({ bench: 'agent-rss-spread', node, image: kind, sizesMiB: mine.map((r) => r.mib), spreadMiB: spread, target: '<= 16' });
  }
} finally {
  await server.close();
  await work.remove();
}
