/** Waiting between retries and polls (agent/backoff.ts): bounded, jittered, and the server's Retry-After obeyed within a cap. */
import test from 'ava';
import { backoffSeconds, parseRetryAfter, pollSeconds, retryWaitSeconds } from '../../agent/backoff.ts';

test('backoff doubles to its cap, with half of it at random', (t) => {
  t.is(backoffSeconds(0, 1, 60, () => 0), 0.5);
  t.is(backoffSeconds(0, 1, 60, () => 1), 1);
  t.is(backoffSeconds(3, 1, 60, () => 1), 8);
  t.is(backoffSeconds(10, 1, 60, () => 1), 60);
  t.is(backoffSeconds(1e9, 1, 60, () => 0), 30);
});

test('the poll interval is the server\'s, clamped to the policy, ± jitter', (t) => {
  const policy = { intervalSeconds: 3600, minSeconds: 60, maxSeconds: 86_400, jitter: 0.2 };
  t.is(pollSeconds(undefined, policy, () => 0.5), 3600);
  t.is(pollSeconds(10, policy, () => 0.5), 60);
  t.is(pollSeconds(1e9, policy, () => 0.5), 86_400);
  t.is(pollSeconds(1000, policy, () => 0), 800);
  t.is(pollSeconds(1000, policy, () => 1), 1200);
});

test('Retry-After: delay-seconds or an HTTP-date, capped; anything else is ignored', (t) => {
  const now = new Date('2026-11-23T12:00:00Z');
  t.is(parseRetryAfter('120', now), 120);
  t.is(parseRetryAfter(' 0 ', now), 0);
  t.is(parseRetryAfter('Mon, 23 Nov 2026 12:00:30 GMT', now), 30);
  t.is(parseRetryAfter('Mon, 23 Nov 2026 11:00:00 GMT', now), 0, 'a date in the past means now');
  t.is(parseRetryAfter('99999999', now), 3600, 'capped: a server cannot park a device for years');
  t.is(parseRetryAfter('99999999', now, 60), 60);
  for (const bad of [undefined, '', '-5', '1.5', 'soon', '2026-11-23T12:00:30Z', '1e3']) t.is(parseRetryAfter(bad, now), undefined, String(bad));
});

test('a retry waits for the longer of the backoff and what the server asked', (t) => {
  t.is(retryWaitSeconds(1.5, { details: { retryAfterSeconds: 5 } }), 5);
  t.is(retryWaitSeconds(8, { details: { retryAfterSeconds: 5 } }), 8);
  t.is(retryWaitSeconds(2, {}), 2);
  t.is(retryWaitSeconds(2, { details: { retryAfterSeconds: '5' } }), 2);
});
