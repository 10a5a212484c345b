/**
 * Child process of the fleet simulation: runs a share of the simulated
 * devices (fleet-device.ts) against the server, so the fleet's own work
 * (JSON, signature checks, timers) runs beside the server, not in its
 * process, and the server's CPU and RSS are its own. Speaks the benchmarks'
 * child protocol (test/bench/lib/bench-child.ts):
 *
 * - `enroll` {plan, ids, token}: enrolls its devices over HTTP (each gets the
 *   credential the server issues), a few at a time;
 * - `start` {anchor, quietUntil}: every device starts polling, on the
 *   campaign's clock (check-in latencies before policy second `quietUntil`
 *   are also kept apart);
 * - `pace` {anchor?}: follows the campaign's clock (a new rate), and answers
 *   the check-in and event latencies since the last `pace` (p90, count);
 * - `progress`: the ledger's tally so far (small);
 * - `finish`: stops the devices (each ends at its next wait), and answers the
 *   final tally, the check-in latencies and the watched release's offer and
 *   outcome times.
 */
import { monitorEventLoopDelay } from 'node:perf_hooks';
import { Pool } from 'undici';
import { loadZstdCodec } from '../../payloads/zstd.ts';
import { decodeBase64Strict } from '../../shared/keys.ts';
import { validateEnrollResponse } from '../../shared/schemas/protocol.ts';
import { serveParent } from '../bench/lib/bench-child.ts';
import { CheckVerifier, FleetLedger, healthFails, SimClock, SimDevice, type ClockAnchor, type FleetIo, type FleetPlan } from './fleet-device.ts';

/** Connections per worker: a reverse proxy's upstream pool, not one socket per device. */
const CONNECTIONS = 32;
const ENROLL_IN_FLIGHT = 16;

let plan: FleetPlan | undefined;
let pool: Pool | undefined;
let devices: SimDevice[] = [];
let io: FleetIo | undefined;
let running: Promise<void[]> | undefined;
const abort = new AbortController();
const loopDelay = monitorEventLoopDelay({ resolution: 5 });

async function enroll(p: FleetPlan, ids: string[], token: string): Promise<Record<string, unknown>> {
  plan = p;
  pool = new Pool(p.url, { connections: CONNECTIONS, pipelining: 1, keepAliveTimeout: 60_000 });
  const root = decodeBase64Strict(p.rootPublicKey, 32);
  if (root === undefined) throw new Error('bad root public key');
  const verifier = new CheckVerifier({ rootKeys: [root], threshold: 1 }, p.url, await loadZstdCodec());
  const clock = new SimClock(1, abort.signal);
  io = {
    pool, verifier, ledger: new FleetLedger(p.failingVersion, () => clock.now()), clock, latencies: [], eventLatencies: [], quietLatencies: [], quietUntil: 0, window: { checks: [], events: [] }, signal: abort.signal,
  };
  const credentials = new Array<string>(ids.length);
  const started = performance.now();
  let next = 0;
  await Promise.all(Array.from({ length: ENROLL_IN_FLIGHT }, async () => {
    while (next < ids.length) {
      const i = next++;
      const res = await pool!.request({
        method: 'POST',
        path: '/v1/devices/enroll',
        headers: { 'content-type': 'application/json' },
        body: JSON.stringify({ token, deviceId: ids[i], product: p.product, board: p.board, channel: p.channel }),
      });
      const text = await res.body.text();
      if (res.statusCode !== 201) throw new Error(`enroll ${ids[i]}: HTTP ${res.statusCode} ${text.slice(0, 300)}`);
      credentials[i] = validateEnrollResponse(JSON.parse(text), 'enroll response').credential;
    }
  }));
  const seconds = (performance.now() - started) / 1000;
  devices = ids.map((id, i) => new SimDevice(id, credentials[i]!, p, io!));
  return { enrolled: devices.length, seconds };
}

function progress(): Record<string, unknown> {
  const { tally } = io!.ledger;
  const cpu = process.cpuUsage();
  return { tally, cpuUs: cpu.user + cpu.system, verifier: { full: io!.verifier.full, fast: io!.verifier.fast } };
}

serveParent({}, async (m) => {
  switch (m.type) {
    case 'enroll':
      return enroll(m.plan as FleetPlan, m.ids as string[], m.token as string);
    case 'start':
      if (!io || !plan) throw new Error('enroll first');
      io.clock.follow(m.anchor as ClockAnchor);
      io.quietUntil = m.quietUntil as number;
      loopDelay.enable();
      running = Promise.all(devices.map((d) => d.run()));
      return {};
    case 'pace': {
      if (m.anchor !== undefined) io!.clock.follow(m.anchor as ClockAnchor);
      const { checks, events } = io!.window;
      io!.window = { checks: [], events: [] };
      const p90 = (xs: number[]): number => (xs.length === 0 ? 0 : xs.sort((a, b) => a - b)[Math.floor(xs.length * 0.9)]!);
      return { checks: checks.length, checkP90Ms: p90(checks), events: events.length, eventP90Ms: p90(events) };
    }
    case 'progress':
      return progress();
    case 'finish': {
      abort.abort();
      await running;
      await pool?.close();
      const ledger = io!.ledger;
      return {
        ...progress(),
        latencies: io!.latencies,
        eventLatencies: io!.eventLatencies,
        quietLatencies: io!.quietLatencies,
        offerTimes: ledger.offerTimes,
        // The model's own consistency: exactly the devices the rule makes fail did.
        healthRuleBroken: ledger.outcomesOf(plan!.failingVersion).filter((o) => o.failed !== healthFails(o.id, plan!.failBp)).map((o) => o.id),
        outcomeTimes: ledger.outcomeTimes,
        loopDelayP99Ms: Math.round(loopDelay.percentile(99) / 1e4) / 100,
        loopDelayMaxMs: Math.round(loopDelay.max / 1e4) / 100,
      };
    }
    default:
      throw new Error(`unknown request ${m.type}`);
  }
}, async () => {
  // Stopped without `finish` (the parent gave up): end the devices' waits so the process can exit.
  abort.abort();
  await pool?.destroy();
});
