/**
 * How every fault-injection campaign reports (`npm run campaign:*`): one JSON
 * line on stdout that scripts and CI parse — `{"campaign":name,...summary}` —
 * then, for people, the same figures as a plain table drawn by the CLI's
 * formatTable. `--json` campaigns pass `{ json: true }` and get the line only.
 */
import { formatTable } from '../../bin/cli-kit.ts';

export interface ReportTable {
  head: string[];
  rows: (string | number)[][];
}

export interface ReportOptions {
  /** Print only the JSON line (the campaign's `--json`). */
  json?: boolean;
  /** Where to write; process.stdout by default (tests pass a collector). */
  out?: NodeJS.WritableStream;
}

/** The JSON line a campaign prints: the campaign name first, then its summary. */
export function reportLine(campaign: string, summary: Record<string, unknown>): string {
  return JSON.stringify({ campaign, ...summary });
}

/** Prints the JSON line (always) and the human table (unless options.json). */
export function report(campaign: string, summary: Record<string, unknown>, table: ReportTable, options: ReportOptions = {}): void {
  const out = options.out ?? process.stdout;
  out.write(`${reportLine(campaign, summary)}\n`);
  if (options.json) return;
  const rows = [table.head, ...table.rows.map((row) => row.map((cell) => String(cell)))];
  out.write(`\n${formatTable(rows)}`);
}

/** The name the brief first used; same function. */
export const printSummary = report;
