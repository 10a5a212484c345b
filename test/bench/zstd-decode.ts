/**
 * Blob decoding speed (issue 5's throughput is bound by it on incompressible
 * images): the agent's decoders through FrameStream, as the reader drives them
 * (one zstd block per feed, taken in 2 MiB operations), against `zstd -d` on
 * the same frames, measured in the same run. Frames: 2 MiB of the fixture
 * image each (or of text-like synthetic data without it), level 19 with a
 * 4 MiB window, as the generator makes full-payload blobs. Decoders: each one
 * this runtime has (zstd-codec; node:zlib's on Node 24), and again on the node
 * TANDEM_BENCH_AGENT_NODE names, if any (the agent bench's variable).
 */
import { execFileSync, spawnSync } from 'node:child_process';
import { open, readFile, writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { FrameStream, loadZstdDecoder, type DecoderPreference } from '../../payloads/zstd.ts';
import { emit, fixtureImages, measure, round, tempDir } from './lib/bench-kit.ts';
import { makeImage } from '../agent/harness.ts';

const FRAME = 2 * 1024 * 1024;
const FRAMES = 24;
const ROUNDS = 3;
const work = await tempDir('tandem-bench-zstd-');
try {
  const frameDir = process.env.TANDEM_BENCH_ZSTD_FRAMES;
  const dir = frameDir ?? work.path;
  if (frameDir === undefined) await makeFrames(dir);
  const frames = await Promise.all(Array.from({ length: FRAMES }, (_, i) => readFile(join(dir, `frame-${i}.zst`))));
  const mib = (FRAMES * FRAME * ROUNDS) / 2 ** 20;

  // The baseline: zstd -d over the same frames (one file, concatenated frames decode as one stream).
  const all = join(work.path, 'all.zst');
  await writeFile(all, Buffer.concat(Array.from({ length: ROUNDS }, () => frames).flat()));
  const cli = await measure('bash', ['-c', 'zstd -d -q -c "$1" > /dev/null', 'bench', all]);
  if (cli.code !== 0) throw new Error('zstd -d failed');

  const figures = await decodeHere(frames, mib);
  const other = process.env.TANDEM_BENCH_AGENT_NODE;
  if (frameDir === undefined && other && other !== process.execPath) {
    const child = spawnSync(other, ['--import', 'tsx', fileURLToPath(import.meta.url)], { env: { ...process.env, TANDEM_BENCH_ZSTD_FRAMES: dir, TANDEM_BENCH_AGENT_NODE: '' }, encoding: 'utf8' });
    if (child.status !== 0) throw new Error(`${other} exited ${child.status}: ${child.stderr}`);
    for (const line of child.stdout.split('\n').filter(Boolean)) figures.push(JSON.parse(line) as Figure);
  }
  if (frameDir !== undefined) {
    for (const f of figures) process.stdout.write(`${JSON.stringify(f)}\n`);
  } else {
    const cliMiBps = mib / cli.seconds;
    for (const f of figures) {
      emit({ bench: 'zstd-decode', ...f, baseline: 'zstd -d (same frames)', baselineMiBps: round(cliMiBps, 1), ratio: round(f.MiBps / cliMiBps) });
    }
  }
} finally {
  await work.remove();
}

interface Figure {
  node: string;
  decoder: string;
  MiBps: number;
}

/** Each decoder this runtime has, ROUNDS times over the frames, taken in 2 MiB pieces as the reader takes operations. */
async function decodeHere(frames: Buffer[], mib: number): Promise<Figure[]> {
  const out = Buffer.alloc(FRAME);
  const figures: Figure[] = [];
  for (const prefer of ['wasm', 'native'] satisfies DecoderPreference[]) {
    const decoder = await loadZstdDecoder(prefer).catch(() => undefined);
    if (!decoder) continue;
    const started = performance.now();
    for (let r = 0; r < ROUNDS; r++) {
      for (const frame of frames) {
        const stream = new FrameStream(decoder, frame, { rawSize: FRAME, maxWindowSize: 2 ** 23 });
        stream.take(FRAME, out);
        stream.finish();
      }
    }
    figures.push({ node: process.version, decoder: decoder.name, MiBps: round(mib / ((performance.now() - started) / 1000), 1) });
  }
  return figures;
}

async function makeFrames(dir: string): Promise<void> {
  const fixtures = await fixtureImages();
  const source = 'skipped' in fixtures ? undefined : await open(fixtures.new, 'r');
  try {
    const raw = Buffer.alloc(FRAME);
    for (let i = 0; i < FRAMES; i++) {
      if (source) await source.read(raw, 0, FRAME, (16 + i) * FRAME); // past the superblock and inode tables: file data
      else makeImage(FRAME / 2 ** 20, 500 + i).copy(raw);
      await writeFile(join(dir, `frame-${i}.zst`), execFileSync('zstd', ['-q', '-c', '-19', '--zstd=wlog=22', `--stream-size=${FRAME}`], { input: raw }));
    }
  } finally {
    await source?.close();
  }
}
