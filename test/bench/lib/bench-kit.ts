/**
 * What every benchmark shares: JSON lines on stdout (STYLE.md 14), timing and
 * peak memory of child commands (GNU time), and the fixture images.
 */
import { spawn } from 'node:child_process';
import { existsSync } from 'node:fs';
import { mkdir, mkdtemp, rm } from 'node:fs/promises';
import { homedir, tmpdir } from 'node:os';
import { dirname, join, resolve } from 'node:path';
import { fileURLToPath } from 'node:url';

export const REPO = resolve(dirname(fileURLToPath(import.meta.url)), '../../..');

export function emit(record: Record<string, unknown>): void {
  process.stdout.write(`${JSON.stringify(record)}\n`);
}

export interface Measured {
  seconds: number;
  /** Peak resident set of the command, in KiB (GNU time %M). */
  maxRssKiB: number;
  stdout: Buffer;
  code: number | null;
}

/** Runs a command under /usr/bin/time, returning wall time, peak RSS and stdout. */
export function measure(cmd: string, args: string[], options: { timeoutMs?: number; stdoutTo?: string; cwd?: string; env?: Record<string, string> } = {}): Promise<Measured> {
  return new Promise((resolvePromise, reject) => {
    const timeArgs = ['-f', '%e %M', '--', 'bash', '-c', 'exec "$@"' + (options.stdoutTo ? ' > "$TANDEM_BENCH_OUT"' : ''), 'bench', cmd, ...args];
    const child = spawn('/usr/bin/time', timeArgs, {
      stdio: ['ignore', 'pipe', 'pipe'],
      // Own process group, so a timeout kills the measured command too, not just `time`.
      detached: true,
      cwd: options.cwd ?? REPO,
      env: { ...process.env, ...options.env, ...(options.stdoutTo ? { TANDEM_BENCH_OUT: options.stdoutTo } : {}) },
    });
    const out: Buffer[] = [];
    const err: Buffer[] = [];
    child.stdout.on('data', (c: Buffer) => out.push(c));
    child.stderr.on('data', (c: Buffer) => err.push(c));
    const timer = options.timeoutMs ? setTimeout(() => process.kill(-child.pid!, 'SIGKILL'), options.timeoutMs) : undefined;
    child.on('error', reject);
    child.on('close', (code) => {
      if (timer) clearTimeout(timer);
      const lines = Buffer.concat(err).toString().trim().split('\n');
      const last = lines[lines.length - 1] ?? '';
      const m = /^([\d.]+) (\d+)$/.exec(last);
      resolvePromise({ seconds: m ? Number(m[1]) : NaN, maxRssKiB: m ? Number(m[2]) : NaN, stdout: Buffer.concat(out), code });
    });
  });
}

export async function tempDir(prefix: string): Promise<{ path: string; remove(): Promise<void> }> {
  const base = process.env.TANDEM_BENCH_TMP ?? tmpdir();
  await mkdir(base, { recursive: true });
  const path = await mkdtemp(join(base, prefix));
  return { path, remove: () => rm(path, { recursive: true, force: true }) };
}

export interface FixtureImages {
  old: string;
  new: string;
}

/**
 * The two Debian appliance images of ../shared/fixtures (1.0.0 and 1.1.0).
 * Built once into TANDEM_IMAGES (default ~/.cache/tandem-images) when root and
 * a mirror are available; otherwise the caller reports the benchmark skipped.
 */
export async function fixtureImages(): Promise<FixtureImages | { skipped: string }> {
  const dir = process.env.TANDEM_IMAGES ?? join(homedir(), '.cache', 'tandem-images');
  const images = { old: join(dir, 'rootfs-1.0.0.img'), new: join(dir, 'rootfs-1.1.0.img') };
  if (existsSync(images.old) && existsSync(images.new)) return images;
  const script = resolve(REPO, '../shared/fixtures/build-images.sh');
  if (!existsSync(script)) return { skipped: `no fixture images in ${dir} and no ${script} to build them` };
  if (process.getuid?.() !== 0) return { skipped: `no fixture images in ${dir}; building them needs root (${script})` };
  process.stderr.write(`building fixture images into ${dir} (about a minute)…\n`);
  const built = await measure('bash', [script, dir]);
  if (built.code !== 0 || !existsSync(images.new)) return { skipped: `building fixture images failed (exit ${built.code})` };
  return images;
}

export function round(n: number, digits = 3): number {
  const f = 10 ** digits;
  return Math.round(n * f) / f;
}
