/** The state machine as a table (STYLE.md 3): nextState is pure, so every transition is checked without I/O. */
import test from 'ava';
import { initialState, nextState, type AgentEvent, type AgentState, type UpdateRecord } from '../../agent/state.ts';
import { isTandemError } from '../../shared/errors.ts';

const at = '2026-01-01T00:00:00.000Z';
const update: UpdateRecord = {
  version: '1.1.0',
  channel: 'stable',
  kind: 'delta',
  url: 'http://x/v1/payloads/aa',
  size: 100,
  sha256: 'a'.repeat(64),
  preludeSize: 40,
  allowDowngrade: false,
  manifestSha256: 'b'.repeat(64),
  target: { size: 4096, sha256: 'c'.repeat(64) },
  fromSlot: 'A',
  toSlot: 'B',
  fromVersion: '1.0.0',
  attempts: 0,
};

function run(events: AgentEvent[], from: AgentState = initialState()): AgentState {
  return events.reduce(nextState, from);
}

const toFinalizing: AgentEvent[] = [{ type: 'checkStarted' }, { type: 'updateAccepted', update }, { type: 'attempt' }, { type: 'checkpoint', checkpoint: { nextOp: 3, payloadOffset: 70 }, etag: '"e"' }, { type: 'applied' }, { type: 'verified' }];

test('the happy path: idle → … → committed → idle', (t) => {
  const s = run([...toFinalizing, { type: 'trialSet' }, { type: 'bootedNewSlot', at }, { type: 'healthPassed', at }]);
  t.is(s.phase, 'idle');
  t.is(s.update, undefined);
  t.deepEqual(s.slots.B, { version: '1.1.0', sha256: 'c'.repeat(64), size: 4096 });
  t.like(s.lastOutcome, { result: 'committed', version: '1.1.0' });
});

test('checkpoints keep the ETag; a restart forgets both', (t) => {
  const s = run(toFinalizing.slice(0, 4));
  t.deepEqual(s.update?.checkpoint, { nextOp: 3, payloadOffset: 70 });
  t.is(s.update?.etag, '"e"');
  t.is(s.update?.attempts, 1);
  const r = nextState(s, { type: 'downloadRestarted' });
  t.is(r.update?.checkpoint, undefined);
  t.is(r.update?.etag, undefined);
});

test('health failure → rollingBack → rolledBack bars the version and forgets slot B', (t) => {
  const s = run([...toFinalizing, { type: 'trialSet' }, { type: 'bootedNewSlot', at }, { type: 'healthFailed', code: 'ERR_HEALTH_CHECK', message: 'app down' }]);
  t.is(s.phase, 'rollingBack');
  const r = nextState(s, { type: 'rolledBack', at });
  t.is(r.phase, 'idle');
  t.deepEqual(r.failedVersions, ['1.1.0']);
  t.is(r.slots.B, undefined);
  t.like(r.lastOutcome, { result: 'rolledBack', code: 'ERR_HEALTH_CHECK', message: 'app down' });
});

test('a bootloader fallback is detected from waitingForReboot and healthChecking', (t) => {
  for (const tail of [[], [{ type: 'bootedNewSlot', at }]] as AgentEvent[][]) {
    const s = run([...toFinalizing, { type: 'trialSet' }, ...tail, { type: 'fallbackDetected', at }]);
    t.is(s.phase, 'idle');
    t.deepEqual(s.failedVersions, ['1.1.0']);
    t.like(s.lastError, { code: 'ERR_BOOT_FALLBACK' });
  }
});

test('install failures count per version; at the limit (or a release fault) the version is barred', (t) => {
  const fail = (releaseFault: boolean): AgentEvent => ({ type: 'failed', code: 'ERR_NETWORK', message: 'x', at, releaseFault, maxAttempts: 2 });
  let s = run([{ type: 'checkStarted' }, { type: 'updateAccepted', update }, fail(false)]);
  t.deepEqual(s.attempts, { '1.1.0': 1 });
  t.deepEqual(s.failedVersions, []);
  t.is(s.deltaFailures, 1);
  s = run([{ type: 'checkStarted' }, { type: 'updateAccepted', update }, fail(false)], s);
  t.deepEqual(s.failedVersions, ['1.1.0']);
  t.deepEqual(s.attempts, {});
  t.is(s.deltaFailures, 2);
  const barred = run([{ type: 'checkStarted' }, { type: 'updateAccepted', update: { ...update, version: '1.2.0' } }, fail(true)]);
  t.deepEqual(barred.failedVersions, ['1.2.0']);
});

test('a committed delta resets the delta failure count', (t) => {
  const s = run([...toFinalizing, { type: 'trialSet' }, { type: 'bootedNewSlot', at }, { type: 'healthPassed', at }], { ...initialState(), deltaFailures: 1 });
  t.is(s.deltaFailures, 0);
});

test('illegal transitions throw ERR_STATE_TRANSITION', (t) => {
  const illegal: [AgentEvent[], AgentEvent][] = [
    [[], { type: 'applied' }],
    [[], { type: 'trialSet' }],
    [[{ type: 'checkStarted' }], { type: 'healthPassed', at }],
    [toFinalizing, { type: 'rolledBack', at }],
    [[...toFinalizing, { type: 'trialSet' }], { type: 'checkStarted' }],
    [[...toFinalizing, { type: 'trialSet' }], { type: 'failed', code: 'ERR_X', message: '', at, releaseFault: false, maxAttempts: 3 }],
  ];
  for (const [before, event] of illegal) {
    const err = t.throws(() => nextState(run(before), event));
    t.true(isTandemError(err, 'ERR_STATE_TRANSITION'), `${event.type} after ${before.map((e) => e.type).join(',')}`);
  }
});

test('the keyring version only grows; rotated roots are adopted', (t) => {
  let s = nextState(initialState(), { type: 'keyringSeen', version: 3 });
  s = nextState(s, { type: 'keyringSeen', version: 2 });
  t.is(s.keyringVersion, 3);
  s = nextState(s, { type: 'keyringSeen', version: 4, roots: { threshold: 1, keys: ['AAAA'] } });
  t.deepEqual(s.trustedRoots, { threshold: 1, keys: ['AAAA'] });
});

test('failed versions are capped at the 64 the protocol carries, newest kept', (t) => {
  let s = initialState();
  for (let i = 0; i < 70; i++) {
    s = run([{ type: 'checkStarted' }, { type: 'updateAccepted', update: { ...update, version: `1.${i + 1}.0` } }, { type: 'failed', code: 'ERR_WRONG_BOARD', message: '', at, releaseFault: true, maxAttempts: 3 }], s);
  }
  t.is(s.failedVersions.length, 64);
  t.is(s.failedVersions.at(-1), '1.70.0');
});
