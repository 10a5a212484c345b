/**
 * Payload benchmarks (issue 3), each against the tool a user would pick
 * instead, measured in the same run:
 * - delta size and generation time on the fixture pair vs `zstd --patch-from`
 *   (also xdelta3 and bsdiff, which may not finish);
 * - full payload size vs `zstd -19 --long=27`;
 * - apply throughput (payload → verified, fsync'd slot) vs `dd bs=2M conv=fsync` + `sha256sum`;
 * - peak RSS of apply for a 512 MiB and a 2 GiB image vs an idle Node process.
 */
import { randomBytes } from 'node:crypto';
import { open, stat, writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import { generateKeySet } from '../../shared/key-files.ts';
import { emit, fixtureImages, measure, REPO, round, tempDir } from './lib/bench-kit.ts';

const TANDEM = join(REPO, 'bin', 'tandem.js');
const work = await tempDir('tandem-bench-payload-');
try {
  const keys = await generateKeySet(join(work.path, 'keys'));
  const create = (args: string[], out: string) =>
    measure(process.execPath, [TANDEM, 'payload', 'create', ...args, '--version', '1.1.0', '--board', 'bench', '--key', keys.releaseKey, '--keyring', keys.keyring, '--out', out, '--json']);
  // As the installed `tandem` runs it (its shebang sets a 1 MiB young generation).
  const apply = (payload: string, target: string, source?: string) =>
    measure(process.execPath, ['--max-semi-space-size=1', TANDEM, 'payload', 'apply', payload, '--target', target, '--root', keys.rootPub, ...(source ? ['--source', source] : []), '--json']);

  const images = await fixtureImages();
  if ('skipped' in images) {
    emit({ bench: 'fixture', skipped: images.skipped });
  } else {
    // Delta on the fixture pair.
    const delta = join(work.path, 'delta.tpl');
    const ours = await create(['--image', images.new, '--source', images.old, '--source-version', '1.0.0'], delta);
    if (ours.code !== 0) throw new Error(`payload create failed: ${ours.stdout}`);
    const oursSize = (await stat(delta)).size;
    const stats = JSON.parse(ours.stdout.toString()).stats as Record<string, number>;
    const patchFrom = join(work.path, 'patch-from.zst');
    const zstdDelta = await measure('zstd', ['-q', '-f', '--single-thread', '-19', '--long=31', `--patch-from=${images.old}`, images.new, '-o', patchFrom]);
    const zstdSize = (await stat(patchFrom)).size;
    emit({ bench: 'delta-size', image: 'fixture 1.0.0→1.1.0', bytes: oursSize, manifestBytes: stats.manifestBytes, operations: stats.operations, baseline: 'zstd --single-thread -19 --long=31 --patch-from', baselineBytes: zstdSize, ratio: round(oursSize / zstdSize), target: '< 1' });
    emit({ bench: 'delta-generate-time', seconds: ours.seconds, maxRssMiB: Math.round(ours.maxRssKiB / 1024), baseline: 'zstd --patch-from', baselineSeconds: zstdDelta.seconds, baselineMaxRssMiB: Math.round(zstdDelta.maxRssKiB / 1024), ratio: round(ours.seconds / zstdDelta.seconds) });

    const xdelta = join(work.path, 'delta.xd3');
    const xd = await measure('xdelta3', ['-e', '-f', '-s', images.old, images.new, xdelta]);
    if (xd.code === 0) emit({ bench: 'delta-size', baseline: 'xdelta3 -e -s', baselineBytes: (await stat(xdelta)).size, bytes: oursSize, ratio: round(oursSize / (await stat(xdelta)).size), seconds: xd.seconds });
    const bsdiffOut = join(work.path, 'delta.bsdiff');
    const bsdiffLimit = Number(process.env.TANDEM_BENCH_BSDIFF_SECONDS ?? 120);
    const bs = await measure('bsdiff', [images.old, images.new, bsdiffOut], { timeoutMs: bsdiffLimit * 1000 });
    if (bs.code === 0) emit({ bench: 'delta-size', baseline: 'bsdiff', baselineBytes: (await stat(bsdiffOut)).size, bytes: oursSize, ratio: round(oursSize / (await stat(bsdiffOut)).size), seconds: bs.seconds });
    else emit({ bench: 'delta-size', baseline: 'bsdiff', skipped: `did not finish within ${bsdiffLimit} s (TANDEM_BENCH_BSDIFF_SECONDS)` });

    // Applying the delta: our fixed-memory engine vs zstd's patch-from decoder.
    const slot = join(work.path, 'slot.img');
    await writeFile(slot, '');
    const appliedDelta = await apply(delta, slot, images.old);
    if (appliedDelta.code !== 0) throw new Error(`delta apply failed: ${appliedDelta.stdout}`);
    const zstdApply = await measure('zstd', ['-q', '-d', '-f', '--long=31', `--patch-from=${images.old}`, patchFrom, '-o', join(work.path, 'zstd-applied.img')]);
    emit({ bench: 'delta-apply', seconds: appliedDelta.seconds, maxRssMiB: Math.round(appliedDelta.maxRssKiB / 1024), baseline: 'zstd -d --patch-from', baselineSeconds: zstdApply.seconds, baselineMaxRssMiB: Math.round(zstdApply.maxRssKiB / 1024), ratio: round(zstdApply.seconds / appliedDelta.seconds) });

    // Full payload size.
    const full = join(work.path, 'full.tpl');
    const fullRun = await create(['--image', images.new], full);
    if (fullRun.code !== 0) throw new Error(`full payload create failed: ${fullRun.stdout}`);
    const fullSize = (await stat(full)).size;
    const zstdFull = join(work.path, 'full.zst');
    const zf = await measure('zstd', ['-q', '-f', '-19', '--long=27', images.new, '-o', zstdFull]);
    emit({ bench: 'full-size', bytes: fullSize, seconds: fullRun.seconds, baseline: 'zstd -19 --long=27', baselineBytes: (await stat(zstdFull)).size, baselineSeconds: zf.seconds, ratio: round(fullSize / (await stat(zstdFull)).size), target: '<= 1.10' });

    // Apply throughput: payload → slot, every hash checked, fsync'd, read back; vs dd + sha256sum of the raw image.
    await writeFile(slot, '');
    const appliedFull = await apply(full, slot);
    if (appliedFull.code !== 0) throw new Error(`full apply failed: ${appliedFull.stdout}`);
    const ddSlot = join(work.path, 'dd-slot.img');
    const dd = await measure('dd', [`if=${images.new}`, `of=${ddSlot}`, 'bs=2M', 'conv=fsync', 'status=none']);
    const sum = await measure('sha256sum', [images.new]);
    const baselineSeconds = dd.seconds + sum.seconds;
    const imageSize = (await stat(images.new)).size;
    emit({ bench: 'apply-throughput', image: 'fixture 1.1.0 (full payload)', MBps: round(imageSize / 1e6 / appliedFull.seconds, 1), seconds: appliedFull.seconds, baseline: 'dd bs=2M conv=fsync + sha256sum', baselineMBps: round(imageSize / 1e6 / baselineSeconds, 1), ratio: round(baselineSeconds / appliedFull.seconds), target: '>= 0.7' });
  }

  // Peak RSS of apply: the same for 512 MiB and 2 GiB, and bounded above an idle Node process.
  // Two idle baselines: bare Node, and the same CLI with its modules loaded through tsx (no build step) doing nothing.
  const bare = await measure(process.execPath, ['-e', '0']);
  const idle = await measure(process.execPath, ['--max-semi-space-size=1', TANDEM, 'help']);
  const idleMiB = idle.maxRssKiB / 1024;
  const bareMiB = bare.maxRssKiB / 1024;
  const rss: Record<string, number> = {};
  for (const mib of [512, 2048]) {
    const image = join(work.path, `synthetic-${mib}.img`);
    await writeSyntheticImage(image, mib * 1024 * 1024);
    const payload = join(work.path, `synthetic-${mib}.tpl`);
    const made = await create(['--image', image, '--level', '3'], payload);
    if (made.code !== 0) throw new Error(`synthetic payload create failed: ${made.stdout}`);
    const slot = join(work.path, `synthetic-${mib}-slot.img`);
    await writeFile(slot, '');
    const run = await apply(payload, slot);
    if (run.code !== 0) throw new Error(`synthetic apply failed: ${run.stdout}`);
    rss[mib] = run.maxRssKiB / 1024;
    emit({ bench: 'apply-rss', imageMiB: mib, maxRssMiB: round(rss[mib]!, 1), idleTandemMiB: round(idleMiB, 1), aboveIdleTandemMiB: round(rss[mib]! - idleMiB, 1), bareNodeMiB: round(bareMiB, 1), aboveBareNodeMiB: round(rss[mib]! - bareMiB, 1), target: '<= 64 above idle', seconds: run.seconds });
    await writeFile(slot, '');
    await writeFile(image, '');
  }
  emit({ bench: 'apply-rss-growth', from: '512 MiB', to: '2 GiB', deltaMiB: round(rss[2048]! - rss[512]!, 1), target: '<= 16' });
} finally {
  await work.remove();
}

/** An image like a root filesystem: zero runs, incompressible runs, repetitive text and repeated blocks. */
async function writeSyntheticImage(path: string, size: number): Promise<void> {
  const fh = await open(path, 'w');
  const chunk = Buffer.alloc(4 * 1024 * 1024);
  const words = 'usr lib bin etc systemd libc.so.6 appliance config health check service unit target wants network online '.split(' ');
  try {
    for (let offset = 0, i = 0; offset < size; offset += chunk.length, i++) {
      switch (i % 4) {
        case 0:
          chunk.fill(0);
          break;
        case 1:
          randomBytes(chunk.length).copy(chunk);
          break;
        case 2: {
          let at = 0;
          while (at < chunk.length) at += chunk.write(`${words[(at * 7 + i) % words.length]} `, at);
          break;
        }
        case 3:
          break; // repeats the previous chunk: TARGET_COPY material
      }
      await fh.write(chunk, 0, Math.min(chunk.length, size - offset), offset);
    }
  } finally {
    await fh.close();
  }
}
