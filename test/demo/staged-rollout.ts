/**
 * The `npm run demo` story, end to end with real parts: the update server
 * (startServer on 127.0.0.1:0 with a temp data folder, via the server tests'
 * startTestServer), images built here, releases published through the admin
 * API (the server signs the payloads and generates the delta), and a fleet of
 * real agents (simulated-device.ts) with file slots and the `file`
 * boot-control backend. Only the reboot is simulated (simulated-device.ts says
 * how). The story checks its own outcome: runDemo returns every expectation
 * with whether it was met, and demo.ts turns that into the exit code.
 */
import { mkdir, mkdtemp, readFile, rm, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { Writable } from 'node:stream';
import type { Slot } from '../../agent/boot-control/index.ts';
import { statusCommand } from '../../bin/commands/status.ts';
import { formatTable } from '../../bin/cli-kit.ts';
import type { ReleaseStatsView } from '../../shared/schemas/admin.ts';
import { decodePublicKeyFile } from '../../shared/keys.ts';
import { evolveImage, makeImage, slotHolds } from '../agent/harness.ts';
import { startTestServer, type TestServer } from '../server/helpers.ts';
import { SimulatedDevice, type CycleReport } from './simulated-device.ts';

const CHANNEL = 'stable';
const PRODUCT = 'appliance';
const BOARD = 'rpi4';
const OLD = '1.0.0';
const NEW = '1.1.0';
const IMAGE_MIB = 3;
const DEVICE_COUNT = 5;
const UNHEALTHY = 'device-4';
const STAGES = ['34%', '100%'] as const;

export interface DemoOptions {
  /** Narration, a paragraph at a time; omitted: silent (the --json mode). */
  say?: (text: string) => void;
  /** Keep the temp folder (server data, images, device folders) instead of removing it. */
  keep?: boolean;
  signal?: AbortSignal;
}

export interface DeviceOutcome {
  id: string;
  healthy: boolean;
  /** What the agent runs now, and from which slot. */
  version: string;
  slot: Slot;
  outcome: 'committed' | 'rolledBack' | 'unchanged';
  code?: string;
  /** The rollout stage in which the server offered it the new release, and the payload it got. */
  stage?: string;
  payload?: 'full' | 'delta';
  /** The version the server last heard from it. */
  serverVersion: string | null;
  /** The server lists the new release as failed on this device. */
  serverFailure: boolean;
}

export interface Expectation {
  name: string;
  ok: boolean;
  detail?: string;
}

export interface DemoSummary {
  ok: boolean;
  seconds: number;
  channel: string;
  release: string;
  /** Devices per running version. */
  versions: Record<string, number>;
  devices: DeviceOutcome[];
  rolledBack: string[];
  rollout: { percentage: string; state: string; stats: ReleaseStatsView };
  payloads: { kind: 'full' | 'delta'; sourceVersion: string | null; size: number }[];
  expectations: Expectation[];
  /** The temp folder, when kept. */
  dir?: string;
}

interface Tracked {
  device: SimulatedDevice;
  stage?: string;
  payload?: 'full' | 'delta';
  last?: CycleReport;
  /** How its update of the new release ended. */
  outcome?: 'committed' | 'rolledBack';
}

export async function runDemo(options: DemoOptions = {}): Promise<DemoSummary> {
  const started = Date.now();
  const say = options.say ?? (() => {});
  const narrating = options.say !== undefined;
  const signal = options.signal ?? new AbortController().signal;
  let step = 0;
  const heading = (text: string) => say(`\nStep ${++step}. ${text}`);
  const detail = (text: string) => say(indent(text, '   '));

  const dir = await mkdtemp(join(tmpdir(), 'tandem-demo-'));
  let ts: TestServer | undefined;
  try {
    say(`Tandem demo: an update server, ${DEVICE_COUNT} devices, and release ${NEW} rolled out in two stages (${STAGES.join(' then ')}).`);

    // ---- The server and the images ---------------------------------------------
    ts = await startTestServer({}, join(dir, 'server'));
    const { admin } = ts;
    const url = ts.server.url;
    heading(`Started the update server on ${url} with a fresh data folder. On its first start it made its keys (a root key, a release key that signs payloads, a server key that signs every check-in answer) and an admin token.`);

    await mkdir(join(dir, 'images'));
    const oldImage = makeImage(IMAGE_MIB, 2024);
    const newImage = evolveImage(oldImage, 2025, 0.2);
    const oldPath = join(dir, 'images', `${OLD}.img`);
    const newPath = join(dir, 'images', `${NEW}.img`);
    await writeFile(oldPath, oldImage);
    await writeFile(newPath, newImage);
    heading(`Built two ${IMAGE_MIB} MiB disk images (deterministic): ${OLD}, the factory image, and ${NEW}, the same with a fifth of its 4 KiB blocks changed.`);

    const first = await admin.publishImage(oldPath, { channel: CHANNEL, version: OLD, board: BOARD, product: PRODUCT });
    await admin.setRollout(CHANNEL, OLD, { percentage: '100%' });
    heading(`Published ${OLD} on channel "${CHANNEL}" (a signed full payload of ${mib(first.payload.size)}) and rolled it out to 100 %: it is what the devices run from the factory.`);

    // ---- The fleet ---------------------------------------------------------------
    signal.throwIfAborted();
    const { token } = await admin.createEnrollmentToken({ product: PRODUCT, channel: CHANNEL, maxUses: DEVICE_COUNT, expiresInSeconds: 3600 });
    const rootPublicKey = decodePublicKeyFile(await readFile(ts.server.keys.rootPublicKeyPath, 'utf8')).publicKey;
    const ids = Array.from({ length: DEVICE_COUNT }, (_, i) => `device-${i + 1}`);
    const fleet: Tracked[] = await Promise.all(
      ids.map(async (id) => {
        const device = await SimulatedDevice.provision(join(dir, 'devices'), { id, server: url, rootPublicKey, product: PRODUCT, board: BOARD, version: OLD, image: oldImage, healthy: id !== UNHEALTHY });
        await device.enroll(token, signal);
        return { device };
      }),
    );
    heading(
      `Provisioned ${DEVICE_COUNT} devices, ${ids[0]} to ${ids.at(-1)}. Each is a folder: slot A (a file holding ${OLD}, booted and marked good), slot B (empty), ` +
        `a JSON boot environment (the "file" boot-control backend) and an agent config that pins the server's root public key. ` +
        `Each enrolled with one enrollment token and received its own credential.`,
    );
    detail(`${UNHEALTHY} is the bad apple: its app self-test, the health check its agent runs after booting a new slot, will fail.`);

    const firstCheck = await checkIn(fleet, signal);
    heading(`Every device checked in: ${describeNoUpdate(fleet, firstCheck, `nothing newer than ${OLD}`)}.`);

    // ---- The new release ------------------------------------------------------------
    signal.throwIfAborted();
    const second = await admin.publishImage(newPath, { channel: CHANNEL, version: NEW, board: BOARD, product: PRODUCT });
    const job = second.job ? await admin.waitForJob(second.job.id, { intervalMs: 50, timeoutMs: 60_000 }) : undefined;
    if (job && job.state !== 'done') throw new Error(`The server's delta job ${job.state}: ${job.error ?? job.message ?? 'no reason given'}`);
    let release = await admin.rollout(CHANNEL, NEW, PRODUCT);
    const delta = release.payloads.find((p) => p.kind === 'delta' && p.sourceVersion === OLD);
    heading(
      `Published ${NEW}. The server signed its full payload (${mib(second.payload.size)}) at once and, in a background job, ` +
        (delta ? `a delta from ${OLD} (${mib(delta.size)}).` : `no delta from ${OLD}.`) +
        ` A new release's rollout starts at 0 %.`,
    );
    if (narrating) say(await statusTable(url, ts.server.adminToken));

    // ---- The staged rollout ---------------------------------------------------------
    let rebootExplained = false;
    for (const percentage of STAGES) {
      signal.throwIfAborted();
      release = await admin.setRollout(CHANNEL, NEW, { percentage });
      heading(
        `Rollout of ${NEW} set to ${percentage}` +
          (percentage === STAGES[0] ? `. A device is in when a hash of its id and the rollout's salt falls below ${percentage}; raising the percentage only adds devices.` : '.'),
      );
      const reports = await checkIn(fleet, signal);
      const changed: Tracked[] = [];
      for (const [i, report] of reports.entries()) {
        const t = fleet[i]!;
        if (report.result.result !== 'installed') continue;
        t.stage = percentage;
        if (report.update) t.payload = report.update.kind;
        changed.push(t);
        detail(describe(t.device.id, report));
      }
      const idle = fleet.filter((_, i) => reports[i]!.result.result === 'noUpdate');
      const idleWith = (outcome: Tracked['outcome']) => list(idle.filter((t) => t.outcome === outcome).map((t) => t.device.id));
      if (idleWith(undefined)) detail(`${idleWith(undefined)}: no update (not in the ${percentage}).`);
      if (idleWith('committed')) detail(`${idleWith('committed')}: no update (already on ${NEW}).`);
      if (idleWith('rolledBack')) detail(`${idleWith('rolledBack')}: no update (${NEW} failed there: it is not offered again).`);
      if (changed.length === 0 && idle.length === fleet.length && percentage !== '100%') {
        detail(`(${percentage} of ${DEVICE_COUNT} devices is about ${((DEVICE_COUNT * parseFloat(percentage)) / 100).toFixed(1)} on average; this rollout's random salt put none of them in.)`);
      }

      // Reboot every device that asked for one, until none does (a rollback asks twice: into the new slot, and back).
      for (let round = 0; ; round++) {
        const waiting = fleet.filter((t) => t.last?.rebootRequested);
        if (waiting.length === 0) break;
        if (round > 3) throw new Error(`${list(waiting.map((t) => t.device.id))} still ask for a reboot after ${round} reboots.`);
        if (!rebootExplained) {
          detail(
            `(A reboot cannot happen in this demo. It is simulated as the tests do: the agent stops, the bootloader's decision — decideBoot in ` +
              `agent/boot-control/boot-decision.ts, what the GRUB and U-Boot scripts do — is applied to the device's boot env, and a new agent starts on the same state folder.)`,
          );
          rebootExplained = true;
        }
        const boots = await Promise.all(waiting.map((t) => t.device.reboot()));
        const started = new Map<string, string[]>();
        for (const [i, b] of boots.entries()) {
          const what = b.trial ? `slot ${b.slot} on trial (${b.triesLeft} ${b.triesLeft === 1 ? 'try' : 'tries'} left)` : `slot ${b.slot}`;
          started.set(what, [...(started.get(what) ?? []), waiting[i]!.device.id]);
        }
        detail(`Rebooted ${[...started].map(([what, ids]) => `${list(ids)}: the bootloader started ${what}`).join('; ')}.`);
        const after = await Promise.all(waiting.map((t) => cycle(t, signal)));
        for (const [i, report] of after.entries()) detail(describe(waiting[i]!.device.id, report));
      }
      if (changed.length) {
        // As each agent would at its next poll; it also tells the server which version the device runs now.
        const again = await Promise.all(changed.map((t) => cycle(t, signal)));
        const offered = again.filter((r) => r.result.result !== 'noUpdate').length;
        detail(`${list(changed.map((t) => t.device.id))} checked in again from the slot they run now: ${offered ? `${offered} got an offer` : 'nothing to do'}.`);
      }
      const failuresBefore = release.stats.failures;
      release = await admin.rollout(CHANNEL, NEW, PRODUCT);
      if (release.rollout.state === 'halted') detail(`The server halted the rollout of ${NEW}: ${release.rollout.haltReason ?? 'no reason given'}.`);
      else if (release.stats.failures > failuresBefore) {
        detail(
          `The server counts the rollback against ${NEW}. It halts a rollout by itself when more than ${percent(release.rollout.failureThresholdBp)} of the devices with an outcome failed, ` +
            `but only once ${release.rollout.minAttempts} devices have one; with ${release.stats.attempts} so far the rollout stays ${release.rollout.state}.`,
        );
      }
      if (narrating) say(await statusTable(url, ts.server.adminToken));
    }

    // ---- The outcome ------------------------------------------------------------------
    const lastCheck = await checkIn(fleet, signal);
    heading(
      `Every device checked in once more: ${describeNoUpdate(fleet, lastCheck, 'nothing to do')}. ` +
        `${UNHEALTHY} is not offered ${NEW} again (the server and its agent both remember it failed there) until a release manager runs \`tandem device clear-failure ${UNHEALTHY} ${NEW}\`.`,
    );

    release = await admin.rollout(CHANNEL, NEW, PRODUCT);
    const devices: DeviceOutcome[] = [];
    const expectations: Expectation[] = [];
    const expect = (name: string, ok: boolean, why?: string) => expectations.push({ name, ok, ...(ok || why === undefined ? {} : { detail: why }) });

    expect(`the server generated a delta from ${OLD} to ${NEW}`, delta !== undefined, `payloads: ${release.payloads.map((p) => p.kind).join(', ')}`);
    for (const [i, t] of fleet.entries()) {
      const { device } = t;
      const status = await device.status();
      const detailOnServer = await admin.device(device.id);
      const serverFailure = detailOnServer.failures.some((f) => f.version === NEW && f.clearedAt === null);
      const rolledBack = status.lastOutcome?.result === 'rolledBack' && status.lastOutcome.version === NEW;
      const committed = status.lastOutcome?.result === 'committed' && status.lastOutcome.version === NEW;
      devices.push({
        id: device.id,
        healthy: device.healthy,
        version: status.version,
        slot: status.booted,
        outcome: committed ? 'committed' : rolledBack ? 'rolledBack' : 'unchanged',
        ...(rolledBack && status.lastOutcome?.code ? { code: status.lastOutcome.code } : {}),
        ...(t.stage ? { stage: t.stage } : {}),
        ...(t.payload ? { payload: t.payload } : {}),
        serverVersion: detailOnServer.version,
        serverFailure,
      });
      const d = device.id;
      expect(`${d} was offered nothing at the last check-in`, lastCheck[i]!.result.result === 'noUpdate', `got ${lastCheck[i]!.result.result}`);
      expect(`${d} downloaded the delta`, t.payload === 'delta', `got ${t.payload ?? 'nothing'}`);
      if (device.healthy) {
        expect(`${d} runs ${NEW} from slot B, committed`, committed && status.version === NEW && status.booted === 'B', `runs ${status.version} from slot ${status.booted}, last outcome ${status.lastOutcome?.result ?? 'none'}`);
        expect(`${d}'s boot env: slot B active, good, not on trial`, status.boot.active === 'B' && status.boot.good.B && !status.boot.trial, JSON.stringify(status.boot));
        expect(`${d}'s slot B holds ${NEW}'s bytes`, await slotHolds(device.disk.slotB, newImage));
        expect(`the server has ${d} on ${NEW} with a committed event`, detailOnServer.version === NEW && detailOnServer.events.some((e) => e.type === 'committed' && e.version === NEW), `server: version ${detailOnServer.version}`);
      } else {
        expect(`${d} rolled back to ${OLD} on slot A`, rolledBack && status.version === OLD && status.booted === 'A', `runs ${status.version} from slot ${status.booted}, last outcome ${status.lastOutcome?.result ?? 'none'}`);
        expect(`${d}'s rollback was for its health check`, status.lastOutcome?.code === 'ERR_HEALTH_CHECK', `code ${status.lastOutcome?.code ?? 'none'}`);
        expect(`${d}'s boot env: slot A active, slot B not good`, status.boot.active === 'A' && !status.boot.good.B && !status.boot.trial, JSON.stringify(status.boot));
        expect(`${d}'s slot A holds ${OLD}'s bytes`, await slotHolds(device.disk.slotA, oldImage));
        expect(`${d}'s agent lists ${NEW} as failed`, status.failedVersions.includes(NEW), `failed: ${status.failedVersions.join(', ') || 'none'}`);
        expect(
          `the server has ${d} on ${OLD}, ${NEW} failed, with a rolledBack ERR_HEALTH_CHECK event`,
          detailOnServer.version === OLD && serverFailure && detailOnServer.events.some((e) => e.type === 'rolledBack' && e.version === NEW && e.code === 'ERR_HEALTH_CHECK'),
          `server: version ${detailOnServer.version}, failures ${JSON.stringify(detailOnServer.failures.map((f) => f.version))}`,
        );
      }
    }
    const healthy = fleet.filter((t) => t.device.healthy).length;
    const { stats } = release;
    expect(`the rollout of ${NEW} is at 100% and complete`, release.rollout.percentage === '100%' && release.rollout.state === 'complete', `${release.rollout.percentage} ${release.rollout.state}`);
    expect(
      `the server counts ${healthy} commits, 1 rollback, 1 failure for ${NEW}`,
      stats.committed === healthy && stats.rolledBack === 1 && stats.failures === 1,
      `committed ${stats.committed}, rolled back ${stats.rolledBack}, failures ${stats.failures}`,
    );

    const versions: Record<string, number> = {};
    for (const d of devices) versions[d.version] = (versions[d.version] ?? 0) + 1;
    const summary: DemoSummary = {
      ok: expectations.every((e) => e.ok),
      seconds: Math.round((Date.now() - started) / 100) / 10,
      channel: CHANNEL,
      release: NEW,
      versions,
      devices,
      rolledBack: devices.filter((d) => d.outcome === 'rolledBack').map((d) => d.id),
      rollout: { percentage: release.rollout.percentage, state: release.rollout.state, stats },
      payloads: release.payloads.map((p) => ({ kind: p.kind, sourceVersion: p.sourceVersion, size: p.size })),
      expectations,
      ...(options.keep ? { dir } : {}),
    };
    return summary;
  } finally {
    await ts?.stop().catch(() => undefined);
    if (!options.keep) await rm(dir, { recursive: true, force: true });
  }
}

/** The end of the narration: who runs what, the rollout, and every expectation that failed. */
export function formatSummary(s: DemoSummary): string {
  const rows = [
    ['DEVICE', 'VERSION', 'SLOT', 'OUTCOME', 'STAGE', 'PAYLOAD', 'SERVER SAYS'],
    ...s.devices.map((d) => [
      d.id, d.version, d.slot,
      d.outcome === 'rolledBack' ? `rolled back (${d.code ?? '?'})` : d.outcome,
      d.stage ?? '-', d.payload ?? '-',
      `${d.serverVersion ?? 'unknown'}${d.serverFailure ? `, ${s.release} failed` : ''}`,
    ]),
  ];
  const st = s.rollout.stats;
  const lines = [
    '',
    'Summary',
    indent(formatTable(rows).trimEnd(), '  '),
    `  On each version: ${Object.entries(s.versions).sort(([a], [b]) => b.localeCompare(a)).map(([v, n]) => `${v} ${n} device${n === 1 ? '' : 's'}`).join(', ')}.`,
    `  Rolled back: ${s.rolledBack.join(', ') || 'none'}.`,
    `  Rollout of ${s.release} on ${s.channel}: ${s.rollout.percentage} ${s.rollout.state}; offered ${st.offered}, committed ${st.committed}, rolled back ${st.rolledBack}, errors ${st.errors}.`,
  ];
  const failed = s.expectations.filter((e) => !e.ok);
  if (failed.length === 0) lines.push(`  Checked ${s.expectations.length} expectations: all met. Took ${s.seconds} s.`);
  else {
    lines.push(`  ${failed.length} of ${s.expectations.length} expectations NOT met:`);
    for (const e of failed) lines.push(`    - ${e.name}${e.detail ? ` (${e.detail})` : ''}`);
  }
  if (s.dir) lines.push(`  Kept ${s.dir} (server data in server/, each device in devices/<id>/ with its agent.json).`);
  return lines.join('\n');
}

// ---- Helpers of the story ---------------------------------------------------------

async function cycle(t: Tracked, signal: AbortSignal): Promise<CycleReport> {
  t.last = await t.device.cycle(signal);
  const { result } = t.last.result;
  if (result === 'committed' || result === 'rolledBack') t.outcome = result;
  return t.last;
}

/** One agent cycle on every device at once, as a fleet polling its server. */
function checkIn(fleet: Tracked[], signal: AbortSignal): Promise<CycleReport[]> {
  return Promise.all(fleet.map((t) => cycle(t, signal)));
}

function describe(id: string, report: CycleReport): string {
  const { result, update } = report;
  switch (result.result) {
    case 'installed': {
      const payload = update?.kind === 'delta' ? `the delta from ${update.fromVersion}` : 'the full image';
      return `${id}: offered ${result.version}. Streamed ${payload} (${mib(update?.size ?? 0)}) into slot ${update?.toSlot}, checked every block and read the slot back, put slot ${update?.toSlot} on trial and ran its reboot command.`;
    }
    case 'committed':
      return `${id}: health check passed on slot ${report.booted}: committed ${result.version} (slot ${report.booted} marked good).`;
    case 'rollingBack':
      return `${id}: on slot ${report.booted}, ${lowerFirst(update?.failure?.message.trim() ?? 'a health check failed')}. Marked slot ${update?.toSlot} bad and ran its reboot command.`;
    case 'rolledBack':
      return `${id}: running slot ${report.booted} again; reported the rollback of ${result.version} (${result.code}) to the server.`;
    case 'noUpdate':
      return `${id}: no update.`;
    case 'rebootPending':
      throw new Error(`${id} still waits for its reboot into ${result.version}.`);
  }
}

/** `what` when no device was offered anything, else who was and who was not. */
function describeNoUpdate(fleet: Tracked[], reports: CycleReport[], what: string): string {
  const idle = fleet.filter((_, i) => reports[i]!.result.result === 'noUpdate').map((t) => t.device.id);
  if (idle.length === fleet.length) return what;
  return `${list(idle) || 'none'}: ${what} (the others were offered an update)`;
}

/** "a", "a and b", "a, b and c". */
function list(items: string[]): string {
  return items.length <= 1 ? (items[0] ?? '') : `${items.slice(0, -1).join(', ')} and ${items.at(-1)}`;
}

/** What `tandem status stable` prints, produced by the command itself against this server. */
async function statusTable(url: string, token: string): Promise<string> {
  let text = '';
  const sink = new Writable({
    write(chunk: Buffer, _encoding, done) {
      text += chunk.toString();
      done();
    },
  });
  const code = await statusCommand([CHANNEL, '--server', url, '--token', token], { stdout: sink, stderr: sink, env: {} });
  if (code !== 0) throw new Error(`tandem status exited with ${code}: ${text}`);
  return `\n${indent(`$ tandem status ${CHANNEL}\n${text.trimEnd()}`, '    ')}`;
}

function indent(text: string, prefix: string): string {
  return text.split('\n').map((line) => (line ? prefix + line : line)).join('\n');
}

function mib(bytes: number): string {
  return bytes >= 1024 * 1024 ? `${(bytes / (1024 * 1024)).toFixed(1)} MiB` : `${Math.round(bytes / 1024)} KiB`;
}

function lowerFirst(text: string): string {
  return text.charAt(0).toLowerCase() + text.slice(1);
}

function percent(bp: number): string {
  return `${bp / 100} %`;
}
