/**
 * The fleet simulation (`npm run campaign:fleet`): 10,000 simulated devices
 * and a few real agents against the real server in its own process; a
 * release staged 1 % → 10 % → 100 %, a second one that fails on 20 % of the
 * devices and must halt itself, and the server's counts checked against the
 * simulation's (fleet-campaign.ts tells the story).
 *
 *   npm run campaign:fleet -- [--devices N] [--agents N] [--workers N] [--hour-seconds S]
 *                             [--fail-percent P] [--threshold-percent P] [--min-attempts N] [--json]
 *
 * One JSON line and a table on stdout (report.ts), progress on stderr; exit 1
 * when an invariant fails. TANDEM_FLEET_KEEP=1 keeps the data directory.
 */
import { parseArgs } from 'node:util';
import { DEFAULT_FLEET, runFleetCampaign } from './fleet-campaign.ts';
import { report } from './report.ts';

const { values } = parseArgs({
  options: {
    devices: { type: 'string' },
    agents: { type: 'string' },
    workers: { type: 'string' },
    'hour-seconds': { type: 'string' },
    'fail-percent': { type: 'string' },
    'threshold-percent': { type: 'string' },
    'min-attempts': { type: 'string' },
    json: { type: 'boolean', default: false },
  },
  strict: true,
});

const number = (name: string, text: string | undefined, fallback: number, min: number): number => {
  if (text === undefined) return fallback;
  const n = Number(text);
  if (!Number.isFinite(n) || n < min) {
    process.stderr.write(`fleet: --${name} must be a number ≥ ${min}\n`);
    process.exit(64);
  }
  return n;
};

const devices = Math.round(number('devices', values.devices, DEFAULT_FLEET.devices, 1));
// Keeps the simulated check-in rate near 500/s whatever the fleet size (20 s per policy hour for 10,000 devices).
const hourSeconds = number('hour-seconds', values['hour-seconds'], Math.max(8, devices / 500), 1);
const result = await runFleetCampaign({
  ...DEFAULT_FLEET,
  devices,
  hourSeconds,
  agents: Math.round(number('agents', values.agents, DEFAULT_FLEET.agents, 0)),
  workers: Math.round(number('workers', values.workers, DEFAULT_FLEET.workers, 1)),
  failBp: Math.round(number('fail-percent', values['fail-percent'], DEFAULT_FLEET.failBp / 100, 0) * 100),
  thresholdBp: Math.round(number('threshold-percent', values['threshold-percent'], DEFAULT_FLEET.thresholdBp / 100, 0) * 100),
  minAttempts: Math.round(number('min-attempts', values['min-attempts'], DEFAULT_FLEET.minAttempts, 1)),
  log: (line) => process.stderr.write(`fleet: ${line}\n`),
});
report('fleet', result.summary, result.table, { json: values.json });
process.exitCode = result.invariants.every((i) => i.ok) ? 0 : 1;
