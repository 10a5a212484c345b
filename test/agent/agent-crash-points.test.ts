/**
 * A crash before every durable write, deterministically. The agent runs in this
 * process; its state saves, prelude save and boot-env writes are wrapped so that
 * write number N throws instead (the process "dies" there: every later write
 * throws too, so nothing after the crash point reaches the disk). Then a new
 * agent starts on the same folder — after a simulated power cut (decideBoot
 * applied to the boot env, as the bootloader would) or without one — and the
 * update must still end committed, with the bootable slot verified at every
 * step. Complements ../campaigns/power.test.ts (random SIGKILLs of the real CLI), which
 * rarely lands in the short verifying and finalizing windows.
 */
import test from 'ava';
import { rm } from 'node:fs/promises';
import { join } from 'node:path';
import { DeviceAgent } from '../../agent/agent.ts';
import { decideBoot } from '../../agent/boot-control/boot-decision.ts';
import { JsonEnvStore } from '../../agent/boot-control/file-backend.ts';
import { StateStore } from '../../agent/state-store.ts';
import { evolveImage, makeDevice, makeFleetKeys, makeImage, makeRelease, ProtocolServer, tempDir, type Device, type Release } from './harness.ts';

const keys = makeFleetKeys();
let dir = '';
let server: ProtocolServer;
let v2: Release;
let image1: Buffer;

class Crash extends Error {
  override name = 'Crash';
}

let budget = Infinity;
/** The simulated bootloader's own write is not the agent's: never a crash point. */
let bootloaderRunning = false;
const phasesAtCrash: string[] = [];
function wrap<T extends object>(proto: T, method: keyof T & string, describe: (self: T) => string): void {
  const original = proto[method] as unknown as (...args: unknown[]) => Promise<unknown>;
  (proto as Record<string, unknown>)[method] = async function (this: T, ...args: unknown[]) {
    if (bootloaderRunning) return original.apply(this, args);
    if (budget <= 0) throw new Crash(`dead (${method})`);
    if (--budget === 0) {
      phasesAtCrash.push(describe(this));
      throw new Crash(`crash before ${method}`);
    }
    return original.apply(this, args);
  };
}

test.before(async () => {
  dir = await tempDir('crash');
  image1 = makeImage(2, 51);
  v2 = await makeRelease(join(dir, 'releases'), keys, '1.1.0', evolveImage(image1, 52), { from: { version: '1.0.0', image: image1 } });
  server = await new ProtocolServer({ keys }).start();
  wrap(StateStore.prototype, 'save', () => 'state');
  wrap(StateStore.prototype, 'savePrelude', () => 'prelude');
  wrap(JsonEnvStore.prototype, 'save', () => 'bootenv');
});
test.after.always(async () => {
  await server?.close();
  await rm(dir, { recursive: true, force: true });
});

async function bootableVerified(dev: Device): Promise<boolean> {
  const { boot } = decideBoot(await new JsonEnvStore(dev.bootEnv).load().catch(() => null));
  const bytes = await dev.slot(boot);
  const want = boot === 'A' ? image1 : v2.image;
  return bytes.length >= want.length && bytes.subarray(0, want.length).equals(want);
}

/** Runs cycles (restarting after each crash, rebooting when asked or after a power cut) until committed. */
async function runToEnd(dev: Device, powerCut: boolean): Promise<string> {
  for (let round = 0; round < 20; round++) {
    let crashed = false;
    try {
      const agent = await DeviceAgent.open(await dev.config());
      try {
        const r = await agent.cycle();
        if (r.result === 'committed') return 'committed';
        if (r.result === 'rolledBack') return `rolledBack:${r.code}`;
      } finally {
        await agent.close();
      }
    } catch (err) {
      if (!(err instanceof Crash) && !(err instanceof Error && err.cause instanceof Crash) && !String((err as Error).message).includes('crash') && !String((err as Error).message).includes('dead')) throw err;
      crashed = true;
    }
    if (crashed) budget = Infinity; // restarted after the crash: writes work again (one crash per update)
    if ((await dev.rebootRequested()) || (crashed && powerCut)) {
      await dev.clearRebootRequest();
      bootloaderRunning = true;
      await dev.reboot().finally(() => (bootloaderRunning = false));
    }
    if (!(await bootableVerified(dev))) throw new Error(`round ${round}: the bootable slot is not verified`);
    const state = await new StateStore(dev.stateDir).load();
    if (state.phase === 'idle' && state.slots.B?.version === '1.1.0' && (await dev.control.read()).good.B) return 'committed';
  }
  throw new Error('never finished');
}

for (const [kind, powerCut] of [['full', false], ['delta', true]] as const) {
  test.serial(`${kind} update: a crash before each durable write (${powerCut ? 'with' : 'without'} a power cut) always recovers`, async (t) => {
    server.offer = (req) => (req.version === '1.0.0' && !req.failedVersions.includes('1.1.0') ? { version: '1.1.0', payload: kind === 'full' ? v2.full : v2.delta! } : undefined);
    let point = 1;
    const outcomes = new Map<string, number>();
    phasesAtCrash.length = 0;
    for (;; point++) {
      budget = Infinity;
      const dev = await makeDevice(join(dir, `${kind}-${point}`), { server: server.url, keys, version: '1.0.0', image: image1, overrides: { download: { retries: 0, checkpointEveryBytes: 512 * 1024 } } });
      budget = point;
      const crashesBefore = phasesAtCrash.length;
      const outcome = await runToEnd(dev, powerCut);
      outcomes.set(outcome, (outcomes.get(outcome) ?? 0) + 1);
      if (phasesAtCrash.length === crashesBefore) break; // write number `point` was never reached: every point covered
      t.true(outcome === 'committed' || outcome === 'rolledBack:ERR_BOOT_FALLBACK', `crash point ${point}: ${outcome}`);
    }
    t.log(`${point - 1} crash points (${phasesAtCrash.join(' ')}); outcomes ${JSON.stringify(Object.fromEntries(outcomes))}`);
    t.true(point > 15);
    for (const phase of ['prelude', 'bootenv']) t.true(phasesAtCrash.includes(phase));
  });
}
