/**
 * The fleet simulation, reduced (fleet-campaign.ts): 1,000 simulated devices
 * and 3 real agents against the real server in its own process, one policy
 * hour lasting 4 s at most. Its invariants: the first release reaches every
 * device through 1 % → 10 % → 100 %; the second, failing on 20 % of the
 * devices, halts itself at its threshold and is offered to nobody after; the
 * server's stats equal the simulation's count exactly; no 5xx. About 70 s on
 * two cores (longer when the machine is busy: the clock slows then). Plus
 * the fleet's memoized check-response verifier refusing what the agent's
 * verifier refuses, on responses signed with test keys.
 */
import anyTest, { type TestFn } from 'ava';
import { verifyCheckResponse } from '../../agent/steps/check.ts';
import { loadZstdDecoder, type ZstdDecoder } from '../../payloads/zstd.ts';
import { generateKeyPair } from '../../shared/keys.ts';
import type { CheckResponse, CheckResponseBody } from '../../shared/schemas/protocol.ts';
import { makeFleetKeys, ProtocolServer } from '../agent/harness.ts';
import { DEFAULT_FLEET, runFleetCampaign, type FleetResult } from './fleet-campaign.ts';
import { CheckVerifier } from './fleet-device.ts';

interface Ctx {
  result: FleetResult;
  elapsedSeconds: number;
}
const test = anyTest as TestFn<Ctx>;

test.before(async (t) => {
  const started = Date.now();
  const result = await runFleetCampaign({ ...DEFAULT_FLEET, devices: 1000, hourSeconds: 4, imageMiB: 1, quietHours: 0.25, log: (line) => t.log(line) });
  t.context = { result, elapsedSeconds: (Date.now() - started) / 1000 };
});

const invariant = (t: { context: Ctx }, name: string) => {
  const found = t.context.result.invariants.find((i) => i.name === name);
  if (!found) throw new Error(`no invariant ${name}`);
  return found;
};

test('the first release reaches every device through 1 % → 10 % → 100 %', (t) => {
  const s = t.context.result.summary as { realAgents: number; devices: number; release1: { committed: number; stages: { percentage: string; offered: number }[] } };
  const i = invariant(t, '1.1.0 adopted by every device');
  t.true(i.ok, i.detail);
  t.is(s.release1.committed, s.devices + s.realAgents);
  t.deepEqual(s.release1.stages.map((x) => x.percentage), ['1%', '10%', '100%']);
  const [one, ten, all] = s.release1.stages.map((x) => x.offered) as [number, number, number];
  // Buckets are uniform: about 1 % and 10 % of the fleet, and monotonic.
  t.true(one < ten && ten < all, `${one} < ${ten} < ${all}`);
  t.true(ten > 50 && ten < 160, `10 % stage offered ${ten}`);
  t.true(invariant(t, '1.1.0 did not halt').ok);
});

test('the failing release halts itself at the threshold, and nobody is offered it after', (t) => {
  for (const name of ['1.2.0 halted itself', '1.2.0 halted at the threshold', 'no 1.2.0 offer after the halt', 'exactly the devices whose health checks fail rolled 1.2.0 back']) {
    const i = invariant(t, name);
    t.true(i.ok, `${name}: ${i.detail}`);
  }
  const r2 = (t.context.result.summary as { release2: { offered: number; rolledBack: number; committed: number } }).release2;
  t.true(r2.offered < 1000, `offered to ${r2.offered} devices before it halted`);
  t.true(r2.rolledBack > 0);
  t.is(r2.committed + r2.rolledBack, r2.offered, 'every device offered it reached an outcome');
});

test('the server counts exactly what the simulation counts, with no 5xx', (t) => {
  for (const name of ["server stats equal the simulation's count exactly", 'no 5xx, no failed request', 'server counted no error responses', 'every check response verified', 'sampled payload fetches matched the offer', 'real agents ran without a failed cycle']) {
    const i = invariant(t, name);
    t.true(i.ok, `${name}: ${i.detail}`);
  }
  t.log(`elapsed ${t.context.elapsedSeconds.toFixed(1)} s`);
});

// The campaign found /metrics counting an event sent again after its 2xx (the agent's at-least-once delivery)
// every time, while the server answered `duplicates` and its stats counted it once; fixed, kept as a check.
test('tandem_events_total counts each accepted event once', (t) => {
  const i = invariant(t, 'tandem_events_total counts each accepted event once');
  t.true(i.ok, i.detail);
});

// ---- The fleet's check-response verifier --------------------------------------

function signedResponse(server: ProtocolServer, fields: Partial<CheckResponseBody> = {}): { nonce: string; response: CheckResponse } {
  const nonce = `nonce-${Math.random().toString(36).slice(2)}-0123456789`;
  const now = Date.now();
  const body: CheckResponseBody = {
    type: 'tandem-check-response', deviceId: 'fleet-0', nonce, issuedAt: new Date(now).toISOString(), expires: new Date(now + 300_000).toISOString(),
    pollAfterSeconds: 3600, keyring: server.options.keys.keyring, result: 'noUpdate', ...fields,
  };
  return { nonce, response: server.sign(body) };
}

test('the fleet verifier refuses what the agent refuses, after its first verdicts are memoized', async (t) => {
  const keys = makeFleetKeys();
  const server = new ProtocolServer({ keys });
  const decoder: ZstdDecoder = await loadZstdDecoder();
  const verifier = new CheckVerifier(keys.trust, 'http://127.0.0.1:9', decoder);
  const agentVerify = (json: unknown, nonce: string) => verifyCheckResponse(json, { nonce, deviceId: 'fleet-0', trust: keys.trust, now: new Date(), server: 'http://127.0.0.1:9', clockSkewSeconds: 300, decoder });

  const first = signedResponse(server);
  await verifier.verify(first.response, { nonce: first.nonce, deviceId: 'fleet-0' });
  const second = signedResponse(server);
  t.is((await verifier.verify(second.response, { nonce: second.nonce, deviceId: 'fleet-0' })).pollAfterSeconds, 3600);
  t.deepEqual([verifier.full, verifier.fast], [1, 1], 'the second response took the memoized path');

  const tampered = signedResponse(server);
  tampered.response.body.pollAfterSeconds = 60;
  const replayed = signedResponse(server);
  const expired = signedResponse(server, { issuedAt: new Date(Date.now() - 600_000).toISOString(), expires: new Date(Date.now() - 1000).toISOString() });
  const otherDevice = signedResponse(server, { deviceId: 'fleet-1' });
  const rogue = signedResponse(server);
  rogue.response = server.sign(rogue.response.body, generateKeyPair().privateKey);
  const cases: [string, { nonce: string; response: CheckResponse }, string][] = [
    ['a body changed after signing', tampered, 'ERR_BAD_SIGNATURE'],
    ['an answer to another request', { nonce: 'nonce-not-the-one-we-sent-0', response: replayed.response }, 'ERR_NONCE_MISMATCH'],
    ['an expired response', expired, 'ERR_RESPONSE_EXPIRED'],
    ['a response for another device', otherDevice, 'ERR_DEVICE_MISMATCH'],
    ['a signature by a key the keyring does not list', rogue, 'ERR_UNKNOWN_KEY'],
  ];
  for (const [what, { nonce, response }, code] of cases) {
    const json = JSON.parse(JSON.stringify(response)) as unknown;
    await t.throwsAsync(agentVerify(json, nonce), { code }, `agent: ${what}`);
    await t.throwsAsync(verifier.verify(json, { nonce, deviceId: 'fleet-0' }), { code }, `fleet: ${what}`);
  }
  t.is(verifier.full, 1, 'every refusal came from the memoized path');
});
