/**
 * Power loss at any instant. The agent CLI (`tandem-agent check`) runs as a
 * child process and is killed with SIGKILL at random instants, over and over,
 * until the update is over. After each kill the device may also lose power: a
 * reboot is simulated — nothing here can reboot — by applying the bootloader's
 * decision (decideBoot, what agent/boot's scripts do) to the boot env before
 * the agent starts again. When the agent itself asks for a reboot (its reboot
 * command touches a marker), the reboot happens the same way.
 *
 * After every kill the invariant is checked: the slot the bootloader would boot
 * next holds a verified image (the old one, or exactly the new one), and the
 * running slot was never written. Every device ends committed on the new
 * version, or cleanly back on the old one with the version reported failed.
 *
 * Speed: the CLI is bundled once with esbuild (what tsx uses), so a start costs
 * a fraction of a second instead of a TypeScript compile; set
 * TANDEM_KILL_LAUNCHER=tsx to spawn bin/tandem-agent.js itself (slower).
 */
import test from 'ava';
import { spawn } from 'node:child_process';
import { existsSync } from 'node:fs';
import { mkdtemp, readFile, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { fileURLToPath, pathToFileURL } from 'node:url';
import { build } from 'esbuild';
import { decideBoot } from '../../agent/boot-control/boot-decision.ts';
import { JsonEnvStore } from '../../agent/boot-control/file-backend.ts';
import type { AgentState } from '../../agent/state.ts';
import { evolveImage, makeDevice, makeFleetKeys, makeImage, makeRelease, ProtocolServer, type Device, type Release } from './harness.ts';

const ROOT = fileURLToPath(new URL('../../', import.meta.url));
const KILLS = Number(process.env.TANDEM_KILLS ?? 100);
const keys = makeFleetKeys();
let dir = '';
let server: ProtocolServer;
let v1: Release;
let v2: Release;
let image1: Buffer;
let launcher: string[] = [];

test.before(async () => {
  // On tmpfs when there is one: a SIGKILL loses nothing the kernel holds, so what is
  // tested is the same, and fsync costs nothing (on a busy disk it is most of a run).
  dir = await mkdtemp(join(existsSync('/dev/shm') ? '/dev/shm' : tmpdir(), 'tandem-agent-kill-'));
  image1 = makeImage(2, 21);
  v1 = await makeRelease(join(dir, 'releases'), keys, '1.0.0', image1);
  v2 = await makeRelease(join(dir, 'releases'), keys, '1.1.0', evolveImage(image1, 22, 0.3), { from: { version: '1.0.0', image: image1 } });
  server = await new ProtocolServer({ keys }).start();
  // A slow link (1 MiB/s), so that kills land while downloading too, not only around it.
  server.payloadBytesPerSecond = 1024 * 1024;
  if (process.env.TANDEM_KILL_LAUNCHER === 'tsx') {
    launcher = [join(ROOT, 'bin/tandem-agent.js')];
  } else {
    const out = join(dir, 'tandem-agent.mjs');
    await build({
      entryPoints: [join(ROOT, 'bin/tandem-agent.ts')],
      bundle: true,
      platform: 'node',
      format: 'esm',
      target: 'node20',
      outfile: out,
      logLevel: 'warning',
      // Run-time requires (payloads/zstd.ts loads zstd-codec with createRequire(import.meta.url)) resolve from the repository.
      define: { 'import.meta.url': JSON.stringify(pathToFileURL(join(ROOT, 'package.json')).href) },
      banner: { js: `import { createRequire as __tandemRequire } from 'node:module'; const require = __tandemRequire(${JSON.stringify(join(ROOT, 'package.json'))});` },
    });
    launcher = [out];
  }
});
test.after.always(async () => {
  await server?.close();
  await rm(dir, { recursive: true, force: true });
});

interface Run {
  code: number | null;
  killed: boolean;
  stderr: string;
}

function runAgent(dev: Device, killAfterMs: number | undefined): Promise<Run> {
  return new Promise((resolve) => {
    const child = spawn(process.execPath, [...launcher, 'check', '--config', dev.configPath, '--quiet'], { stdio: ['ignore', 'ignore', 'pipe'] });
    let stderr = '';
    child.stderr.on('data', (c: Buffer) => (stderr = (stderr + c.toString()).slice(-4000)));
    let killed = false;
    const timer = killAfterMs === undefined ? undefined : setTimeout(() => {
      killed = child.kill('SIGKILL');
    }, killAfterMs);
    child.on('close', (code) => {
      clearTimeout(timer);
      resolve({ code, killed, stderr });
    });
  });
}

async function phaseOf(dev: Device): Promise<string> {
  const text = await readFile(join(dev.stateDir, 'state.json'), 'utf8').catch(() => '');
  return text ? (JSON.parse(text) as AgentState).phase : 'none';
}

async function stateOf(dev: Device): Promise<AgentState | undefined> {
  const text = await readFile(join(dev.stateDir, 'state.json'), 'utf8').catch(() => '');
  return text ? (JSON.parse(text) as AgentState) : undefined;
}

/** The slot the bootloader would start now, and whether it holds a verified image. */
async function bootableIsVerified(dev: Device): Promise<{ slot: 'A' | 'B'; ok: boolean; what: string }> {
  const vars = await new JsonEnvStore(dev.bootEnv).load().catch(() => null);
  const { boot } = decideBoot(vars);
  const bytes = await dev.slot(boot);
  const holds = (img: Buffer) => bytes.length >= img.length && bytes.subarray(0, img.length).equals(img);
  if (boot === 'A') return { slot: boot, ok: holds(v1.image), what: 'A must hold 1.0.0' };
  return { slot: boot, ok: holds(v2.image), what: 'B must hold exactly 1.1.0' };
}

test.serial(`kill -9 at ${KILLS}+ random instants (and random power cuts): always recovers`, async (t) => {
  t.timeout(170_000);
  // Full payloads to some devices, deltas to others.
  server.offer = (req) => (req.version === '1.0.0' && !req.failedVersions.includes('1.1.0') ? { version: '1.1.0', payload: req.deviceId.charCodeAt(req.deviceId.length - 1) % 2 === 0 ? v2.full : v2.delta! } : undefined);
  let kills = 0;
  let n = 0;
  let seed = 12345;
  const random = () => {
    seed = (seed * 1103515245 + 12345) & 0x7fffffff;
    return seed / 0x7fffffff;
  };
  const phases = new Map<string, number>();
  const outcomes: string[] = [];
  // A clean run's duration (start-up included), to aim kills across its whole life.
  let span = 2000;

  const updateOneDevice = async (index: number): Promise<boolean> => {
    const dev = await makeDevice(join(dir, `device-${index}`), {
      server: server.url,
      keys,
      version: '1.0.0',
      image: image1,
      overrides: {
        health: { deadlineSeconds: 30, intervalSeconds: 0.1, checks: [{ type: 'command', command: ['sleep', '0.4'] }] },
        download: { connectTimeoutSeconds: 2, readTimeoutSeconds: 2, retries: 3, backoffBaseSeconds: 0.05, backoffMaxSeconds: 0.2, checkpointEveryBytes: 256 * 1024 },
      },
    });
    let last = '';
    for (let step = 0; step < 80; step++) {
      // Every fourth run is left alone, so an update always moves on between kills.
      const killAt = kills < KILLS && step % 4 !== 3 ? Math.floor(100 + random() * span) : undefined;
      const started = Date.now();
      const run = await runAgent(dev, killAt);
      last = `${run.killed ? 'killed' : `exit ${run.code}`} ${run.stderr.slice(-600)}`;
      if (!run.killed) span = Math.max(600, Math.min(6000, Math.round((span + (Date.now() - started)) / 2)));
      if (run.killed) {
        kills++;
        const phase = await phaseOf(dev);
        phases.set(phase, (phases.get(phase) ?? 0) + 1);
      } else if (![0, 1, 2, 4].includes(run.code ?? -1)) {
        t.fail(`agent exited ${run.code}: ${run.stderr}`);
        return false;
      }
      // The agent asked for a reboot, or the power went out (half of the kills).
      const powerCut = run.killed && random() < 0.5;
      if ((await dev.rebootRequested()) || powerCut) {
        await dev.clearRebootRequest();
        await dev.reboot();
      }
      const bootable = await bootableIsVerified(dev);
      if (!bootable.ok) {
        t.fail(`after ${run.killed ? 'a kill' : 'a run'} in phase ${await phaseOf(dev)}, the bootloader would boot slot ${bootable.slot}, which is not verified (${bootable.what})`);
        return false;
      }
      const state = await stateOf(dev);
      if (!(await dev.slot('A')).subarray(0, v1.image.length).equals(v1.image)) {
        t.fail('slot A (the old, running slot) was written');
        return false;
      }
      // Over: committed (B recorded as 1.1.0 and confirmed in the boot env), or 1.1.0 barred after a rollback.
      const boot = await dev.control.read();
      const committed = state?.slots.B?.version === '1.1.0' && boot.active === 'B' && boot.good.B && !boot.trial;
      if (!run.killed && state?.phase === 'idle' && (committed || state.failedVersions.includes('1.1.0'))) {
        outcomes.push(committed ? 'committed' : `rolledBack:${state.lastOutcome?.code ?? state.lastError?.code}`);
        if (committed) {
          t.like(boot, { active: 'B', trial: false }, 'committed: B is active and confirmed');
          t.true((await dev.slot('B')).subarray(0, v2.image.length).equals(v2.image));
        } else {
          t.is(boot.active, 'A', 'rolled back: A is active');
        }
        return true;
      }
    }
    t.fail(`device ${index} never finished its update: ${JSON.stringify({ ...(await stateOf(dev)), outbox: undefined })} boot=${JSON.stringify(await dev.control.read())} last=${last}`);
    return false;
  };

  // Two devices at a time (each its own agent processes), until enough kills landed.
  const worker = async (): Promise<void> => {
    while (kills < KILLS) {
      if (!(await updateOneDevice(n++))) return;
    }
  };
  await Promise.all([worker(), worker()]);
  t.log(`${kills} kills over ${n} devices (clean run ≈ ${span} ms); phase at kill: ${JSON.stringify(Object.fromEntries(phases))}; outcomes: ${outcomes.join(', ')}`);
  t.true(kills >= KILLS);
  t.true((phases.get('downloading') ?? 0) > 2, 'some kills landed while downloading');
  t.true((phases.get('waitingForReboot') ?? 0) + (phases.get('healthChecking') ?? 0) + (phases.get('finalizing') ?? 0) > 0, 'some kills landed around the reboot');
  t.true(outcomes.filter((o) => o === 'committed').length > outcomes.length / 2, 'most devices commit (power cuts may exhaust a trial)');
});
