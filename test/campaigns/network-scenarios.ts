/**
 * The network fault campaign's scenarios and their judge. Each scenario puts
 * one fault plan on the proxy, runs a real agent's install cycle through it,
 * clears the fault and lets the agent finish, then answers the campaign's four
 * questions from what the proxy logged and what the device holds:
 *
 * - refused correctly: a fault that damages what the device would install
 *   (a flipped byte, a wrong Content-Range, a replaced payload) makes the
 *   install fail with the right code, reported to the server, and leaves
 *   nothing bootable (boot env untouched, slot not recorded as holding a
 *   version); a fault that only delays or cuts the transfer is not refused;
 * - resumed correctly: after a transfer fault the next request asks for
 *   `Range: bytes=R-` with `If-Range` = the ETag, R a blob boundary at or
 *   before what had arrived (the checkpoint), not byte 0;
 * - completed after the fault cleared: the target slot holds the signed image
 *   (sha256) and the boot env puts it on trial;
 * - bytes re-downloaded: payload bytes through the proxy minus the payload size.
 *
 * Each scenario also states what its fault must trigger (the downloader's
 * retry codes, timeouts firing in time, backoff and Retry-After); anything
 * else — a hang, a crash, a server 5xx, corrupt data installed — fails it.
 */
import { createHash, randomBytes } from 'node:crypto';
import { readFile } from 'node:fs/promises';
import { isTandemError } from '../../shared/errors.ts';
import type { CycleResult } from '../../agent/agent.ts';
import type { FaultRule, ProxiedRequest } from './fault-proxy.ts';
import { NEW_VERSION, type NetworkRig, type DownloadSettings, type PayloadLayout, type RigDevice } from './network-rig.ts';

export interface CampaignProfile {
  imageMiB: number;
  deltaFraction: number;
  download: DownloadSettings;
  /** The drip-feed rate (the issue says 1 byte/s). */
  dripBytesPerSecond: number;
  /** A stall the agent must sit out without giving up (below the read timeout). */
  shortStallMs: number;
  /** Retry-After sent with each 503. */
  retryAfterSeconds: number;
  /** Requests answered 500 or 503 in a storm. */
  stormLength: number;
  /** How long the server stays down in the restart scenario. */
  restartDownMs: number;
  /** A cycle still running after this is a hang. */
  cycleTimeoutSeconds: number;
}

const MiB = 1024 * 1024;

/** `npm run campaign:network`: 24 MiB images (4-blob full payload), timeouts of a few seconds. */
export const CAMPAIGN_PROFILE: CampaignProfile = {
  imageMiB: 24,
  deltaFraction: 0.03,
  download: {
    connectTimeoutSeconds: 2,
    readTimeoutSeconds: 2,
    lowSpeedBytesPerSecond: 1024,
    lowSpeedSeconds: 3,
    retries: 8,
    backoffBaseSeconds: 0.2,
    backoffMaxSeconds: 2,
    checkpointEveryBytes: MiB,
    deltaFailuresBeforeFull: 2,
    maxAttemptsPerVersion: 3,
  },
  dripBytesPerSecond: 1,
  shortStallMs: 1000,
  retryAfterSeconds: 2,
  stormLength: 4,
  restartDownMs: 1500,
  cycleTimeoutSeconds: 120,
};

/** network.test.ts: 12 MiB images (2-blob full payload), the shortest timeouts that still tell faults apart. */
export const QUICK_PROFILE: CampaignProfile = {
  imageMiB: 12,
  deltaFraction: 0.03,
  download: {
    connectTimeoutSeconds: 2,
    readTimeoutSeconds: 1.5,
    lowSpeedBytesPerSecond: 1024,
    lowSpeedSeconds: 1,
    retries: 10,
    backoffBaseSeconds: 0.05,
    backoffMaxSeconds: 0.5,
    checkpointEveryBytes: 512 * 1024,
    deltaFailuresBeforeFull: 2,
    maxAttemptsPerVersion: 3,
  },
  dripBytesPerSecond: 1,
  shortStallMs: 500,
  retryAfterSeconds: 1,
  stormLength: 3,
  restartDownMs: 1000,
  cycleTimeoutSeconds: 45,
};

export type YesNo = 'yes' | 'no' | 'n.a.';

export interface ScenarioResult {
  scenario: string;
  payload: 'full' | 'delta';
  fault: string;
  refused: YesNo;
  /** The code the install failed with, when it failed. */
  refusedWith?: string;
  resumed: YesNo;
  /** The first resume's Range start. */
  resumeOffset?: number;
  completed: 'yes' | 'no';
  payloadBytes: number;
  proxiedBytes: number;
  redownloadedBytes: number;
  payloadRequests: number;
  /** Codes the downloader retried after, in order. */
  retriedAfter: string[];
  cycles: number;
  detail: string;
  seconds: number;
  ok: boolean;
  failures: string[];
}

interface Ctx {
  rig: NetworkRig;
  profile: CampaignProfile;
  layout: PayloadLayout;
  /** Scenario-private values (a restart in flight). */
  state: Record<string, unknown>;
}

interface Observation {
  requests: ProxiedRequest[];
  device: RigDevice;
  retries: { code: string; message: string; at: number }[];
}

export interface Scenario {
  name: string;
  payload: 'full' | 'delta';
  fault: string;
  rules(ctx: Ctx): FaultRule[];
  /** Runs before the device checks in (outside the fault plan). */
  prepare?(ctx: Ctx): Promise<void>;
  /** Undoes what the fault changed outside the proxy (a replaced file, a restart in flight): the fault clears. */
  clear?(ctx: Ctx): Promise<void>;
  /** After the scenario is judged: leaves the rig as the next scenario expects it. */
  cleanup?(ctx: Ctx): Promise<void>;
  expect: {
    /** The install must fail with one of these codes (then nothing may be bootable); absent: it must not fail. */
    refusedWith?: readonly string[];
    /** A resume from a checkpoint ('yes'), or none needed ('n.a.'); absent: reported, not judged. */
    resumed?: YesNo;
    /** Codes the downloader must retry after (each at least once); `[]`: no retry at all. */
    retriedAfter?: readonly string[];
  };
  /** Scenario-specific judgement (timings): a detail for the table, and failures. */
  judge?(obs: Observation, ctx: Ctx): { detail: string; failures: string[] };
}

/** Middle of blob `i` (or of the data section when there are fewer blobs): after a checkpoint when i ≥ 1. */
function midBlob(layout: PayloadLayout, i: number): number {
  const b = Math.min(i, layout.blobStarts.length - 1);
  return layout.blobStarts[b]! + Math.floor(layout.blobSizes[b]! / 2);
}

const seconds = (ms: number) => `${(ms / 1000).toFixed(1)} s`;

/** The request the fault hit (the first one the proxy applied a fault to). */
function faulted(obs: Observation): ProxiedRequest | undefined {
  return obs.requests.find((r) => r.fault !== undefined);
}

/** Lower bound of the agent's backoff before retry `n` (1-based): "equal jitter" waits at least half the exponential delay. */
function minBackoffMs(profile: CampaignProfile, n: number): number {
  const { backoffBaseSeconds: base, backoffMaxSeconds: max } = profile.download;
  return (Math.min(max, base * 2 ** (n - 1)) / 2) * 1000;
}

export const SCENARIOS: readonly Scenario[] = [
  {
    name: 'reset',
    payload: 'full',
    fault: 'connection reset mid-download',
    rules: ({ layout }) => [{ route: 'payload', fault: { kind: 'reset', afterBytes: midBlob(layout, 1) } }],
    expect: { resumed: 'yes', retriedAfter: ['ERR_NETWORK'] },
  },
  {
    name: 'reset-delta',
    payload: 'delta',
    fault: 'connection reset mid-download (delta)',
    rules: ({ layout }) => [{ route: 'payload', fault: { kind: 'reset', afterBytes: layout.dataOffset + Math.floor((layout.size - layout.dataOffset) / 2) } }],
    // One blob: the only checkpoint before the fault is the start of the data section, if any.
    expect: { retriedAfter: ['ERR_NETWORK'] },
  },
  {
    name: 'stall',
    payload: 'full',
    fault: 'stall until the client gives up',
    rules: ({ layout }) => [{ route: 'payload', fault: { kind: 'stall', afterBytes: midBlob(layout, 1) } }],
    expect: { resumed: 'yes', retriedAfter: ['ERR_NETWORK'] },
    judge: (obs, { profile }) => {
      const r = faulted(obs);
      const timeout = profile.download.readTimeoutSeconds * 1000;
      if (!r?.faultAt || !r.endedAt) return { detail: '', failures: ['the stalled request never ended'] };
      const waited = r.endedAt - r.faultAt;
      const failures: string[] = [];
      if (waited < timeout * 0.9) failures.push(`gave up after ${seconds(waited)}, before the ${seconds(timeout)} read timeout`);
      // The agent first drains what was already buffered, so it notices a little after the timeout; much later is a hang.
      if (waited > timeout + 3000) failures.push(`gave up only after ${seconds(waited)} (read timeout ${seconds(timeout)})`);
      if (!obs.retries.some((x) => x.message.includes('UND_ERR_BODY_TIMEOUT'))) failures.push('no retry after a body timeout (UND_ERR_BODY_TIMEOUT)');
      return { detail: `read timeout fired after ${seconds(waited)}`, failures };
    },
  },
  {
    name: 'stall-short',
    payload: 'full',
    fault: 'stall shorter than the read timeout',
    rules: ({ layout, profile }) => [{ route: 'payload', fault: { kind: 'stall', afterBytes: midBlob(layout, 1), ms: profile.shortStallMs } }],
    expect: { resumed: 'n.a.', retriedAfter: [] },
    judge: ({ requests }, { profile }) => ({
      detail: `sat out ${seconds(profile.shortStallMs)} on the same connection`,
      failures: requests.length === 1 ? [] : [`${requests.length} payload requests; the stall should not have broken the first`],
    }),
  },
  {
    name: 'drip',
    payload: 'full',
    fault: 'drip-feed mid-download',
    rules: ({ layout, profile }) => [{ route: 'payload', fault: { kind: 'drip', afterBytes: midBlob(layout, 1), bytesPerSecond: profile.dripBytesPerSecond } }],
    expect: { resumed: 'yes', retriedAfter: ['ERR_DOWNLOAD_STALLED'] },
    judge: (obs, { profile }) => {
      const r = faulted(obs);
      if (!r?.faultAt || !r.endedAt) return { detail: '', failures: ['the dripping request never ended'] };
      const waited = r.endedAt - r.faultAt;
      // The low-speed window may first close over bytes that came fast (a window ends on a byte's
      // arrival, so it lasts up to one drip interval more); the second one cannot.
      const limit = (2 * (profile.download.lowSpeedSeconds + 1 / profile.dripBytesPerSecond) + 3) * 1000;
      return {
        detail: `${profile.dripBytesPerSecond} B/s refused after ${seconds(waited)}`,
        failures: waited > limit ? [`the drip went on for ${seconds(waited)} (limit ${seconds(limit)})`] : [],
      };
    },
  },
  {
    name: 'truncated',
    payload: 'full',
    fault: 'body cut short, cleanly ended (chunked)',
    rules: ({ layout }) => [{ route: 'payload', fault: { kind: 'truncate', atBytes: midBlob(layout, 1), framing: 'chunked' } }],
    expect: { resumed: 'yes', retriedAfter: ['ERR_PAYLOAD_TRUNCATED'] },
  },
  {
    name: 'truncated-declared',
    payload: 'full',
    fault: 'short body with a matching short Content-Length',
    rules: ({ layout }) => [{ route: 'payload', fault: { kind: 'truncate', atBytes: midBlob(layout, 1), framing: 'length' } }],
    expect: { refusedWith: ['ERR_CONTENT_RANGE'] },
  },
  {
    name: 'flip',
    payload: 'full',
    fault: 'one payload data byte flipped, once',
    rules: ({ layout }) => [{ route: 'payload', fault: { kind: 'flip', offset: midBlob(layout, 1), mask: 0x20 } }],
    expect: { resumed: 'yes', retriedAfter: ['ERR_BLOB_HASH'] },
  },
  {
    name: 'flip-always',
    payload: 'full',
    fault: 'a byte of the first blob flipped in every response',
    rules: ({ layout }) => [{ route: 'payload', times: Infinity, fault: { kind: 'flip', offset: midBlob(layout, 0), mask: 0x20 } }],
    expect: { refusedWith: ['ERR_BLOB_HASH'], retriedAfter: ['ERR_BLOB_HASH'] },
  },
  {
    name: 'content-range',
    payload: 'full',
    fault: 'reset, then a wrong Content-Range on the resume',
    rules: ({ layout }) => [
      { route: 'payload', fault: { kind: 'reset', afterBytes: midBlob(layout, 1) } },
      { route: 'payload', skip: 1, fault: { kind: 'contentRange', rewrite: (v) => (v ?? 'bytes 0-0/0').replace(/^bytes (\d+)-/, (_, s: string) => `bytes ${Number(s) + 4096}-`) } },
    ],
    expect: { refusedWith: ['ERR_CONTENT_RANGE'], retriedAfter: ['ERR_NETWORK'] },
    judge: ({ requests }) => {
      const bad = requests.find((r) => r.fault === 'contentRange');
      return { detail: bad ? `resume answered ${bad.contentRange ?? '?'} for ${bad.range ?? 'no range'}` : '', failures: bad?.range ? [] : ['no resume request reached the Content-Range fault'] };
    },
  },
  {
    name: '500-storm',
    payload: 'full',
    fault: 'reset, then 500 for the next requests',
    rules: ({ layout, profile }) => [
      { route: 'payload', fault: { kind: 'reset', afterBytes: midBlob(layout, 1) } },
      { route: 'payload', skip: 1, times: profile.stormLength, fault: { kind: 'status', status: 500 } },
    ],
    expect: { resumed: 'yes', retriedAfter: ['ERR_NETWORK', 'ERR_HTTP_STATUS'] },
    judge: ({ requests }, { profile }) => {
      // Gaps before retries 2.. (retry 1 follows the reset): each at least half its exponential delay.
      const gaps: number[] = [];
      const failures: string[] = [];
      for (let i = 1; i < requests.length; i++) {
        const prev = requests[i - 1]!;
        if (prev.endedAt === undefined) continue;
        const gap = requests[i]!.startedAt - prev.endedAt;
        gaps.push(gap);
        const floor = minBackoffMs(profile, i) - 15;
        if (gap < floor) failures.push(`retry ${i} came ${Math.round(gap)} ms after the failure, below the backoff floor ${Math.round(floor)} ms`);
      }
      return { detail: `retries after ${gaps.map((g) => (g / 1000).toFixed(2)).join(', ')} s`, failures };
    },
  },
  {
    name: '503-storm',
    payload: 'full',
    fault: '503 with Retry-After for the first requests',
    rules: ({ profile }) => [{ route: 'payload', times: profile.stormLength, fault: { kind: 'status', status: 503, retryAfterSeconds: profile.retryAfterSeconds } }],
    expect: { resumed: 'n.a.', retriedAfter: ['ERR_HTTP_STATUS'] },
    judge: ({ requests }, { profile }) => {
      const gaps: number[] = [];
      for (let i = 1; i < requests.length; i++) {
        const prev = requests[i - 1]!;
        if (prev.retryAfter !== undefined && prev.endedAt !== undefined) gaps.push(requests[i]!.startedAt - prev.endedAt);
      }
      const want = profile.retryAfterSeconds * 1000;
      const early = gaps.filter((g) => g < want * 0.95);
      return {
        detail: `Retry-After ${profile.retryAfterSeconds} s; retried after ${gaps.map((g) => (g / 1000).toFixed(2)).join(', ')} s`,
        failures: early.length > 0 ? [`Retry-After: ${profile.retryAfterSeconds} not honoured: ${early.length} of ${gaps.length} retries came sooner (${early.map((g) => seconds(g)).join(', ')})`] : [],
      };
    },
  },
  {
    name: 'server-restart',
    payload: 'full',
    fault: 'server stopped mid-download, restarted on the same port and data',
    rules: ({ layout, rig, profile, state }) => [
      {
        route: 'payload',
        fault: {
          kind: 'midBody',
          afterBytes: midBlob(layout, 1),
          // Bytes the server wrote before it stopped must not reach the agent after it: the connection dies here.
          cut: true,
          // The proxy waits for the stop (so the cut lands at this byte), not for the start.
          run: async () => {
            state.restartStarted = rig.proxy.now();
            await rig.stopServer();
            state.restart = new Promise((r) => setTimeout(r, profile.restartDownMs))
              .then(() => rig.startAgain())
              .then(() => (state.restartDone = rig.proxy.now()));
          },
        },
      },
    ],
    clear: async ({ state }) => {
      await (state.restart as Promise<unknown> | undefined);
    },
    expect: { resumed: 'yes', retriedAfter: ['ERR_NETWORK'] },
    judge: ({ requests }, { state }) => {
      const down = typeof state.restartDone === 'number' && typeof state.restartStarted === 'number' ? state.restartDone - state.restartStarted : undefined;
      const refused = requests.filter((r) => r.outcome === 'upstream-failed' && r.status === 502).length;
      return { detail: `server back after ${down === undefined ? '?' : seconds(down)}; ${refused} request(s) met it down (502)`, failures: down === undefined ? ['the restart did not happen'] : [] };
    },
  },
  {
    name: 'replaced-same-size',
    payload: 'full',
    fault: 'payload file overwritten after the check: same size, other data',
    rules: ({ layout, rig }) => [
      {
        route: 'payload',
        fault: {
          kind: 'beforeUpstream',
          run: async () => {
            const original = await readFile(layout.path);
            // The signed prelude stays (so the manifest still matches the offer); the data does not.
            const forged = Buffer.concat([original.subarray(0, layout.dataOffset), randomBytes(layout.size - layout.dataOffset)]);
            await rig.replacePayload(layout, forged);
          },
        },
      },
    ],
    clear: ({ rig, layout }) => restoreOriginal(rig, layout),
    expect: { refusedWith: ['ERR_BLOB_HASH'] },
  },
  {
    name: 'replaced-other-size',
    payload: 'full',
    fault: 'payload file overwritten after the check: a signed payload of another version and size',
    rules: ({ layout, rig }) => [
      { route: 'payload', fault: { kind: 'beforeUpstream', run: async () => rig.replacePayload(layout, await readFile(rig.oldFull.path)) } },
    ],
    clear: ({ rig, layout }) => restoreOriginal(rig, layout),
    // The server announces the file's size as it is now (never a cached one): the headers disagree with the signed offer
    // (a smaller replacement: ERR_CONTENT_RANGE; a larger one: ERR_DOWNLOAD_TOO_LARGE), or, at the same size, the prelude does.
    expect: { refusedWith: ['ERR_DOWNLOAD_TOO_LARGE', 'ERR_CONTENT_RANGE', 'ERR_PAYLOAD_CHANGED'] },
    judge: (_obs, { rig, layout }) => ({ detail: `${layout.size} bytes replaced by ${rig.oldFull.size} (${rig.oldFull.version} full)`, failures: rig.oldFull.size === layout.size ? ['the replacement has the same size'] : [] }),
  },
  {
    name: 'replaced-first-serve',
    payload: 'full',
    fault: 'as replaced-other-size, on a fresh server that had not served the payload yet',
    prepare: ({ rig }) => rig.restartServer(0, { cold: true }),
    rules: ({ layout, rig }) => [
      { route: 'payload', fault: { kind: 'beforeUpstream', run: async () => rig.replacePayload(layout, await readFile(rig.oldFull.path)) } },
    ],
    clear: ({ rig, layout }) => restoreOriginal(rig, layout),
    // The server announces the file's new size: the headers already disagree with the signed offer.
    expect: { refusedWith: ['ERR_DOWNLOAD_TOO_LARGE', 'ERR_CONTENT_RANGE'] },
    judge: ({ requests }, { layout }) => {
      // What the server announced for the restored file (failures come from the generic judgement).
      const last = requests[requests.length - 1];
      const wanted = layout.size - Number(RANGE.exec(last?.range ?? '')?.[1] ?? 0);
      const stale = last?.contentLength !== undefined && Number(last.contentLength) !== wanted;
      return { detail: stale ? `after the restore the server still sends Content-Length ${last.contentLength} for the ${layout.size}-byte file` : '', failures: [] };
    },
    // Whatever the server remembered of the replaced file goes with a restart, so later scenarios meet a sane server.
    cleanup: ({ rig }) => rig.restartServer(0),
  },
];

const originals = new WeakMap<PayloadLayout, Buffer>();

/** Keeps the original payload bytes (read once, before any scenario replaces them). */
export async function rememberOriginals(rig: NetworkRig): Promise<void> {
  for (const layout of [rig.full, rig.delta]) if (!originals.has(layout)) originals.set(layout, await readFile(layout.path));
}

async function restoreOriginal(rig: NetworkRig, layout: PayloadLayout): Promise<void> {
  const original = originals.get(layout);
  if (!original) throw new Error('rememberOriginals was not called');
  await rig.replacePayload(layout, original);
}

function errorCode(err: unknown): string {
  if (isTandemError(err)) return err.code;
  const e = err as { code?: unknown; name?: unknown };
  return typeof e?.code === 'string' ? e.code : typeof e?.name === 'string' ? e.name : 'unknown';
}

async function slotSha256(path: string, size: number): Promise<string> {
  const bytes = await readFile(path);
  return createHash('sha256').update(bytes.subarray(0, size)).digest('hex');
}

/** Runs one cycle with a deadline; a cycle past it is a hang. */
async function cycleWithin(device: RigDevice, ms: number): Promise<{ result?: CycleResult; error?: unknown; hung?: boolean }> {
  const signal = AbortSignal.timeout(ms);
  try {
    return { result: await device.agent.cycle(signal) };
  } catch (error) {
    return signal.aborted ? { error, hung: true } : { error };
  }
}

const RANGE = /^bytes=(\d+)-$/;

export interface RunOptions {
  /** Crashes seen by the process while the scenario ran (uncaught exceptions, unhandled rejections). */
  crashes?: () => string[];
}

/** Runs one scenario on a fresh device; never throws for a scenario failure (it is in the result). */
export async function runScenario(rig: NetworkRig, scenario: Scenario, profile: CampaignProfile, options: RunOptions = {}): Promise<ScenarioResult> {
  const started = performance.now();
  const crashesBefore = options.crashes?.().length ?? 0;
  const serverErrorsBefore = rig.serverErrors.length;
  const layout = scenario.payload === 'full' ? rig.full : rig.delta;
  const ctx: Ctx = { rig, profile, layout, state: {} };
  const failures: string[] = [];
  const device = await rig.device(scenario.payload, profile.download);
  const mark = rig.proxy.mark();
  const cycleMs = profile.cycleTimeoutSeconds * 1000;
  let refused: YesNo = 'n.a.';
  let refusedWith: string | undefined;
  let cycles = 0;
  let completed: 'yes' | 'no' = 'no';
  try {
    await scenario.prepare?.(ctx);
    rig.proxy.plan(scenario.rules(ctx));
    const first = await cycleWithin(device, cycleMs);
    cycles++;
    rig.proxy.clear();
    await scenario.clear?.(ctx);
    if (first.hung) failures.push(`HANG: the install cycle under the fault did not finish in ${profile.cycleTimeoutSeconds} s`);

    let final = first;
    if (first.error !== undefined && !first.hung) {
      refusedWith = errorCode(first.error);
      const expected = scenario.expect.refusedWith;
      if (expected === undefined) failures.push(`the install failed with ${refusedWith} (${(first.error as Error).message?.slice(0, 200)}); the fault should have been absorbed`);
      else if (!expected.includes(refusedWith)) failures.push(`refused with ${refusedWith}, expected ${expected.join(' or ')}`);
      refused = expected?.includes(refusedWith) ? 'yes' : 'no';
      // Nothing of a refused install may be bootable.
      const boot = await device.dev.control.read();
      const state = device.agent.state;
      if (boot.active !== 'A' || boot.trial || boot.good.B) failures.push(`after the refusal the boot env is ${JSON.stringify(boot)}: slot B must not be bootable`);
      if (state.phase !== 'idle' || state.slots.B !== undefined) failures.push(`after the refusal the agent is in ${state.phase} with slot B recorded as ${JSON.stringify(state.slots.B)}`);
      const detail = await rig.admin.device(device.id);
      if (!detail.events.some((e) => e.type === 'error' && e.code === refusedWith)) failures.push(`the server got no error event with ${refusedWith}`);
      // The fault has cleared: the agent's next cycles must get the update again and install it.
      for (let i = 0; i < 2 && final.result?.result !== 'installed'; i++) {
        final = await cycleWithin(device, cycleMs);
        cycles++;
        if (final.hung) failures.push(`HANG: an install cycle after the fault cleared did not finish in ${profile.cycleTimeoutSeconds} s`);
      }
    } else if (first.result && scenario.expect.refusedWith) {
      refused = 'no';
      failures.push(`the agent installed despite the fault (${first.result.result}); it should have refused with ${scenario.expect.refusedWith.join(' or ')}`);
    }

    // Completed: the signed image in slot B, on trial in the boot env.
    const sha = await slotSha256(device.dev.slotB, layout.target.size);
    const boot = await device.dev.control.read();
    if (final.result?.result === 'installed' && final.result.version === NEW_VERSION) {
      if (sha !== layout.target.sha256) failures.push(`CORRUPT DATA INSTALLED: slot B sha256 ${sha}, the signed target is ${layout.target.sha256}`);
      if (boot.active !== 'B' || !boot.trial) failures.push(`installed, but the boot env is ${JSON.stringify(boot)} (slot B should be on trial)`);
      if (sha === layout.target.sha256 && boot.active === 'B' && boot.trial) completed = 'yes';
    } else {
      const why = final.error !== undefined ? `${errorCode(final.error)}: ${(final.error as Error).message?.slice(0, 200)}` : JSON.stringify(final.result);
      failures.push(`not completed after the fault cleared (${why})`);
      if (boot.active === 'B' && sha !== layout.target.sha256) failures.push(`CORRUPT SLOT ON TRIAL: slot B is active but does not hold the signed image`);
    }
  } catch (err) {
    failures.push(`the scenario itself failed: ${(err as Error).stack ?? String(err)}`);
  } finally {
    rig.proxy.clear();
    await device.close().catch(() => undefined);
  }
  if (scenario.cleanup) await scenario.cleanup(ctx).catch((err: unknown) => failures.push(`cleanup failed: ${(err as Error).message}`));

  const requests = rig.proxy.since(mark, 'payload');
  const proxiedBytes = requests.reduce((sum, r) => sum + r.bytes, 0);
  const retries = device.logs
    .filter((l) => l.message === 'download failed, retrying')
    .map((l) => ({ code: String(l.fields.code), message: String(l.fields.message ?? ''), at: l.at }));
  const obs: Observation = { requests, device, retries };

  // Resumed: the second request that got payload bytes (2xx) asked for a Range from a checkpoint.
  const delivering = requests.filter((r) => r.status !== undefined && r.status >= 200 && r.status < 300);
  let resumed: YesNo = 'n.a.';
  let resumeOffset: number | undefined;
  if (delivering.length >= 2) {
    const second = delivering[1]!;
    const m = RANGE.exec(second.range ?? '');
    resumeOffset = m ? Number(m[1]) : 0;
    resumed = resumeOffset > 0 ? 'yes' : 'no';
    if (m) {
      const before = delivering[0]!.bytes;
      if (!layout.blobStarts.includes(resumeOffset)) failures.push(`resumed at ${resumeOffset}, not a blob boundary (${layout.blobStarts.join(', ')})`);
      if (resumeOffset > before) failures.push(`resumed at ${resumeOffset}, beyond the ${before} bytes that had arrived`);
      if (second.ifRange !== `"${layout.sha256}"`) failures.push(`resumed with If-Range ${String(second.ifRange)}, not the ETag "${layout.sha256}"`);
    }
  }
  if (scenario.expect.resumed !== undefined && resumed !== scenario.expect.resumed) {
    failures.push(`resumed: ${resumed}${resumeOffset !== undefined ? ` (from byte ${resumeOffset})` : ''}, expected ${scenario.expect.resumed}`);
  }
  const retriedAfter = retries.map((r) => r.code);
  const wantRetries = scenario.expect.retriedAfter;
  if (wantRetries !== undefined) {
    if (wantRetries.length === 0 && retriedAfter.length > 0) failures.push(`the downloader retried (${retriedAfter.join(', ')}); none was needed`);
    for (const code of wantRetries) if (!retriedAfter.includes(code)) failures.push(`the downloader never retried after ${code} (retried after: ${retriedAfter.join(', ') || 'nothing'})`);
  }
  let detail = '';
  if (scenario.judge) {
    const judged = scenario.judge(obs, ctx);
    detail = judged.detail;
    failures.push(...judged.failures);
  }
  // Server-side trouble is a finding whatever the scenario: a 5xx the proxy did not inject, an error logged.
  for (const r of requests) if ((r.upstreamStatus ?? 0) >= 500) failures.push(`SERVER ${r.upstreamStatus} on ${r.method} ${r.path}`);
  for (const r of rig.proxy.since(mark)) if (r.route !== 'payload' && (r.upstreamStatus ?? 0) >= 500) failures.push(`SERVER ${r.upstreamStatus} on ${r.method} ${r.route}`);
  for (const e of rig.serverErrors.slice(serverErrorsBefore)) failures.push(`SERVER LOGGED AN ERROR: ${e.msg}: ${e.line.slice(0, 300)}`);
  for (const c of options.crashes?.().slice(crashesBefore) ?? []) failures.push(`CRASH: ${c}`);

  return {
    scenario: scenario.name,
    payload: scenario.payload,
    fault: scenario.fault,
    refused,
    ...(refusedWith !== undefined ? { refusedWith } : {}),
    resumed,
    ...(resumeOffset !== undefined ? { resumeOffset } : {}),
    completed,
    payloadBytes: layout.size,
    proxiedBytes,
    redownloadedBytes: proxiedBytes - layout.size,
    payloadRequests: requests.length,
    retriedAfter,
    cycles,
    detail,
    seconds: Math.round((performance.now() - started) / 100) / 10,
    ok: failures.length === 0,
    failures,
  };
}

export function findScenarios(only: readonly string[] | undefined): Scenario[] {
  if (!only || only.length === 0) return [...SCENARIOS];
  const unknown = only.filter((name) => !SCENARIOS.some((s) => s.name === name));
  if (unknown.length > 0) throw new Error(`unknown scenario(s) ${unknown.join(', ')}; known: ${SCENARIOS.map((s) => s.name).join(', ')}`);
  return SCENARIOS.filter((s) => only.includes(s.name));
}

function mib(bytes: number): string {
  return `${(bytes / MiB).toFixed(2)} MiB`;
}

/** The campaign report's table: one row per scenario. */
export function resultTable(results: readonly ScenarioResult[]): { head: string[]; rows: (string | number)[][] } {
  return {
    head: ['scenario', 'payload', 'refused', 'resumed', 'completed', 're-downloaded', 'agent retried after', 'detail', 's', 'result'],
    rows: results.map((r) => [
      r.scenario,
      `${r.payload} ${mib(r.payloadBytes)}`,
      r.refused === 'n.a.' ? 'n.a.' : `${r.refused} (${r.refusedWith ?? '-'})`,
      r.resumed === 'yes' ? `yes (@${mib(r.resumeOffset ?? 0)})` : r.resumed,
      r.completed,
      r.completed === 'yes' ? `${mib(r.redownloadedBytes)} (${((100 * r.redownloadedBytes) / r.payloadBytes).toFixed(0)}%)` : `n.a. (${mib(r.proxiedBytes)} in all)`,
      summarizeCodes(r.retriedAfter),
      r.detail,
      r.seconds,
      r.ok ? 'ok' : `FAIL: ${r.failures.join('; ')}`,
    ]),
  };
}

function summarizeCodes(codes: readonly string[]): string {
  if (codes.length === 0) return '-';
  const counts = new Map<string, number>();
  for (const c of codes) counts.set(c, (counts.get(c) ?? 0) + 1);
  return [...counts].map(([c, n]) => (n > 1 ? `${c}×${n}` : c)).join(' ');
}
