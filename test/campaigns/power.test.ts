/**
 * The power-loss campaign, reduced (power-harness.ts says what it does): a few
 * dozen SIGKILLs of the real agent CLI at random instants, most of them power
 * cuts, some tearing the writes in flight, over the release train (deltas and
 * full payloads, and a release whose health check fails). The seed is random
 * and logged: TANDEM_POWER_SEED=N repeats its choices, TANDEM_POWER_KILLS=N
 * changes the count. `npm run campaign:power` is the full run (200 kills).
 */
import test from 'ava';
import { existsSync } from 'node:fs';
import { mkdtemp, readdir, readFile, rm, truncate } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { makeDevice, makeFleetKeys, makeImage, makeRelease, ProtocolServer } from '../agent/harness.ts';
import { bundleAgent, reachableSlots, runAgent, runPowerCampaign, createRandom, type PowerSummary } from './power-harness.ts';
import { reportLine } from './report.ts';

const KILLS = Number(process.env.TANDEM_POWER_KILLS ?? 32);
const SEED = Number(process.env.TANDEM_POWER_SEED ?? Math.floor(Math.random() * 2 ** 31));

test.serial(`${KILLS} kills (power cuts, torn writes) across every phase: never bricked, never unverified, every cycle over`, async (t) => {
  t.timeout(240_000);
  t.log(`seed ${SEED} (TANDEM_POWER_SEED=${SEED} repeats its choices)`);
  const s: PowerSummary = await runPowerCampaign({ seed: SEED, kills: KILLS, imageMiB: 1, tear: 0.6, log: (line) => t.log(line) });
  t.log(reportLine('power', { ...s, violations: s.violations.length }));
  for (const v of s.violations) t.log(`VIOLATION ${v.kind} ${v.device}: ${v.detail}`);
  t.deepEqual(s.violations, [], 'no invariant broke');
  t.is(s.bricked, 0, 'every slot the bootloader can reach holds a verified image');
  t.is(s.unverifiedBoots, 0, 'no boot of bytes that are no release image');
  t.is(s.runningSlotWritten, 0, 'the running slot is never written');
  t.is(s.stuck, 0, 'every device ends committed or cleanly back');
  t.is(s.unreported, 0, 'every failure reached the server');
  t.true(s.kills >= KILLS);
  t.is(s.cycles, s.updatesCompleted + s.updatesAbandonedCleanly, 'every cycle ended completed or cleanly abandoned');
  t.true(s.devices >= 2 && s.cycles >= 3 * s.devices, 'every device went through the whole train');
  // Power cuts during a trial may use up its tries (the bootloader falls back, ERR_BOOT_FALLBACK): a clean end, so only some must commit.
  t.true(s.updatesCompleted > 0, 'good releases commit');
  t.is(s.completedByKind.full + s.completedByKind.delta, s.updatesCompleted);
  t.true((s.abandonedBy.ERR_HEALTH_CHECK ?? 0) + (s.abandonedBy.ERR_BOOT_FALLBACK ?? 0) >= s.devices, 'the failing release rolled back on every device');
  t.true(s.distinctStates >= 6, `kills landed in ${s.distinctStates} phases: ${JSON.stringify(s.killsByState)}`);
  for (const phase of ['downloading', 'healthChecking']) t.true((s.killsByState[phase] ?? 0) > 0, `kills landed in ${phase}`);
  t.true(s.powerCuts > 0 && s.tears.tempFile + s.tears.slotGarbage > 0, 'power cuts tore writes');
});

test('reachableSlots follows the try counter to the fallback', (t) => {
  const trial = new Map([['TANDEM_ACTIVE', 'B'], ['TANDEM_TRIAL', '1'], ['TANDEM_TRIES', '2'], ['TANDEM_A_GOOD', '1'], ['TANDEM_B_GOOD', '0']]);
  t.deepEqual(reachableSlots(trial).sort(), ['A', 'B']);
  t.deepEqual(reachableSlots(new Map([['TANDEM_ACTIVE', 'A'], ['TANDEM_A_GOOD', '1']])), ['A']);
  t.deepEqual(reachableSlots(null), ['A'], 'an unreadable env boots the safe default');
});

test('createRandom repeats its sequence for a seed', (t) => {
  const a = createRandom(42);
  const b = createRandom(42);
  const xs = Array.from({ length: 5 }, () => a());
  t.deepEqual(xs, Array.from({ length: 5 }, () => b()));
  t.true(xs.every((x) => x >= 0 && x < 1));
});

/**
 * A state.json torn in place (a medium without atomic rename, or corruption):
 * the agent notices, sets the file aside and carries on from a blank state —
 * it never refuses every start. The running slot is on trial with no update on
 * record, so the health checks decide (here they pass: it is confirmed).
 */
test('a torn state.json on a trial boot: the agent recovers instead of refusing forever', async (t) => {
  t.timeout(120_000);
  const dir = await mkdtemp(join(existsSync('/dev/shm') ? '/dev/shm' : tmpdir(), 'tandem-torn-state-'));
  const keys = makeFleetKeys();
  const server = await new ProtocolServer({ keys }).start();
  try {
    const image = makeImage(1, 7);
    const next = await makeRelease(join(dir, 'releases'), keys, '1.1.0', makeImage(1, 8));
    server.offer = (req) => (req.version === '1.0.0' && !req.failedVersions.includes('1.1.0') ? { version: '1.1.0', payload: next.full } : undefined);
    const launcher = await bundleAgent(dir);
    const dev = await makeDevice(join(dir, 'device'), { server: server.url, keys, version: '1.0.0', image });
    t.is((await runAgent(launcher, dev, undefined)).code, 0, 'installed 1.1.0 into B');
    await dev.clearRebootRequest();
    t.is(await dev.reboot(), 'B', 'on trial in B');
    const statePath = join(dev.stateDir, 'state.json');
    const text = await readFile(statePath, 'utf8');
    await truncate(statePath, Math.floor(text.length / 2));
    const run = await runAgent(launcher, dev, undefined);
    t.not(run.code, 65, 'exit 65 (ERR_STATE_CORRUPT) would be refusing to start');
    t.true((await readdir(dev.stateDir)).some((f) => f.startsWith('state.json.corrupt-')), 'the torn file is kept aside');
    t.like(await dev.control.read(), { active: 'B', trial: false, good: { B: true } }, 'the trial was confirmed by the health checks');
    const state = JSON.parse(await readFile(statePath, 'utf8')) as { phase: string; lastError?: { code: string } };
    t.is(state.phase, 'idle');
    t.is(state.lastError?.code, 'ERR_STATE_CORRUPT');
    t.is(await dev.reboot(), 'B', 'B stays');
  } finally {
    await server.close();
    await rm(dir, { recursive: true, force: true });
  }
});
