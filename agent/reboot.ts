/**
 * Running commands with a deadline: the reboot command and health-check
 * commands. argv arrays only (no shell), so a config value is never parsed
 * twice; the child is killed (SIGKILL) when the deadline passes or the signal aborts.
 */
import { spawn } from 'node:child_process';
import { TandemError } from '../shared/errors.ts';

export interface CommandResult {
  code: number | null;
  signal: NodeJS.Signals | null;
  timedOut: boolean;
  output: string;
}

export function runCommand(argv: readonly string[], timeoutSeconds: number, signal?: AbortSignal): Promise<CommandResult> {
  return new Promise((resolve, reject) => {
    const [cmd, ...args] = argv;
    if (cmd === undefined) {
      reject(new TandemError('ERR_INVALID_ARGUMENT', 'Empty command.'));
      return;
    }
    const child = spawn(cmd, args, { stdio: ['ignore', 'pipe', 'pipe'] });
    let output = '';
    const keep = (chunk: Buffer) => {
      // Only the tail matters for a report; bound what a chatty check can make the agent hold.
      output = (output + chunk.toString('utf8')).slice(-2048);
    };
    child.stdout.on('data', keep);
    child.stderr.on('data', keep);
    let timedOut = false;
    const timer = setTimeout(() => {
      timedOut = true;
      child.kill('SIGKILL');
    }, timeoutSeconds * 1000);
    const onAbort = () => child.kill('SIGKILL');
    signal?.addEventListener('abort', onAbort, { once: true });
    child.on('error', (err) => {
      clearTimeout(timer);
      signal?.removeEventListener('abort', onAbort);
      resolve({ code: null, signal: null, timedOut: false, output: err.message });
    });
    child.on('close', (code, sig) => {
      clearTimeout(timer);
      signal?.removeEventListener('abort', onAbort);
      resolve({ code, signal: sig, timedOut, output: output.trim() });
    });
  });
}

/** Runs the configured reboot command; the caller has already persisted "waiting for reboot". */
export async function requestReboot(argv: readonly string[], signal?: AbortSignal): Promise<void> {
  const result = await runCommand(argv, 120, signal);
  if (result.code !== 0) {
    throw new TandemError('ERR_REBOOT_FAILED', `Reboot command ${JSON.stringify(argv)} failed (${result.timedOut ? 'timed out' : `exit ${result.code ?? result.signal}`}): ${result.output}`, {
      details: { argv, code: result.code },
    });
  }
}
