/**
 * Running a real bootloader in QEMU for the boot tests: always TCG (KVM here is
 * nested and about 100× slower, BOOTLOADERS.md), headless, serial console on
 * stdout, no network, every run bounded by a timeout. A guest reset ends QEMU
 * (-no-reboot), and the scripts power off after printing, so one run is one boot.
 */
import { spawn } from 'node:child_process';

export interface QemuRun {
  /** Serial console output with carriage returns and ANSI escape sequences removed. */
  console: string;
  ms: number;
}

/**
 * Runs `binary args…` until the guest powers off. Rejects when QEMU exits
 * non-zero or is still running after `timeoutMs` (then it is killed), with the
 * console so far in the message.
 */
export function runQemu(binary: string, args: string[], timeoutMs: number): Promise<QemuRun> {
  const started = performance.now();
  return new Promise((resolve, reject) => {
    const child = spawn(binary, ['-accel', 'tcg', '-display', 'none', '-serial', 'stdio', '-monitor', 'none', '-no-reboot', '-nic', 'none', ...args], {
      stdio: ['ignore', 'pipe', 'pipe'],
    });
    const out: Buffer[] = [];
    const err: Buffer[] = [];
    child.stdout.on('data', (chunk: Buffer) => out.push(chunk));
    child.stderr.on('data', (chunk: Buffer) => err.push(chunk));
    let timedOut = false;
    const timer = setTimeout(() => {
      timedOut = true;
      child.kill('SIGKILL');
    }, timeoutMs);
    child.on('error', (e) => {
      clearTimeout(timer);
      reject(e);
    });
    child.on('close', (code, signal) => {
      clearTimeout(timer);
      const console = cleanConsole(Buffer.concat(out).toString('latin1'));
      const ms = Math.round(performance.now() - started);
      if (timedOut || code !== 0) {
        const why = timedOut ? `still running after ${timeoutMs} ms` : `exited with ${code ?? signal}`;
        reject(new Error(`${binary} ${why}: ${Buffer.concat(err).toString().trim()}\n--- console ---\n${console.slice(-4000)}`));
      } else resolve({ console, ms });
    });
  });
}

/**
 * The console as text to match on: GRUB draws with ANSI escapes and its
 * terminal switch sometimes eats a character, gluing lines together, so
 * callers match markers anywhere in a line, never anchored at its start.
 */
export function cleanConsole(raw: string): string {
  // CSI sequences (ESC [ … final byte), charset selection (ESC ( B) and the short ESC = / ESC > / ESC 7 / ESC 8 / ESC c.
  // eslint-disable-next-line no-control-regex -- removing terminal control sequences is the point
  return raw.replace(/\r/g, '').replace(/\x1b(?:\[[0-?]*[ -/]*[@-~]|[()][0-9A-Za-z]|[=>78c])/g, '');
}

/** The decision line the Tandem scripts print: `TANDEM BOOT slot=X tries=N fallback_from=F`. */
export interface TandemBootLine {
  slot: string;
  tries: string;
  fallbackFrom: string;
}

export function tandemBootLine(console: string): TandemBootLine | undefined {
  const all = [...console.matchAll(/TANDEM BOOT slot=(\S*) tries=(\S*) fallback_from=(\S*)/g)];
  if (all.length !== 1) return undefined;
  const [, slot = '', tries = '', fallbackFrom = ''] = all[0]!;
  return { slot, tries, fallbackFrom };
}

/** The slot the stand-in "OS" (the menu entry or boot command the decision selected) reports. */
export function osSlot(console: string): string | undefined {
  const all = [...console.matchAll(/TANDEM OS slot=([A-Za-z]*)/g)];
  return all.length === 1 ? all[0]![1] : undefined;
}

export function tandemWarnings(console: string): string[] {
  return [...console.matchAll(/TANDEM WARN ([^\n]*)/g)].map((m) => m[1]!.trim());
}
