/**
 * What every Tandem command line shares: argument parsing (node:util), plain
 * text for people and `--json` for scripts, a progress bar only on a terminal,
 * and exit codes that mean something (sysexits.h), derived from the error code.
 */
import { parseArgs, type ParseArgsConfig } from 'node:util';
import { TandemError, toTandemError, type ErrorCode } from '../shared/errors.ts';

export const EXIT = {
  ok: 0,
  failure: 1,
  usage: 64,
  dataError: 65,
  noInput: 66,
  unavailable: 69,
  internal: 70,
  io: 74,
  noPermission: 77,
} as const;

export interface Io {
  stdout: NodeJS.WritableStream & { isTTY?: boolean };
  stderr: NodeJS.WritableStream & { isTTY?: boolean; columns?: number };
  env: NodeJS.ProcessEnv;
}

export const processIo: Io = { stdout: process.stdout, stderr: process.stderr, env: process.env };

export type Command = (argv: string[], io: Io) => Promise<number>;

export class UsageError extends TandemError {
  constructor(message: string) {
    super('ERR_INVALID_ARGUMENT', message);
  }
}

/** parseArgs with strict checking; unknown flags and missing values become usage errors. */
export function parseCommandArgs<T extends NonNullable<ParseArgsConfig['options']>>(argv: string[], options: T, allowPositionals = true) {
  try {
    return parseArgs({ args: argv, options, allowPositionals, strict: true });
  } catch (err) {
    throw new UsageError((err as Error).message);
  }
}

export function requireOption(value: string | undefined, flag: string): string {
  if (value === undefined || value === '') throw new UsageError(`Missing required option --${flag}.`);
  return value;
}

/** Exit codes follow from error codes, so scripts can branch on them. */
export function exitCodeFor(code: string): number {
  if (code === 'ERR_INVALID_ARGUMENT') return EXIT.usage;
  if (code === 'ERR_IO') return EXIT.io;
  if (code === 'ERR_INTERNAL') return EXIT.internal;
  if (code === 'ERR_UNAVAILABLE' || code === 'ERR_NETWORK') return EXIT.unavailable;
  if (code === 'ERR_UNAUTHORIZED' || code === 'ERR_FORBIDDEN') return EXIT.noPermission;
  if (code === 'ERR_NOT_FOUND') return EXIT.noInput;
  return EXIT.dataError;
}

/** Prints an error (text or JSON on stderr) and returns the exit code. */
export function reportError(err: unknown, io: Io, json: boolean): number {
  let error: TandemError;
  const errno = (err as NodeJS.ErrnoException | undefined)?.code;
  if (errno === 'ENOENT' || errno === 'EACCES' || errno === 'EISDIR') {
    error = new TandemError('ERR_IO', (err as Error).message, { cause: err });
  } else {
    error = toTandemError(err);
  }
  if (json) io.stderr.write(`${JSON.stringify(error.toJSON())}\n`);
  else io.stderr.write(`error ${error.code}: ${error.message}\n`);
  if (error.code === 'ERR_INTERNAL' && io.env.TANDEM_DEBUG) io.stderr.write(`${(err as Error).stack}\n`);
  return exitCodeFor(error.code as ErrorCode);
}

export function printJson(io: Io, value: unknown): void {
  io.stdout.write(`${JSON.stringify(value)}\n`);
}

/** A one-line progress bar on stderr, drawn only on a terminal and at most 10 times a second. */
export function progressBar(io: Io, label: string): { update(done: number, total: number, phase?: string): void; done(): void } {
  if (!io.stderr.isTTY) return { update() {}, done() {} };
  let last = 0;
  let drawn = false;
  return {
    update(done, total, phase) {
      const now = Date.now();
      if (now - last < 100 && done < total) return;
      last = now;
      const width = Math.max(10, Math.min(40, (io.stderr.columns ?? 80) - 50));
      const fraction = total > 0 ? Math.min(1, done / total) : 0;
      const filled = Math.round(fraction * width);
      const text = `${label}${phase ? ` ${phase}` : ''} [${'#'.repeat(filled)}${'.'.repeat(width - filled)}] ${(fraction * 100).toFixed(0).padStart(3)}% ${formatBytes(done)}/${formatBytes(total)}`;
      io.stderr.write(`\r${text}\x1b[K`);
      drawn = true;
    },
    done() {
      if (drawn) io.stderr.write('\r\x1b[K');
    },
  };
}

export function formatBytes(n: number): string {
  const units = ['B', 'KiB', 'MiB', 'GiB', 'TiB'];
  let value = n;
  let unit = 0;
  while (value >= 1024 && unit < units.length - 1) {
    value /= 1024;
    unit++;
  }
  return unit === 0 ? `${value} B` : `${value.toFixed(1)} ${units[unit]}`;
}

/** Plain aligned columns for people; scripts use --json. */
export function formatTable(rows: string[][]): string {
  const widths: number[] = [];
  for (const row of rows) row.forEach((cell, i) => (widths[i] = Math.max(widths[i] ?? 0, cell.length)));
  return rows.map((row) => row.map((cell, i) => (i === row.length - 1 ? cell : cell.padEnd(widths[i]!))).join('  ')).join('\n') + '\n';
}

/** Runs a dispatcher of subcommands: `tandem <group> ...`. */
export async function runCommands(commands: Record<string, { summary: string; run: Command }>, argv: string[], io: Io, name: string): Promise<number> {
  const [group, ...rest] = argv;
  const entry = group === undefined ? undefined : commands[group];
  if (!entry) {
    const lines = Object.entries(commands).map(([key, c]) => `  ${key.padEnd(10)} ${c.summary}`);
    const out = group === undefined || group === 'help' || group === '--help' || group === '-h' ? io.stdout : io.stderr;
    if (group !== undefined && !['help', '--help', '-h'].includes(group)) io.stderr.write(`${name}: unknown command ${JSON.stringify(group)}\n`);
    out.write(`usage: ${name} <command> [options]\n\ncommands:\n${lines.join('\n')}\n`);
    return group === undefined || ['help', '--help', '-h'].includes(group) ? EXIT.ok : EXIT.usage;
  }
  const json = rest.includes('--json');
  try {
    return await entry.run(rest, io);
  } catch (err) {
    return reportError(err, io, json);
  }
}
