/**
 * `npm run campaign:network [-- --json] [--only reset,stall] [--quick] [--mib N]`:
 * the network fault campaign. A real agent installs a real server's release
 * through the fault proxy once per fault (resets, stalls, drip-feed,
 * truncation, flipped bytes, wrong Content-Range, 500/503 storms, a server
 * restart, the payload file replaced after the check), and the report says for
 * each: refused correctly, resumed correctly, completed after the fault
 * cleared, bytes downloaded again. Exit 1 when any scenario misses an
 * expectation (network-scenarios.ts says which and why), 64 on bad arguments.
 */
import { parseArgs } from 'node:util';
import { report } from './report.ts';
import { NetworkRig } from './network-rig.ts';
import { CAMPAIGN_PROFILE, QUICK_PROFILE, findScenarios, rememberOriginals, resultTable, runScenario, type CampaignProfile, type ScenarioResult } from './network-scenarios.ts';

async function main(argv: string[]): Promise<number> {
  let args;
  try {
    args = parseArgs({
      args: argv,
      options: { json: { type: 'boolean' }, only: { type: 'string', multiple: true }, quick: { type: 'boolean' }, mib: { type: 'string' } },
      strict: true,
      allowPositionals: false,
    });
  } catch (err) {
    process.stderr.write(`campaign:network: ${(err as Error).message}\nusage: npm run campaign:network -- [--json] [--only NAME[,NAME…]] [--quick] [--mib N]\n`);
    return 64;
  }
  const json = args.values.json === true;
  const base = args.values.quick ? QUICK_PROFILE : CAMPAIGN_PROFILE;
  const mib = args.values.mib === undefined ? base.imageMiB : Number(args.values.mib);
  if (!Number.isInteger(mib) || mib < 1 || mib > 1024) {
    process.stderr.write(`campaign:network: --mib must be a whole number of MiB (1-1024)\n`);
    return 64;
  }
  const profile: CampaignProfile = { ...base, imageMiB: mib };
  let scenarios;
  try {
    scenarios = findScenarios(args.values.only?.flatMap((s) => s.split(',')).filter((s) => s !== ''));
  } catch (err) {
    process.stderr.write(`campaign:network: ${(err as Error).message}\n`);
    return 64;
  }
  const say = (message: string) => {
    if (!json) process.stderr.write(`${message}\n`);
  };

  // A crash anywhere in the process (agent, server, proxy) is a finding, charged to the scenario running.
  const crashes: string[] = [];
  process.on('uncaughtException', (err) => crashes.push(`uncaught ${err.stack ?? String(err)}`));
  process.on('unhandledRejection', (err) => crashes.push(`unhandled rejection ${(err as Error)?.stack ?? String(err)}`));

  const started = performance.now();
  const rig = await NetworkRig.start({ imageMiB: profile.imageMiB, deltaFraction: profile.deltaFraction, progress: say });
  const results: ScenarioResult[] = [];
  try {
    await rememberOriginals(rig);
    for (const scenario of scenarios) {
      say(`scenario ${scenario.name}: ${scenario.fault}`);
      const result = await runScenario(rig, scenario, profile, { crashes: () => crashes });
      results.push(result);
      say(`  ${result.ok ? 'ok' : `FAIL: ${result.failures.join('; ')}`} (${result.seconds} s)`);
    }
  } finally {
    await rig.close();
  }
  const failed = results.filter((r) => !r.ok);
  const summary = {
    ok: failed.length === 0,
    elapsedSeconds: Math.round((performance.now() - started) / 100) / 10,
    scenarios: results.length,
    passed: results.length - failed.length,
    failed: failed.map((r) => r.scenario),
    imageMiB: profile.imageMiB,
    payloads: {
      full: { bytes: rig.full.size, blobs: rig.full.blobSizes.length },
      delta: { bytes: rig.delta.size, blobs: rig.delta.blobSizes.length },
    },
    agent: profile.download,
    results: results.map((r) => ({
      scenario: r.scenario,
      ok: r.ok,
      refused: r.refused,
      ...(r.refusedWith !== undefined ? { refusedWith: r.refusedWith } : {}),
      resumed: r.resumed,
      ...(r.resumeOffset !== undefined ? { resumeOffset: r.resumeOffset } : {}),
      completed: r.completed,
      redownloadedBytes: r.redownloadedBytes,
      payloadBytes: r.payloadBytes,
      payloadRequests: r.payloadRequests,
      retriedAfter: r.retriedAfter,
      cycles: r.cycles,
      seconds: r.seconds,
      ...(r.detail !== '' ? { detail: r.detail } : {}),
      ...(r.failures.length > 0 ? { failures: r.failures } : {}),
    })),
  };
  report('network', summary, resultTable(results), { json });
  return failed.length === 0 ? 0 : 1;
}

main(process.argv.slice(2)).then(
  (code) => {
    process.exitCode = code;
  },
  (err: unknown) => {
    process.stderr.write(`campaign:network: ${(err as Error)?.stack ?? String(err)}\n`);
    process.exitCode = 70;
  },
);
