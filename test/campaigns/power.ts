/**
 * `npm run campaign:power [-- --seed N --kills N --json …]`: the power-loss
 * campaign (power-harness.ts says what it does and what it checks). Prints one
 * JSON line (`{"campaign":"power",…}`) and, without --json, a table; exits 1
 * when an invariant broke (a bricked device, an unverified boot, a written
 * running slot, a stuck agent, an unreported failure), 64 on a bad argument.
 */
import { parseArgs } from 'node:util';
import { KILL_PHASES, runPowerCampaign, type PowerSummary } from './power-harness.ts';
import { report } from './report.ts';

const USAGE = `usage: npm run campaign:power -- [--seed N] [--kills N] [--image-mib N] [--parallel N]
                              [--power-cut P] [--tear P] [--tear-in-place] [--trace] [--json]`;

function number(value: string | undefined, fallback: number, name: string, min: number, max: number): number {
  if (value === undefined) return fallback;
  const n = Number(value);
  if (!Number.isFinite(n) || n < min || n > max) throw new Error(`--${name} must be a number from ${min} to ${max}.`);
  return n;
}

function table(s: PowerSummary): { head: string[]; rows: (string | number)[][] } {
  const rows: (string | number)[][] = [
    ['seed', s.seed, ''],
    ['devices / cycles / agent runs', `${s.devices} / ${s.cycles} / ${s.runs}`, ''],
    ['kills (uniform + targeted)', s.kills, `${s.killModes.uniform} + ${s.killModes.targeted}`],
    ...[...KILL_PHASES, ...Object.keys(s.killsByState).filter((p) => !KILL_PHASES.includes(p as never))].map((p) => [`  killed in ${p}`, s.killsByState[p] ?? 0, '']),
    ['power cuts / agent-only kills', `${s.powerCuts} / ${s.agentOnlyKills}`, `${s.reboots} simulated boots`],
    ['torn writes', s.tears.tempFile + s.tears.slotGarbage + s.tears.inPlace, `temp file ${s.tears.tempFile}, slot garbage ${s.tears.slotGarbage}, in place ${s.tears.inPlace}`],
    ['bricked devices', s.bricked, 'must be 0'],
    ['boots of unverified bytes', s.unverifiedBoots, 'must be 0'],
    ['running slot written', s.runningSlotWritten, 'must be 0'],
    ['stuck / unreported failures', `${s.stuck} / ${s.unreported}`, 'must be 0'],
    ['updates completed', s.updatesCompleted, `full ${s.completedByKind.full}, delta ${s.completedByKind.delta}`],
    ['updates abandoned cleanly', s.updatesAbandonedCleanly, Object.entries(s.abandonedBy).map(([k, v]) => `${k} ${v}`).join(', ')],
    ['  of them good releases', s.goodReleasesAbandoned, 'power cuts used up the trial'],
    ['agent errors (not killed)', Object.values(s.agentErrors).reduce((a, b) => a + b, 0), Object.entries(s.agentErrors).map(([k, v]) => `${k} ${v}`).join(', ')],
    ['temp files left behind', s.tempFilesLeft, `${s.tears.tempFile} injected, ${s.tempFilesLeft - s.tears.tempFile} by the kills themselves; nothing removes them`],
    ['elapsed', `${s.elapsedSeconds} s`, ''],
  ];
  return { head: ['what', 'count', 'note'], rows };
}

async function main(): Promise<number> {
  let values;
  try {
    ({ values } = parseArgs({
      args: process.argv.slice(2),
      options: {
        seed: { type: 'string' },
        kills: { type: 'string' },
        'image-mib': { type: 'string' },
        parallel: { type: 'string' },
        'power-cut': { type: 'string' },
        tear: { type: 'string' },
        'tear-in-place': { type: 'boolean' },
        trace: { type: 'boolean' },
        json: { type: 'boolean' },
        help: { type: 'boolean' },
      },
      strict: true,
      allowPositionals: false,
    }));
    if (values.help) {
      process.stdout.write(`${USAGE}\n`);
      return 0;
    }
    const seed = Math.floor(number(values.seed, Math.floor(Math.random() * 2 ** 31), 'seed', 0, 2 ** 32 - 1));
    const options = {
      seed,
      kills: Math.floor(number(values.kills, 200, 'kills', 1, 100_000)),
      imageMiB: Math.floor(number(values['image-mib'], 4, 'image-mib', 1, 64)),
      parallel: Math.floor(number(values.parallel, 3, 'parallel', 1, 16)),
      powerCut: number(values['power-cut'], 0.75, 'power-cut', 0, 1),
      tear: number(values.tear, 0.5, 'tear', 0, 1),
      tearInPlace: values['tear-in-place'] === true,
    };
    process.stderr.write(`campaign:power seed ${seed} (--seed ${seed} repeats its choices), ${options.kills} kills, ${options.imageMiB} MiB images, ${options.parallel} devices at a time\n`);
    const summary = await runPowerCampaign({
      ...options,
      log: values.json ? undefined : (line) => process.stderr.write(`  ${line}\n`),
      trace: values.trace ? (line) => process.stderr.write(`    ${line}\n`) : undefined,
    });
    const { violations, ...figures } = summary;
    report('power', { ...figures, violations: violations.length }, table(summary), { json: values.json === true });
    for (const v of violations.slice(0, 20)) process.stderr.write(`VIOLATION ${v.kind} ${v.device}: ${v.detail}\n`);
    const broken = summary.bricked + summary.unverifiedBoots + summary.runningSlotWritten + summary.stuck + summary.unreported + violations.length;
    return broken === 0 ? 0 : 1;
  } catch (err) {
    process.stderr.write(`${(err as Error).message}\n${USAGE}\n`);
    return values === undefined || /^--/.test((err as Error).message) ? 64 : 70;
  }
}

process.exitCode = await main();
