/**
 * Step 6, health (after the reboot into the new slot): every configured check
 * must pass before the deadline — commands (exit 0 within their timeout),
 * HTTP probes (the expected status within their timeout), systemd units
 * (`systemctl is-active`). A failing check is retried every interval until
 * the deadline, since services take a while to come up after a boot; the
 * deadline counts from the first attempt, across agent restarts.
 */
import type { HealthCheckConfig } from '../config.ts';
import { sleep } from '../backoff.ts';
import type { HttpClient } from '../http-client.ts';
import { runCommand } from '../reboot.ts';

export interface CheckOutcome {
  name: string;
  ok: boolean;
  detail: string;
}

export interface HealthReport {
  ok: boolean;
  /** The first check still failing at the deadline. */
  failing?: CheckOutcome;
  results: CheckOutcome[];
}

export interface HealthInput {
  checks: readonly HealthCheckConfig[];
  /** Epoch ms by which all must pass. */
  deadline: number;
  intervalSeconds: number;
  systemctl: string;
  dispatcher: HttpClient;
  signal?: AbortSignal;
  log?: (message: string, fields?: Record<string, unknown>) => void;
}

export async function runHealthCheck(check: HealthCheckConfig, input: Pick<HealthInput, 'systemctl' | 'dispatcher' | 'signal'>, budgetSeconds: number): Promise<CheckOutcome> {
  const timeout = Math.max(0.05, Math.min(check.timeoutSeconds, budgetSeconds));
  switch (check.type) {
    case 'command': {
      const r = await runCommand(check.command, timeout, input.signal);
      return { name: check.name, ok: r.code === 0, detail: r.timedOut ? `timed out after ${timeout} s` : r.code === 0 ? 'exit 0' : `exit ${r.code ?? r.signal}: ${r.output}` };
    }
    case 'systemd': {
      for (const unit of check.units) {
        const r = await runCommand([input.systemctl, 'is-active', '--quiet', unit], timeout, input.signal);
        if (r.code !== 0) return { name: check.name, ok: false, detail: r.timedOut ? `systemctl timed out on ${unit}` : `${unit} is not active (exit ${r.code ?? r.signal})` };
      }
      return { name: check.name, ok: true, detail: 'active' };
    }
    case 'http': {
      const signals = [AbortSignal.timeout(timeout * 1000), ...(input.signal ? [input.signal] : [])];
      try {
        const res = await input.dispatcher.request({ method: 'GET', url: check.url, signal: AbortSignal.any(signals), headersTimeoutMs: timeout * 1000, bodyTimeoutMs: timeout * 1000 });
        await res.body.dump();
        return { name: check.name, ok: res.statusCode === check.expectStatus, detail: `HTTP ${res.statusCode}` };
      } catch (err) {
        return { name: check.name, ok: false, detail: (err as Error).message };
      }
    }
  }
}

export async function runHealthChecks(input: HealthInput): Promise<HealthReport> {
  const pending = new Map<number, CheckOutcome | undefined>(input.checks.map((_, i) => [i, undefined]));
  const results = new Array<CheckOutcome>(input.checks.length);
  for (;;) {
    input.signal?.throwIfAborted();
    for (const i of [...pending.keys()]) {
      const budget = (input.deadline - Date.now()) / 1000;
      const outcome = await runHealthCheck(input.checks[i]!, input, Math.max(0.05, budget));
      results[i] = outcome;
      if (outcome.ok) pending.delete(i);
      else pending.set(i, outcome);
    }
    if (pending.size === 0) return { ok: true, results };
    const left = (input.deadline - Date.now()) / 1000;
    const failing = [...pending.values()][0]!;
    if (left <= 0) return { ok: false, failing, results };
    input.log?.('health check failing, retrying', { check: failing.name, detail: failing.detail, secondsLeft: Number(left.toFixed(1)) });
    await sleep(Math.min(input.intervalSeconds, left), input.signal);
  }
}
