/**
 * The fleet simulation's lightweight device (test/campaigns/fleet.ts): one
 * enrolled device speaking the real protocol to the real server, with no
 * slots. It polls on the server's jittered interval (with the agent's own
 * jitter on top, agent/backoff.ts pollSeconds), verifies every signed check
 * response, and on an offer plays the agent's life (agent/agent.ts) on a
 * compressed clock: `downloading` (dated when it accepts the offer),
 * `installed` and `rebooting` in one batch once the slot is written (the
 * agent queues the first and flushes all three in finalize), the reboot,
 * then health checks: `committed`, or —
 * after the health deadline, a second reboot back to the old slot —
 * `rolledBack` with ERR_HEALTH_CHECK; then the agent's default interval and a
 * check-in on the version it now runs. What it fakes (and says so): the
 * download (a sample fetches the whole payload or a Range, the rest wait the
 * time it would take), the slot write and the reboots.
 *
 * The ledger (FleetLedger) is the simulation's own count, kept from what the
 * server acknowledged with a 2xx: devices offered each release, each device's
 * events by type (counted once per device, as the server's per-release stats
 * are), check-ins, and devices that checked in on a new version. At the end it
 * must equal the server's stats exactly.
 */
import { createHash, randomUUID, verify as verifySignature, type KeyObject } from 'node:crypto';
import type { Dispatcher, Pool } from 'undici';
import { backoffSeconds, pollSeconds } from '../../agent/backoff.ts';
import { checkOffer, newNonce, verifyCheckResponse, type CheckResult, type VerifiedOffer } from '../../agent/steps/check.ts';
import { canonicalBytes } from '../../shared/canonical-json.ts';
import { TandemError, toTandemError } from '../../shared/errors.ts';
import type { RootTrust, VerifiedKeyring } from '../../shared/keyring.ts';
import { decodeBase64Strict, importPublicKey } from '../../shared/keys.ts';
import type { ZstdDecoder } from '../../payloads/zstd.ts';
import { CHECK_RESPONSE_DOMAIN, validateCheckResponse, type CheckRequest, type DeviceEvent, type EventType } from '../../shared/schemas/protocol.ts';
import type { ReleaseStats } from '../../server/store/store.ts';

// ---- Time -------------------------------------------------------------------

/** The agent's poll policy (agent/config.ts defaults), read from a real agent's loaded config. */
export interface AgentPollPolicy {
  intervalSeconds: number;
  minSeconds: number;
  maxSeconds: number;
  jitter: number;
  errorBackoffBaseSeconds: number;
  errorBackoffMaxSeconds: number;
}

/** Where a clock stands: at wall time `wall` (ms) it read `policy` seconds, and runs at `rate` policy seconds per wall second. */
export interface ClockAnchor {
  wall: number;
  policy: number;
  rate: number;
}

interface Wakeup {
  due: number;
  wake: (ok: boolean) => void;
}

/**
 * The compressed clock: policy time runs `rate` times faster than wall time.
 * Every duration the server or the agent states (poll intervals, health
 * deadline, backoff) is slept as is, in policy seconds, so the server answers
 * with its real policy and every figure converts back.
 *
 * The rate can change while devices sleep (the campaign slows the clock when
 * the server or the machine falls behind, see fleet-campaign.ts): a sleep is
 * a wake-up at a policy time, kept in a heap, with one wall timer for the
 * earliest. Processes agree on the time by sharing the anchor.
 */
export class SimClock {
  private anchor: ClockAnchor;
  private readonly heap: Wakeup[] = [];
  private timer: NodeJS.Timeout | undefined;

  constructor(rate: number, private readonly signal: AbortSignal, wall = Date.now()) {
    this.anchor = { wall, policy: 0, rate };
    signal.addEventListener('abort', () => {
      clearTimeout(this.timer);
      for (const w of this.heap.splice(0)) w.wake(false);
    }, { once: true });
  }

  get rate(): number {
    return this.anchor.rate;
  }

  /** Policy seconds at wall time `wall`. */
  now(wall = Date.now()): number {
    return this.anchor.policy + ((wall - this.anchor.wall) / 1000) * this.anchor.rate;
  }

  /** Runs at `rate` from now on; the anchor to hand to the other processes. */
  setRate(rate: number): ClockAnchor {
    const wall = Date.now();
    return this.follow({ wall, policy: this.now(wall), rate });
  }

  follow(anchor: ClockAnchor): ClockAnchor {
    this.anchor = anchor;
    this.arm();
    return anchor;
  }

  /** Sleeps `policySeconds`; false when the clock's signal ended it first. */
  sleep(policySeconds: number): Promise<boolean> {
    if (this.signal.aborted) return Promise.resolve(false);
    return new Promise((wake) => {
      this.push({ due: this.now() + policySeconds, wake });
      if (this.heap[0]!.wake === wake) this.arm();
    });
  }

  private arm(): void {
    clearTimeout(this.timer);
    const first = this.heap[0];
    if (first === undefined) return;
    this.timer = setTimeout(() => this.fire(), Math.max(0, ((first.due - this.now()) * 1000) / this.anchor.rate));
  }

  private fire(): void {
    const now = this.now();
    while (this.heap.length > 0 && this.heap[0]!.due <= now) this.pop().wake(true);
    this.arm();
  }

  private push(w: Wakeup): void {
    const h = this.heap;
    h.push(w);
    for (let i = h.length - 1; i > 0;) {
      const parent = (i - 1) >> 1;
      if (h[parent]!.due <= h[i]!.due) break;
      [h[parent], h[i]] = [h[i]!, h[parent]!];
      i = parent;
    }
  }

  private pop(): Wakeup {
    const h = this.heap;
    const top = h[0]!;
    const last = h.pop()!;
    if (h.length > 0) {
      h[0] = last;
      for (let i = 0; ;) {
        const l = 2 * i + 1;
        const r = l + 1;
        let m = i;
        if (l < h.length && h[l]!.due < h[m]!.due) m = l;
        if (r < h.length && h[r]!.due < h[m]!.due) m = r;
        if (m === i) break;
        [h[m], h[i]] = [h[i]!, h[m]!];
        i = m;
      }
    }
    return top;
  }
}

// ---- Deterministic choices --------------------------------------------------

/** A uniform number in [0, 1) from sha256(purpose:id): which devices fail, sample, and how long they take. */
export function unitOf(purpose: string, id: string): number {
  return createHash('sha256').update(`${purpose}:${id}`).digest().readUInt32BE(0) / 2 ** 32;
}

/** Release 2's health checks fail on this device: deterministic by device id, independent of the rollout bucket (salted per rollout). */
export function healthFails(id: string, failBp: number): boolean {
  return unitOf('fleet-health', id) * 10_000 < failBp;
}

// ---- Check responses ----------------------------------------------------------

/**
 * Verifies check responses as agent/steps/check.ts does, at fleet speed.
 * A response whose keyring or offer this process has not seen yet goes
 * through the agent's own verifyCheckResponse, whole. The keyring and the
 * offer are the same bytes in every later response (the server caches them,
 * check-response.ts), and verifying the same bytes again gives the same
 * verdict, so later responses reuse that verdict for them and check the rest
 * per response: the schema, the server's signature over the canonical body
 * (a server key of the verified keyring, unrevoked, unexpired), the nonce,
 * the device id and the expiry. What is saved: the root signature, the
 * manifest's signature and decode, and importPublicKey's curve check (BigInt
 * arithmetic) on keys already checked. Measured on this 2-core machine under
 * load: 12.7 ms per no-update response and 29 ms per offer with the agent's
 * function, 0.9 and 1.7 ms here; at fleet rates the former would make the
 * simulation, not the server, the bottleneck. fleet.test.ts checks that both
 * refuse the same forged, replayed, expired and misdirected responses.
 */
export class CheckVerifier {
  private readonly keyrings = new Map<string, VerifiedKeyring>();
  private readonly offers = new Map<string, VerifiedOffer>();
  private readonly serverKeys = new Map<string, KeyObject>();
  private readonly domain = Buffer.from(CHECK_RESPONSE_DOMAIN, 'utf8');
  /** Responses verified by the agent's own function, and by the memoized path. */
  full = 0;
  fast = 0;

  constructor(private readonly trust: RootTrust, private readonly server: string, private readonly decoder: ZstdDecoder, private readonly clockSkewSeconds = 300) {}

  async verify(json: unknown, expect: { nonce: string; deviceId: string; now?: Date }): Promise<CheckResult> {
    const now = expect.now ?? new Date();
    const response = validateCheckResponse(json, 'check response');
    const { body } = response;
    // Keys of the verdicts: the parsed values as JSON (equal values, equal verdicts; cheaper than canonical JSON).
    const keyringText = JSON.stringify(body.keyring);
    const offerText = body.update === undefined ? undefined : JSON.stringify(body.update);
    const keyring = this.keyrings.get(keyringText);
    const offer = offerText === undefined ? undefined : this.offers.get(offerText);
    if (keyring === undefined || (offerText !== undefined && offer === undefined)) {
      const result = await verifyCheckResponse(json, { nonce: expect.nonce, deviceId: expect.deviceId, trust: this.trust, now, server: this.server, clockSkewSeconds: this.clockSkewSeconds, decoder: this.decoder });
      this.full++;
      this.keyrings.set(keyringText, result.keyring);
      if (offerText !== undefined && result.update) this.offers.set(offerText, result.update);
      return result;
    }
    this.fast++;
    if (!(now.getTime() < keyring.expires.getTime())) throw new TandemError('ERR_KEYRING_EXPIRED', `The keyring expired at ${keyring.expires.toISOString()}.`);
    this.verifyServerSignature(Buffer.concat([this.domain, canonicalBytes(body)]), response.signature, keyring, now);
    if (body.nonce !== expect.nonce) throw new TandemError('ERR_NONCE_MISMATCH', 'The check response answers another request (its nonce is not ours): a replayed response.');
    if (body.deviceId !== expect.deviceId) throw new TandemError('ERR_DEVICE_MISMATCH', `The check response is for device ${body.deviceId}, not ${expect.deviceId}.`);
    const expires = Date.parse(body.expires);
    const issued = Date.parse(body.issuedAt);
    if (!(now.getTime() < expires) || !(issued <= now.getTime() + this.clockSkewSeconds * 1000) || !(issued < expires)) {
      throw new TandemError('ERR_RESPONSE_EXPIRED', `The check response (issued ${body.issuedAt}, expires ${body.expires}) is not valid now.`);
    }
    return { pollAfterSeconds: body.pollAfterSeconds, keyring, ...(offer ? { update: offer } : {}) };
  }

  private verifyServerSignature(message: Buffer, signature: { keyId: string; signature: string }, keyring: VerifiedKeyring, now: Date): void {
    const key = keyring.serverKeys.get(signature.keyId);
    if (key === undefined) throw new TandemError('ERR_UNKNOWN_KEY', `Key ${signature.keyId} is not a server key in keyring version ${keyring.version}.`);
    if (key.revoked) throw new TandemError('ERR_KEY_REVOKED', `server key ${signature.keyId} is revoked.`);
    if (!(now.getTime() < key.expires.getTime())) throw new TandemError('ERR_KEY_EXPIRED', `server key ${signature.keyId} expired.`);
    let keyObject = this.serverKeys.get(signature.keyId);
    if (keyObject === undefined) {
      keyObject = importPublicKey(key.publicKey);
      this.serverKeys.set(signature.keyId, keyObject);
    }
    const bytes = decodeBase64Strict(signature.signature, 64);
    let ok = false;
    try {
      ok = bytes !== undefined && verifySignature(null, message, keyObject, bytes);
    } catch {
      ok = false;
    }
    if (!ok) throw new TandemError('ERR_BAD_SIGNATURE', `The signature by server key ${signature.keyId} does not verify.`);
  }
}

// ---- The ledger ---------------------------------------------------------------

/** Per release, devices (each counted once) as the server's ReleaseStats counts them, plus adoption. */
export interface ReleaseTally extends Omit<ReleaseStats, 'errorsByCode'> {
  /** Devices that checked in running this release after installing it. */
  adopted: number;
  /** Policy seconds (and wall ms) of the last commit, and of the last first check-in on this version. */
  lastCommitAt: number;
  lastAdoptAt: number;
  lastCommitWall: number;
  lastAdoptWall: number;
}

export interface FleetTally {
  checks: number;
  /** Check responses by result: every update response counts (the server's tandem_checks_total). */
  updates: number;
  noUpdates: number;
  eventPosts: number;
  /** Distinct events acknowledged with a 2xx, by type. */
  events: Record<string, number>;
  /** Batches sent again after a 2xx, as after a lost answer, and what the server said to them. */
  resentBatches: number;
  resentEvents: number;
  resentAcceptedAgain: number;
  /** The server's own `accepted` answers to first sends, summed. */
  serverAccepted: number;
  payloadFull: number;
  payloadRange: number;
  payloadBytes: number;
  payloadMismatches: number;
  /** Non-2xx answers and network failures, as "METHOD route status|code": must stay empty. */
  failures: Record<string, number>;
  /** Check responses the device refused (verification or install policy), by code: must stay empty. */
  refused: Record<string, number>;
  releases: Record<string, ReleaseTally>;
  /** Devices offered a release that have not reported an outcome yet. */
  inFlight: number;
  /** Devices that committed a release and have not checked in on it yet. */
  awaitingCheckIn: number;
  /** Intervals between idle check-ins, in policy seconds. */
  pollGaps: { count: number; sum: number; min: number; max: number };
  /** Devices by the version their last acknowledged check-in said they run (what the server's adoption counts). */
  running: Record<string, number>;
}

export function emptyTally(): FleetTally {
  return {
    checks: 0, updates: 0, noUpdates: 0, eventPosts: 0, events: {}, resentBatches: 0, resentEvents: 0, resentAcceptedAgain: 0, serverAccepted: 0,
    payloadFull: 0, payloadRange: 0, payloadBytes: 0, payloadMismatches: 0, failures: {}, refused: {}, releases: {}, inFlight: 0, awaitingCheckIn: 0,
    pollGaps: { count: 0, sum: 0, min: Number.MAX_SAFE_INTEGER, max: 0 }, running: {},
  };
}

export const emptyRelease = (): ReleaseTally => ({
  offered: 0, downloading: 0, installed: 0, rebooting: 0, committed: 0, rolledBack: 0, errors: 0, attempts: 0, failures: 0, adopted: 0, lastCommitAt: 0, lastAdoptAt: 0, lastCommitWall: 0, lastAdoptWall: 0,
});

const add = (into: Record<string, number>, key: string, by = 1): void => {
  into[key] = (into[key] ?? 0) + by;
};

/** Sums tallies of several processes (numbers add, last-times take the max). */
export function mergeTallies(tallies: FleetTally[]): FleetTally {
  const out = emptyTally();
  for (const t of tallies) {
    for (const k of ['checks', 'updates', 'noUpdates', 'eventPosts', 'resentBatches', 'resentEvents', 'resentAcceptedAgain', 'serverAccepted', 'payloadFull', 'payloadRange', 'payloadBytes', 'payloadMismatches', 'inFlight', 'awaitingCheckIn'] as const) {
      out[k] += t[k];
    }
    for (const [k, v] of Object.entries(t.events)) add(out.events, k, v);
    for (const [k, v] of Object.entries(t.failures)) add(out.failures, k, v);
    for (const [k, v] of Object.entries(t.refused)) add(out.refused, k, v);
    for (const [k, v] of Object.entries(t.running)) add(out.running, k, v);
    for (const [version, r] of Object.entries(t.releases)) {
      const o = (out.releases[version] ??= emptyRelease());
      for (const k of Object.keys(r) as (keyof ReleaseTally)[]) {
        o[k] = k.startsWith('last') ? Math.max(o[k], r[k]) : o[k] + r[k];
      }
    }
    out.pollGaps.count += t.pollGaps.count;
    out.pollGaps.sum += t.pollGaps.sum;
    out.pollGaps.min = Math.min(out.pollGaps.min, t.pollGaps.min);
    out.pollGaps.max = Math.max(out.pollGaps.max, t.pollGaps.max);
  }
  return out;
}

const OUTCOMES = new Set<string>(['committed', 'rolledBack', 'error']);
const FAILED = new Set<string>(['rolledBack', 'error']);

interface DeviceRecord {
  /** `${version}\n${type}` acknowledged, and releases offered. */
  acked: Set<string>;
  offered: Set<string>;
  /** Committed releases not yet checked in on. */
  awaiting: Set<string>;
  outcome: Set<string>;
  failed: Set<string>;
  running: string | undefined;
}

/**
 * What the server acknowledged, per device, folded into a FleetTally. Both
 * the device models and the real agents' HTTP observer feed it, so the real
 * agents count exactly like the models.
 */
export class FleetLedger {
  readonly tally = emptyTally();
  private readonly devices = new Map<string, DeviceRecord>();
  /** For the release under watch: when each offer's check left and came back, and each outcome's acknowledgement. */
  readonly offerTimes: [sentAt: number, receivedAt: number][] = [];
  readonly outcomeTimes: [ackedAt: number, failed: 0 | 1][] = [];

  /** `policyNow` reads the compressed clock, for the last commit and check-in times. */
  constructor(readonly watchVersion: string | undefined, private readonly policyNow: () => number) {}

  private device(id: string): DeviceRecord {
    let d = this.devices.get(id);
    if (d === undefined) {
      d = { acked: new Set(), offered: new Set(), awaiting: new Set(), outcome: new Set(), failed: new Set(), running: undefined };
      this.devices.set(id, d);
    }
    return d;
  }

  release(version: string): ReleaseTally {
    return (this.tally.releases[version] ??= emptyRelease());
  }

  /** A 2xx check response: `running` is the version the request said it runs, `offered` the update's version. */
  checked(deviceId: string, running: string, offered: string | undefined, sentAt: number, receivedAt = Date.now()): void {
    const t = this.tally;
    const d = this.device(deviceId);
    t.checks++;
    if (offered === undefined) t.noUpdates++;
    else t.updates++;
    if (d.running !== running) {
      if (d.running !== undefined) add(t.running, d.running, -1);
      add(t.running, running);
      d.running = running;
    }
    if (d.awaiting.delete(running)) {
      t.awaitingCheckIn--;
      const r = this.release(running);
      r.adopted++;
      r.lastAdoptAt = Math.max(r.lastAdoptAt, this.policyNow());
      r.lastAdoptWall = Math.max(r.lastAdoptWall, receivedAt);
    }
    if (offered !== undefined && !d.offered.has(offered)) {
      d.offered.add(offered);
      this.release(offered).offered++;
      t.inFlight++;
      if (offered === this.watchVersion) this.offerTimes.push([sentAt, receivedAt]);
    }
  }

  /** Events acknowledged with a 2xx; `answer` is the server's `{accepted, duplicates}`. */
  acked(deviceId: string, events: readonly DeviceEvent[], answer: { accepted?: number; duplicates?: number }, resent: boolean, at = Date.now()): void {
    const t = this.tally;
    if (resent) {
      t.resentBatches++;
      t.resentEvents += events.length;
      t.resentAcceptedAgain += answer.accepted ?? 0;
      return;
    }
    t.eventPosts++;
    t.serverAccepted += answer.accepted ?? 0;
    const d = this.device(deviceId);
    for (const e of events) {
      const key = `${e.version}\n${e.type}`;
      add(t.events, e.type);
      if (d.acked.has(key)) continue;
      d.acked.add(key);
      const r = this.release(e.version);
      if (e.type === 'error') r.errors++;
      else r[e.type]++;
      if (OUTCOMES.has(e.type) && !d.outcome.has(e.version)) {
        d.outcome.add(e.version);
        r.attempts++;
        if (d.offered.has(e.version)) t.inFlight--;
        if (e.version === this.watchVersion) this.outcomeTimes.push([at, FAILED.has(e.type) ? 1 : 0]);
      }
      if (FAILED.has(e.type) && !d.failed.has(e.version)) {
        d.failed.add(e.version);
        r.failures++;
      }
      if (e.type === 'committed') {
        r.lastCommitAt = Math.max(r.lastCommitAt, this.policyNow());
        r.lastCommitWall = Math.max(r.lastCommitWall, at);
        d.awaiting.add(e.version);
        t.awaitingCheckIn++;
      }
    }
  }

  failed(what: string): void {
    add(this.tally.failures, what);
  }

  /** Devices with an outcome for `version`, and whether it was a failure. */
  outcomesOf(version: string): { id: string; failed: boolean }[] {
    const out: { id: string; failed: boolean }[] = [];
    for (const [id, d] of this.devices) if (d.outcome.has(version)) out.push({ id, failed: d.failed.has(version) });
    return out;
  }

  refused(code: string): void {
    add(this.tally.refused, code);
  }

  pollGap(policySeconds: number): void {
    const g = this.tally.pollGaps;
    g.count++;
    g.sum += policySeconds;
    g.min = Math.min(g.min, policySeconds);
    g.max = Math.max(g.max, policySeconds);
  }
}

// ---- The device model -----------------------------------------------------------

export interface FleetPlan {
  url: string;
  product: string;
  board: string;
  channel: string;
  factoryVersion: string;
  /** Release whose health checks fail on `failBp` basis points of the devices. */
  failingVersion: string;
  failBp: number;
  poll: AgentPollPolicy;
  healthDeadlineSeconds: number;
  /** Root public key (base64), pinned like a device pins root.pub. */
  rootPublicKey: string;
  /** One device in `fullEvery` fetches a whole offered payload and checks its sha256; one in `rangeEvery` fetches its prelude with a Range. */
  fullEvery: number;
  rangeEvery: number;
  /** One event batch in `resendEvery` is sent a second time after its 2xx, as after a lost answer. */
  resendEvery: number;
}

export interface FleetIo {
  pool: Pool;
  verifier: CheckVerifier;
  ledger: FleetLedger;
  clock: SimClock;
  /** Check-in and event-batch latencies (ms), all of them and those since the campaign's last look (its pace control). */
  latencies: number[];
  eventLatencies: number[];
  /** Check-in latencies until policy second `quietUntil` (check-ins only, nothing offered yet). */
  quietLatencies: number[];
  quietUntil: number;
  window: { checks: number[]; events: number[] };
  signal: AbortSignal;
}

interface Reply {
  status: number;
  text: string;
}

async function postJson(io: FleetIo, path: string, credential: string, body: unknown): Promise<Reply> {
  const res = await io.pool.request({
    method: 'POST',
    path,
    headers: { 'content-type': 'application/json', accept: 'application/json', authorization: `Bearer ${credential}` },
    body: JSON.stringify(body),
  });
  return { status: res.statusCode, text: await res.body.text() };
}

/** One simulated device: enrolled identity, running version and slot, failed versions. */
export class SimDevice {
  version: string;
  slot: 'A' | 'B' = 'A';
  readonly failedVersions: string[] = [];
  private errors = 0;

  constructor(readonly id: string, readonly credential: string, readonly plan: FleetPlan, private readonly io: FleetIo) {
    this.version = plan.factoryVersion;
  }

  /** Policy seconds this device takes for a step: fixed per device and step, within [min, max]. */
  private duration(step: string, min: number, max: number): number {
    return min + unitOf(`fleet-${step}`, this.id) * (max - min);
  }

  /** Polls until the signal ends; the first check comes at a random point of one interval, as in a fleet already running. */
  async run(): Promise<void> {
    const { clock, signal } = this.io;
    if (!(await clock.sleep(Math.random() * this.plan.poll.intervalSeconds))) return;
    while (!signal.aborted) {
      let wait: number;
      try {
        const { pollAfterSeconds, update } = await this.check();
        this.errors = 0;
        if (update === undefined) {
          wait = pollSeconds(pollAfterSeconds, this.plan.poll);
          this.io.ledger.pollGap(wait);
        } else {
          await this.install(update);
          // After the outcome the agent waits its own interval (agent.ts run: committed and rolledBack).
          wait = pollSeconds(undefined, this.plan.poll);
        }
      } catch (err) {
        if (signal.aborted) return;
        this.errors++;
        const error = toTandemError(err);
        this.io.ledger.failed(`check ${error.code}`);
        wait = backoffSeconds(this.errors - 1, this.plan.poll.errorBackoffBaseSeconds, this.plan.poll.errorBackoffMaxSeconds);
      }
      if (!(await clock.sleep(wait))) return;
    }
  }

  /** One check-in: the server's poll interval, and the verified offer, if any, that passed the install policy. */
  async check(): Promise<{ pollAfterSeconds: number; update?: VerifiedOffer }> {
    const { ledger } = this.io;
    const nonce = newNonce();
    const request: CheckRequest = {
      deviceId: this.id, product: this.plan.product, board: this.plan.board, channel: this.plan.channel, version: this.version, slot: this.slot,
      failedVersions: this.failedVersions.slice(-64), nonce,
    };
    const sentAt = Date.now();
    const t0 = performance.now();
    const reply = await postJson(this.io, '/v1/check', this.credential, request);
    const ms = performance.now() - t0;
    this.io.latencies.push(ms);
    this.io.window.checks.push(ms);
    if (this.io.clock.now() < this.io.quietUntil) this.io.quietLatencies.push(ms);
    if (reply.status !== 200) {
      ledger.failed(`POST /v1/check ${reply.status}`);
      throw new TandemError('ERR_HTTP_STATUS', `check: HTTP ${reply.status} ${reply.text.slice(0, 200)}`);
    }
    let result: CheckResult;
    try {
      result = await this.io.verifier.verify(JSON.parse(reply.text), { nonce, deviceId: this.id });
    } catch (err) {
      // As the agent: a refused response is counted as a check the server made, and reported as an error event.
      const error = toTandemError(err);
      ledger.checked(this.id, this.version, undefined, sentAt);
      ledger.refused(error.code);
      await this.deliver([this.event('error', this.version, { code: error.code, message: error.message.slice(0, 1024) })]);
      throw error;
    }
    ledger.checked(this.id, this.version, result.update?.offer.version, sentAt);
    const { pollAfterSeconds, update } = result;
    if (update === undefined) return { pollAfterSeconds };
    try {
      checkOffer(update, { board: this.plan.board, product: this.plan.product, currentVersion: this.version, failedVersions: this.failedVersions, bootedSlot: this.slot });
    } catch (err) {
      const error = toTandemError(err);
      ledger.refused(error.code);
      await this.deliver([this.event('error', update.offer.version, { code: error.code, message: error.message.slice(0, 1024) })]);
      throw error;
    }
    return { pollAfterSeconds, update };
  }

  private event(type: EventType, version: string, fields: Partial<DeviceEvent> = {}): DeviceEvent {
    return { id: randomUUID(), type, version, channel: this.plan.channel, at: new Date().toISOString(), ...fields };
  }

  /** The agent's life from an accepted offer to its outcome, on the compressed clock. */
  private async install(update: VerifiedOffer): Promise<void> {
    const { clock } = this.io;
    const { version, payload } = update.offer;
    const kind = payload.kind;
    const downloading = this.event('downloading', version, { payloadKind: kind, progress: { done: 0, total: payload.size } });
    await this.fetchSample(update);
    // Download and apply at this device's link speed: 2 to 15 minutes.
    if (!(await clock.sleep(this.duration('download', 120, 900)))) return;
    await this.deliver([downloading, this.event('installed', version, { payloadKind: kind }), this.event('rebooting', version)]);
    if (!(await clock.sleep(this.duration('reboot', 45, 90)))) return;
    if (version === this.plan.failingVersion && healthFails(this.id, this.plan.failBp)) {
      // Checks retried until the deadline, slot marked bad, reboot into the old slot, report from there.
      if (!(await clock.sleep(this.plan.healthDeadlineSeconds + this.duration('reboot-back', 45, 90)))) return;
      const message = 'Health check "app" failed: exit 1';
      await this.deliver([this.event('rolledBack', version, { code: 'ERR_HEALTH_CHECK', message, payloadKind: kind })]);
      this.failedVersions.push(version);
      return;
    }
    if (!(await clock.sleep(this.duration('health', 10, 30)))) return;
    this.version = version;
    this.slot = this.slot === 'A' ? 'B' : 'A';
    await this.deliver([this.event('committed', version, { payloadKind: kind })]);
  }

  /** What a real download would fetch, for a sample: the whole payload (sha256 checked) or its prelude with a Range. */
  private async fetchSample(update: VerifiedOffer): Promise<void> {
    const pick = unitOf('fleet-fetch', `${this.id}:${update.offer.version}`);
    const whole = pick < 1 / this.plan.fullEvery;
    const range = !whole && pick < 1 / this.plan.fullEvery + 1 / this.plan.rangeEvery;
    if (!whole && !range) return;
    const url = new URL(update.payloadUrl);
    const { payload } = update.offer;
    const res = await this.io.pool.request({
      method: 'GET',
      path: url.pathname,
      headers: range ? { range: `bytes=0-${payload.preludeSize - 1}` } : {},
    } as Dispatcher.RequestOptions);
    const hash = createHash('sha256');
    let bytes = 0;
    for await (const chunk of res.body) {
      bytes += (chunk as Buffer).length;
      if (whole) hash.update(chunk as Buffer);
    }
    const t = this.io.ledger.tally;
    t.payloadBytes += bytes;
    if (whole) {
      t.payloadFull++;
      if (res.statusCode !== 200 || bytes !== payload.size || hash.digest('hex') !== payload.sha256) t.payloadMismatches++;
    } else {
      t.payloadRange++;
      if (res.statusCode !== 206 || bytes !== payload.preludeSize) t.payloadMismatches++;
    }
    if (res.statusCode >= 400) this.io.ledger.failed(`GET /v1/payloads ${res.statusCode}`);
  }

  /**
   * Delivers a batch at least once, as the agent's outbox does: again after a
   * failure (backing off), and for a sample once more after its 2xx.
   */
  async deliver(events: DeviceEvent[]): Promise<void> {
    const { ledger, clock } = this.io;
    const body = { deviceId: this.id, events };
    for (let attempt = 0; ; attempt++) {
      let reply: Reply | undefined;
      const t0 = performance.now();
      try {
        reply = await postJson(this.io, '/v1/events', this.credential, body);
        const ms = performance.now() - t0;
        this.io.eventLatencies.push(ms);
        this.io.window.events.push(ms);
      } catch (err) {
        ledger.failed(`POST /v1/events ${toTandemError(err).code}`);
      }
      if (reply !== undefined && reply.status >= 200 && reply.status < 300) {
        ledger.acked(this.id, events, JSON.parse(reply.text) as { accepted?: number; duplicates?: number }, false);
        break;
      }
      if (reply !== undefined) {
        ledger.failed(`POST /v1/events ${reply.status}`);
        // The agent drops a batch the server refuses for good (a 4xx other than 401/408/429).
        if (reply.status >= 400 && reply.status < 500 && ![401, 408, 429].includes(reply.status)) return;
      }
      if (!(await clock.sleep(backoffSeconds(attempt, this.plan.poll.errorBackoffBaseSeconds, this.plan.poll.errorBackoffMaxSeconds)))) return;
    }
    if (unitOf('fleet-resend', events[0]!.id) < 1 / this.plan.resendEvery) {
      const again = await postJson(this.io, '/v1/events', this.credential, body).catch(() => undefined);
      if (again !== undefined && again.status >= 200 && again.status < 300) ledger.acked(this.id, events, JSON.parse(again.text) as { accepted?: number }, true);
      else ledger.failed(`POST /v1/events (resent) ${again?.status ?? 'network'}`);
    }
  }
}
