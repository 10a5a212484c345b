/**
 * Prometheus counters and gauges, by hand (the text format is four lines of
 * grammar): check-ins, offers, events by type and code, payload bytes served,
 * errors by code. Label values come from closed sets or validated input only,
 * so cardinality stays bounded.
 */
export class Metrics {
  private readonly counters = new Map<string, Map<string, number>>();
  private readonly help = new Map<string, string>([
    ['tandem_checks_total', 'Device check-ins by result.'],
    ['tandem_offers_total', 'Updates offered, by payload kind.'],
    ['tandem_events_total', 'Device events accepted, by type.'],
    ['tandem_event_errors_total', 'Device error and rollback events, by code.'],
    ['tandem_payload_bytes_served_total', 'Payload bytes sent to clients.'],
    ['tandem_payload_requests_total', 'Payload requests by status.'],
    ['tandem_http_errors_total', 'Error responses by code.'],
    ['tandem_enrollments_total', 'Devices enrolled.'],
    ['tandem_rollouts_halted_total', 'Rollouts halted automatically.'],
  ]);
  private readonly gauges = new Map<string, () => number | Promise<number>>();

  inc(name: string, labels: Record<string, string> = NO_LABELS, by = 1): void {
    let series = this.counters.get(name);
    if (!series) {
      series = new Map();
      this.counters.set(name, series);
    }
    const key = labelKey(labels);
    series.set(key, (series.get(key) ?? 0) + by);
  }

  gauge(name: string, help: string, read: () => number | Promise<number>): void {
    this.help.set(name, help);
    this.gauges.set(name, read);
  }

  value(name: string, labels: Record<string, string> = NO_LABELS): number {
    return this.counters.get(name)?.get(labelKey(labels)) ?? 0;
  }

  async render(): Promise<string> {
    const lines: string[] = [];
    for (const [name, series] of this.counters) {
      lines.push(`# HELP ${name} ${this.help.get(name) ?? name}`, `# TYPE ${name} counter`);
      for (const [key, value] of series) lines.push(`${name}${key ? `{${key}}` : ''} ${value}`);
    }
    for (const [name, read] of this.gauges) {
      lines.push(`# HELP ${name} ${this.help.get(name) ?? name}`, `# TYPE ${name} gauge`, `${name} ${await read()}`);
    }
    return `${lines.join('\n')}\n`;
  }
}

const NO_LABELS: Record<string, string> = Object.freeze({});
const NEEDS_ESCAPE = /[\\"\n]/;

/** `k1="v1",k2="v2"` in the labels' order; called on every check-in and payload chunk, so no escaping unless needed. */
function labelKey(labels: Record<string, string>): string {
  let key = '';
  for (const k in labels) {
    const v = labels[k]!;
    const value = NEEDS_ESCAPE.test(v) ? v.replace(/\\/g, '\\\\').replace(/"/g, '\\"').replace(/\n/g, '\\n') : v;
    key += `${key === '' ? '' : ','}${k}="${value}"`;
  }
  return key;
}
