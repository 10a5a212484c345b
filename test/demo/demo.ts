/**
 * `npm run demo`: a staged rollout with real parts, narrated (staged-rollout.ts
 * tells the story and checks its outcome).
 *
 *   npm run demo [-- --json] [-- --keep]
 *
 * --json  no narration; one JSON summary line at the end
 * --keep  keep the temp folder (server data, images, devices) and print its path
 *
 * Exit 0 when every expectation is met; 1 when one is not or the demo failed
 * on the way (the message says which); 64 on a bad option; 130 on Ctrl-C. The
 * server is closed and the temp folder removed in every case (unless --keep).
 */
import { parseArgs } from 'node:util';
import { formatSummary, runDemo } from './staged-rollout.ts';

const USAGE = 'usage: npm run demo [-- --json] [-- --keep]\n';

let flags: { json: boolean; keep: boolean; help: boolean };
try {
  const { values } = parseArgs({ options: { json: { type: 'boolean' }, keep: { type: 'boolean' }, help: { type: 'boolean', short: 'h' } }, strict: true, allowPositionals: false });
  flags = { json: values.json ?? false, keep: values.keep ?? false, help: values.help ?? false };
} catch (err) {
  process.stderr.write(`${(err as Error).message}\n${USAGE}`);
  process.exit(64);
}
if (flags.help) {
  process.stdout.write(USAGE);
  process.exit(0);
}

// Ctrl-C or SIGTERM: abort the agents, then the demo's own cleanup (server, temp folder) runs before exiting;
// a second one exits at once.
const controller = new AbortController();
let interrupted = false;
const stop = (signal: NodeJS.Signals) => {
  if (interrupted) process.exit(130);
  interrupted = true;
  process.stderr.write(`\n${signal}: stopping the demo and cleaning up…\n`);
  controller.abort(new Error(`interrupted by ${signal}`));
};
process.on('SIGINT', stop);
process.on('SIGTERM', stop);
// The reader went away (`npm run demo | head`): stop narrating, but still clean up.
let quiet = false;
process.stdout.on('error', (err: NodeJS.ErrnoException) => {
  quiet = true;
  if (!controller.signal.aborted) controller.abort(new Error(`stdout: ${err.code ?? err.message}`));
});
const print = (text: string) => {
  if (!quiet) process.stdout.write(`${text}\n`);
};

try {
  const summary = await runDemo({
    ...(flags.json ? {} : { say: print }),
    keep: flags.keep,
    signal: controller.signal,
  });
  print(flags.json ? JSON.stringify(summary) : formatSummary(summary));
  if (!summary.ok) {
    const failed = summary.expectations.filter((e) => !e.ok);
    process.stderr.write(`demo failed: ${failed.length} expectation${failed.length === 1 ? '' : 's'} not met: ${failed.map((e) => e.name).join('; ')}\n`);
  }
  process.exitCode = summary.ok ? 0 : 1;
} catch (err) {
  const cause = controller.signal.aborted ? (controller.signal.reason as Error) : err;
  const code = (cause as { code?: unknown }).code;
  const message = `${typeof code === 'string' ? `${code}: ` : ''}${cause instanceof Error ? cause.message : String(cause)}`;
  if (flags.json) print(JSON.stringify({ ok: false, error: message }));
  process.stderr.write(`demo failed: ${message}\n`);
  process.exitCode = interrupted ? 130 : 1;
}
