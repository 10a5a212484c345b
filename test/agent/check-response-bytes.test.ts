/**
 * The agent checks the server's signature over the body's bytes as they
 * arrived when the response has the server's layout
 * (`{"body":<canonical body>,"signature":<signature>}`), instead of
 * canonicalizing the parsed body again. These hold that shortcut to the same
 * verdicts: a changed byte is refused, a response re-serialized by something in
 * between (other whitespace or key order) is judged by its canonical form.
 */
import test from 'ava';
import { verifyCheckResponse } from '../../agent/steps/check.ts';
import { loadZstdCodec } from '../../payloads/zstd.ts';
import { canonicalize } from '../../shared/canonical-json.ts';
import { parseSafeJson } from '../../shared/safe-json.ts';
import type { CheckResponseBody } from '../../shared/schemas/protocol.ts';
import { makeFleetKeys, ProtocolServer } from './harness.ts';

const keys = makeFleetKeys();
const server = new ProtocolServer({ keys });
const nonce = 'n'.repeat(32);

function signed(): { text: string } {
  const now = Date.now();
  const body: CheckResponseBody = {
    type: 'tandem-check-response', deviceId: 'dev-1', nonce, issuedAt: new Date(now).toISOString(), expires: new Date(now + 60_000).toISOString(),
    pollAfterSeconds: 60, keyring: keys.keyring, result: 'noUpdate',
  };
  const response = server.sign(body);
  // Exactly what server/routes/check-response.ts sends.
  return { text: `{"body":${canonicalize(response.body)},"signature":${canonicalize(response.signature)}}` };
}

async function verify(text: string) {
  const decoder = await loadZstdCodec();
  const raw = Buffer.from(text, 'utf8');
  return verifyCheckResponse(parseSafeJson(raw), { nonce, deviceId: 'dev-1', trust: keys.trust, now: new Date(), server: 'http://127.0.0.1:9', clockSkewSeconds: 300, decoder }, raw);
}

test('the server layout verifies over the received bytes; a changed byte inside them is refused', async (t) => {
  const { text } = signed();
  t.is((await verify(text)).pollAfterSeconds, 60);
  await t.throwsAsync(verify(text.replace('"pollAfterSeconds":60', '"pollAfterSeconds":61')), { code: 'ERR_BAD_SIGNATURE' });
});

test('a response re-serialized on the way (whitespace, key order) is judged by its canonical form', async (t) => {
  const { text } = signed();
  const response = JSON.parse(text) as { body: CheckResponseBody; signature: unknown };
  // Same head and tail, other bytes between: the received-bytes check fails, the canonical one decides.
  const spaced = `{"body":${JSON.stringify(response.body, null, 1)},"signature":${canonicalize(response.signature as object)}}`;
  t.is((await verify(spaced)).pollAfterSeconds, 60);
  const reordered = JSON.stringify({ signature: response.signature, body: Object.fromEntries(Object.entries(response.body).reverse()) });
  t.is((await verify(reordered)).pollAfterSeconds, 60);
  const tampered = spaced.replace('"pollAfterSeconds": 60', '"pollAfterSeconds": 61');
  t.not(tampered, spaced);
  await t.throwsAsync(verify(tampered), { code: 'ERR_BAD_SIGNATURE' });
});
