/** The agent's log lines: pino's shape, levels filtered, errors spelled out, never a throw. */
import test from 'ava';
import { TandemError } from '../../shared/errors.ts';
import { createJsonLogger } from '../../agent/json-logger.ts';

function capture(level: string) {
  const lines: string[] = [];
  const log = createJsonLogger({ level, name: 'tandem-agent', write: (l) => lines.push(l), now: () => 1_700_000_000_000 });
  return { log, records: () => lines.map((l) => { if (!l.endsWith('\n')) throw new Error('a line ends with a newline'); return JSON.parse(l) as Record<string, unknown>; }) };
}

test('one JSON object per line, in pino\'s shape', (t) => {
  const { log, records } = capture('info');
  log.info({ version: '1.1.0', slot: 'B' }, 'committed');
  t.like(records()[0], { level: 30, time: 1_700_000_000_000, name: 'tandem-agent', pid: process.pid, version: '1.1.0', slot: 'B', msg: 'committed' });
});

test('levels below the threshold are dropped; silent drops all', (t) => {
  const warn = capture('warn');
  warn.log.info({}, 'no');
  warn.log.warn({}, 'yes');
  warn.log.error({}, 'yes');
  t.deepEqual(warn.records().map((r) => r.level), [40, 50]);
  const silent = capture('silent');
  silent.log.error({}, 'no');
  t.deepEqual(silent.records(), []);
});

test('errors are spelled out; cycles and bigints do not throw', (t) => {
  const { log, records } = capture('info');
  const cyclic: Record<string, unknown> = { a: 1 };
  cyclic.self = cyclic;
  log.error({ err: new TandemError('ERR_NETWORK', 'connection reset', { details: { url: 'http://x' } }), cyclic, big: 2n ** 70n }, 'download failed');
  const r = records()[0]!;
  t.like(r.err as object, { type: 'TandemError', message: 'connection reset', code: 'ERR_NETWORK', details: { url: 'http://x' } });
  t.deepEqual(r.cyclic, { a: 1, self: '[Circular]' });
  t.is(r.big, (2n ** 70n).toString());
});

test('an unknown level is refused with a clear error', (t) => {
  const err = t.throws(() => createJsonLogger({ level: 'verbose', name: 'x' }));
  t.is((err as TandemError).code, 'ERR_INVALID_ARGUMENT');
});
