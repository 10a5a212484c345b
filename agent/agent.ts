/**
 * The device agent (DESIGN.md "The agent's life"): runs the steps in order,
 * persists the state after each (state.ts decides, state-store.ts writes), and
 * on every start first resolves whatever a previous run left — a download to
 * resume, a reboot still to make, a new slot to health-check, a rollback to
 * finish, a bootloader fallback to report. Killed at any instant, the next
 * start continues from the last durable step; the boot flags change only in
 * finalize (trial), commit (good) and rollback (bad), each after the state
 * that explains it is on disk.
 */
import { randomUUID } from 'node:crypto';
import { readFile } from 'node:fs/promises';
import { setPriority } from 'node:os';
import { TandemError, isTandemError, toTandemError } from '../shared/errors.ts';
import type { RootTrust } from '../shared/keyring.ts';
import { validateEnrollResponse, type DeviceEvent, type EventType } from '../shared/schemas/protocol.ts';
import { parseVersion } from '../shared/versions.ts';
import { loadZstdDecoder, type ZstdDecoder } from '../payloads/zstd.ts';
import { collectAllGarbage } from '../payloads/reclaim.ts';
import { backoffSeconds, pollSeconds, retryWaitSeconds, sleep } from './backoff.ts';
import { createBootControl, otherSlot, type BootControl, type BootState, type Slot } from './boot-control/index.ts';
import type { AgentConfig } from './config.ts';
import { callJson, createDispatcher, isTransient, type HttpClient } from './http.ts';
import { requestReboot } from './reboot.ts';
import { checkTargetIsNotRoot, detectBootedSlot, slotCapacity, slotPaths } from './slots.ts';
import { initialState, nextState, type AgentEvent, type AgentState, type UpdateRecord } from './state.ts';
import { StateStore } from './state-store.ts';
import { runCheck, checkOffer, type VerifiedOffer } from './steps/check.ts';
import { downloadStep } from './steps/download.ts';
import { finalizeStep } from './steps/finalize.ts';
import { runHealthChecks } from './steps/health.ts';
import { verifySlot } from './steps/verify.ts';
import { isoTime } from '../shared/iso-time.ts';
import type { KnownManifest } from '../payloads/payload-reader.ts';

export interface AgentLogger {
  info(fields: Record<string, unknown>, message: string): void;
  warn(fields: Record<string, unknown>, message: string): void;
  error(fields: Record<string, unknown>, message: string): void;
}

const silentLogger: AgentLogger = { info() {}, warn() {}, error() {} };

export interface AgentOptions {
  logger?: AgentLogger;
  now?: () => Date;
  random?: () => number;
  /** Skip taking the state-folder lock (read-only commands: status). */
  readOnly?: boolean;
}

export type CycleResult =
  | { result: 'noUpdate'; pollAfterSeconds: number }
  /** Installed into the other slot and put on trial; the reboot command ran (or there is none). */
  | { result: 'installed'; version: string; rebootRequested: boolean }
  /** An install is waiting for its reboot (the reboot command was run again, if there is one). */
  | { result: 'rebootPending'; version: string; rebootRequested: boolean }
  | { result: 'committed'; version: string }
  /** The new slot failed; it is marked bad and the reboot into the old one was requested. */
  | { result: 'rollingBack'; version: string; code: string; rebootRequested: boolean }
  /** Back on the old slot after a failed health check or a bootloader fallback. */
  | { result: 'rolledBack'; version: string; code: string; message: string };

export interface StatusReport {
  deviceId: string;
  channel: string;
  phase: AgentState['phase'];
  booted: Slot;
  version: string;
  slots: Record<Slot, { spec: string; path: string; version?: string }>;
  boot: BootState;
  update?: Pick<UpdateRecord, 'version' | 'kind' | 'toSlot' | 'attempts' | 'checkpoint'> & { size: number };
  failedVersions: string[];
  lastError?: AgentState['lastError'];
  lastOutcome?: AgentState['lastOutcome'];
  pendingEvents: number;
  enrolled: boolean;
}

/** Codes that say the release itself cannot work here: the version is barred at once. */
const RELEASE_FAULTS = new Set<string>(['ERR_WRONG_BOARD', 'ERR_DOWNGRADE', 'ERR_SLOT_TOO_SMALL', 'ERR_VERSION_FAILED', 'ERR_TARGET_HASH']);
const MAX_OUTBOX = 500;

export class DeviceAgent {
  state: AgentState;
  booted: Slot;
  boot: BootState;
  private credential: string | undefined;
  private readonly log: AgentLogger;
  private readonly now: () => Date;
  private readonly random: () => number;
  /** One zstd decoder for the daemon's life (zstd-codec's is a 16 MiB WebAssembly heap): offers and payloads share it. */
  private decoderLoad: Promise<ZstdDecoder> | undefined;

  private constructor(
    readonly config: AgentConfig,
    readonly store: StateStore,
    readonly control: BootControl,
    readonly dispatcher: HttpClient,
    private readonly unlock: () => Promise<void>,
    facts: { state: AgentState; booted: Slot; boot: BootState; credential: string | undefined },
    options: AgentOptions,
  ) {
    this.state = facts.state;
    this.booted = facts.booted;
    this.boot = facts.boot;
    this.credential = facts.credential;
    this.log = options.logger ?? silentLogger;
    this.now = options.now ?? (() => new Date());
    this.random = options.random ?? Math.random;
  }

  /** Opens the state folder (taking its lock), reads the boot flags and finds the running slot. */
  static async open(config: AgentConfig, options: AgentOptions = {}): Promise<DeviceAgent> {
    const store = new StateStore(config.stateDir);
    await store.init();
    const unlock = options.readOnly ? async () => {} : await store.lock();
    try {
      if (config.nice !== undefined && !options.readOnly) {
        try {
          setPriority(config.nice);
        } catch {
          // Raising priority needs privileges; lowering it never fails for the owner.
        }
      }
      const control = createBootControl(config.bootControl);
      const log = options.logger ?? silentLogger;
      const now = (options.now ?? (() => new Date()))();
      const facts = await detectBootedSlot(config, control);
      const { booted } = facts;
      let { boot } = facts;
      await checkTargetIsNotRoot(config, booted);
      if (!options.readOnly) {
        const removed = await store.removeStaleTemps();
        if (removed > 0) log.info({ removed }, 'removed temp files of interrupted writes');
      }
      let state: AgentState;
      try {
        state = await store.load();
      } catch (err) {
        // Never stop for good on a damaged state file: set it aside and start blank. Nothing it said is trusted
        // any more (no slot is known to hold anything); the boot env and the server still know what matters.
        if (!isTandemError(err, 'ERR_STATE_CORRUPT') || options.readOnly) throw err;
        const aside = await store.quarantine(now);
        log.error({ code: err.code, message: err.message, movedTo: aside }, 'state file unreadable; moved aside, starting from a blank state');
        state = { ...initialState(), lastError: { code: err.code, message: `${err.message} It was moved to ${aside}.`, at: isoTime(now) } };
        await store.save(state);
      }
      if (facts.bootEnvUnreadable && !options.readOnly && state.phase === 'idle') {
        // The bootloader booted its default; write a whole env again that says what is running (the other slot's
        // content is unknown, so it is not marked good).
        log.error({ code: facts.bootEnvUnreadable.code, message: facts.bootEnvUnreadable.message, booted }, 'boot environment unreadable; rewriting it for the running slot');
        await control.markBad(otherSlot(booted));
        await control.markGood(booted);
        boot = await control.read();
        state = { ...state, lastError: { code: facts.bootEnvUnreadable.code, message: facts.bootEnvUnreadable.message, at: isoTime(now) } };
        await store.save(state);
      }
      const credential = await store.loadCredential();
      const dispatcher = createDispatcher(config.download);
      return new DeviceAgent(config, store, control, dispatcher, unlock, { state, booted, boot, credential }, options);
    } catch (err) {
      await unlock();
      throw err;
    }
  }

  async close(): Promise<void> {
    await this.dispatcher.close().catch(() => undefined);
    await this.unlock();
  }

  // ---- What the device runs ------------------------------------------------

  /** The running version: the image's own version file, else what the agent installed there, else the factory version. */
  async currentVersion(): Promise<string> {
    if (this.config.versionFile !== undefined) {
      // Either the bare version, or an os-release style file whose VERSION_ID is it.
      const text = (await readFile(this.config.versionFile, 'utf8').catch(() => '')).trim();
      const m = text.includes('=') ? /^VERSION_ID="?([^"\s]+)"?$/m.exec(text) : /^(\S+)$/.exec(text);
      if (m) {
        parseVersion(m[1]!);
        return m[1]!;
      }
    }
    const recorded = this.state.slots[this.booted]?.version;
    if (recorded !== undefined) return recorded;
    if (this.config.version !== undefined) return this.config.version;
    throw new TandemError('ERR_CONFIG', `No version known for the running slot ${this.booted}: ${this.config.versionFile} is missing or unreadable.`);
  }

  /** The root trust: keys adopted from a rotated keyring, else the pinned ones. */
  private decoder(): Promise<ZstdDecoder> {
    this.decoderLoad ??= loadZstdDecoder();
    return this.decoderLoad;
  }

  trust(): RootTrust {
    const adopted = this.state.trustedRoots;
    if (adopted) return { rootKeys: adopted.keys.map((k) => Buffer.from(k, 'base64')), threshold: adopted.threshold };
    return this.config.trust;
  }

  // ---- Persistence ----------------------------------------------------------

  private event(type: EventType, fields: Partial<DeviceEvent> & { version: string }): DeviceEvent {
    return { id: randomUUID(), type, channel: this.config.channel, at: isoTime(this.now()), ...fields };
  }

  /** Applies a state-machine event and saves it together with the device events it produced. */
  private async transition(event: AgentEvent, events: DeviceEvent[] = []): Promise<void> {
    const next = nextState(this.state, event);
    const outbox = [...next.outbox, ...events];
    // Bounded: when the server is gone for long, the oldest events go first.
    next.outbox = outbox.length > MAX_OUTBOX ? outbox.slice(-MAX_OUTBOX) : outbox;
    await this.store.save(next);
    this.state = next;
  }

  private async refreshBoot(): Promise<BootState> {
    this.boot = await this.control.read();
    return this.boot;
  }

  // ---- One cycle -----------------------------------------------------------

  /**
   * Resolves what a previous run left; then, if idle, checks for an update and
   * installs it up to the reboot. Throws TandemErrors for failures (already
   * recorded in the state and the outbox).
   */
  async cycle(signal?: AbortSignal): Promise<CycleResult> {
    const resumed = await this.recover(signal);
    if (resumed !== undefined) {
      await this.flushEvents(signal);
      return resumed;
    }
    await this.flushEvents(signal);
    const result = await this.checkAndInstall(signal);
    await this.flushEvents(signal);
    return result;
  }

  /** Continues an update a previous run left in flight; undefined when idle. */
  async recover(signal?: AbortSignal): Promise<CycleResult | undefined> {
    const { phase } = this.state;
    const update = this.state.update;
    if (phase === 'idle') return this.state.update === undefined && this.boot.trial && this.boot.active === this.booted ? this.adoptTrial(signal) : undefined;
    if (phase === 'checking') {
      await this.transition({ type: 'failed', code: 'ERR_ABORTED', message: 'A check was interrupted.', at: this.iso(), releaseFault: false, maxAttempts: 1 });
      return undefined;
    }
    if (update === undefined) throw new TandemError('ERR_STATE_CORRUPT', `Phase ${phase} without an update record.`);
    this.log.info({ phase, version: update.version, booted: this.booted }, 'resuming');
    const boot = this.boot;
    const onNewSlot = this.booted === update.toSlot;

    switch (phase) {
      case 'downloading':
      case 'verifying':
        if (!onNewSlot) return this.install(update, signal);
        // Running a slot we were still writing cannot happen through the agent; refuse to trust anything.
        return this.abandon(update, new TandemError('ERR_SLOT_UNKNOWN', `Running slot ${this.booted}, which was being written.`));
      case 'finalizing':
        if (onNewSlot) return this.afterBoot(signal);
        if (boot.fallbackFrom === update.toSlot && boot.active === update.fromSlot) return this.fallback(update);
        return this.finalize(update, signal);
      case 'waitingForReboot':
        if (onNewSlot) return this.afterBoot(signal);
        if (boot.active === update.toSlot && boot.trial) {
          // Not rebooted yet (the reboot command failed, or the agent was killed before it ran).
          const rebootRequested = await this.reboot(signal);
          return { result: 'rebootPending', version: update.version, rebootRequested };
        }
        return this.fallback(update);
      case 'healthChecking':
        if (!onNewSlot) return this.fallback(update);
        return this.afterBoot(signal);
      case 'rollingBack':
        return this.rollBack(update, signal);
    }
  }

  private async checkAndInstall(signal?: AbortSignal): Promise<CycleResult> {
    await this.transition({ type: 'checkStarted' });
    const version = await this.currentVersion();
    let verified: VerifiedOffer | undefined;
    let pollAfterSeconds: number;
    try {
      const result = await runCheck({
        server: this.config.server,
        ...(this.credential !== undefined ? { credential: this.credential } : {}),
        request: {
          deviceId: this.config.deviceId,
          product: this.config.product,
          board: this.config.board,
          channel: this.config.channel,
          version,
          slot: this.booted,
          failedVersions: this.state.failedVersions.slice(-64),
          ...(this.state.deltaFailures >= this.config.download.deltaFailuresBeforeFull ? { deltaFailed: true } : {}),
          ...(this.state.keyringVersion !== undefined ? { keyringVersion: this.state.keyringVersion } : {}),
        },
        trust: this.trust(),
        decoder: await this.decoder(),
        ...(this.state.keyringVersion !== undefined ? { minKeyringVersion: this.state.keyringVersion } : {}),
        maxResponseBytes: this.config.download.maxCheckResponseBytes,
        dispatcher: this.dispatcher,
        now: this.now,
        ...(signal ? { signal } : {}),
      });
      pollAfterSeconds = result.pollAfterSeconds;
      const roots = result.keyring.roots;
      const pinned = this.trust();
      const rotated = roots.keys.length !== pinned.rootKeys.length || roots.keys.some((k, i) => !k.equals(Buffer.from(pinned.rootKeys[i]!))) || roots.threshold !== pinned.threshold;
      if (rotated || result.keyring.version !== this.state.keyringVersion) {
        await this.transition({
          type: 'keyringSeen',
          version: result.keyring.version,
          ...(rotated ? { roots: { threshold: roots.threshold, keys: roots.keys.map((k) => k.toString('base64')) } } : {}),
        });
      }
      verified = result.update;
      if (verified) {
        checkOffer(verified, {
          board: this.config.board,
          product: this.config.product,
          currentVersion: version,
          failedVersions: this.state.failedVersions,
          bootedSlot: this.booted,
          ...(await this.targetCapacity()),
        });
      }
    } catch (err) {
      const error = toTandemError(err);
      const offered = verified?.offer.version;
      // Unreachable servers produce nothing worth queueing; a refused response is worth telling the server about.
      const events = isTransient(error) || error.code === 'ERR_ABORTED' ? [] : [this.event('error', { version: offered ?? version, code: error.code, message: error.message.slice(0, 1024) })];
      await this.transition({ type: 'failed', code: error.code, message: error.message, at: this.iso(), releaseFault: false, maxAttempts: 1 }, events);
      throw error;
    }
    if (!verified) {
      await this.transition({ type: 'noUpdate' });
      return { result: 'noUpdate', pollAfterSeconds };
    }
    const offer = verified.offer;
    const update: UpdateRecord = {
      version: offer.version,
      channel: offer.channel,
      kind: offer.payload.kind,
      url: verified.payloadUrl,
      size: offer.payload.size,
      sha256: offer.payload.sha256,
      preludeSize: offer.payload.preludeSize,
      ...(verified.view.source ? { sourceVersion: verified.view.source.version } : {}),
      allowDowngrade: offer.allowDowngrade,
      manifestSha256: verified.manifestSha256,
      target: { size: verified.view.target.size, sha256: verified.view.target.sha256 },
      fromSlot: this.booted,
      toSlot: otherSlot(this.booted),
      fromVersion: version,
      attempts: 0,
    };
    this.log.info({ version: update.version, kind: update.kind, size: update.size, slot: update.toSlot }, 'update offered');
    await this.store.dropPrelude();
    await this.transition({ type: 'updateAccepted', update }, [
      this.event('downloading', { version: update.version, channel: update.channel, payloadKind: update.kind, progress: { done: 0, total: update.size } }),
    ]);
    const known = { sha256: verified.manifestSha256, view: verified.view };
    verified = undefined;
    collectAllGarbage();
    return this.install(update, signal, known);
  }

  private async targetCapacity(): Promise<{ targetCapacity?: number }> {
    const capacity = await slotCapacity(slotPaths(this.config)[otherSlot(this.booted)]);
    return capacity === undefined ? {} : { targetCapacity: capacity };
  }

  /**
   * Download + apply (resuming from a checkpoint), verify, finalize. `offered` is the manifest the
   * check response carried, already parsed: the payload's copy of the same bytes is not parsed again
   * (a resume after a restart parses the kept prelude).
   */
  private async install(initial: UpdateRecord, signal?: AbortSignal, offered?: KnownManifest): Promise<CycleResult> {
    const paths = slotPaths(this.config);
    const version = initial.fromVersion;
    try {
      if (this.state.phase === 'downloading') {
        let preludeSaved = initial.checkpoint !== undefined;
        await downloadStep({
          current: () => this.state.update!,
          loadPrelude: () => this.store.loadPrelude(),
          saveCheckpoint: async (checkpoint, prelude, etag) => {
            if (!preludeSaved) {
              await this.store.savePrelude(prelude);
              preludeSaved = true;
            }
            await this.transition({ type: 'checkpoint', checkpoint, ...(etag !== undefined ? { etag } : {}) });
          },
          restart: async () => {
            preludeSaved = false;
            await this.transition({ type: 'downloadRestarted' });
          },
          countAttempt: () => this.transition({ type: 'attempt' }),
          policy: {
            board: this.config.board,
            product: this.config.product,
            currentVersion: version,
            failedVersions: this.state.failedVersions,
            allowDowngrade: initial.allowDowngrade,
            bootedSlot: this.booted,
            ...(await this.targetCapacity()),
          },
          target: paths[initial.toSlot],
          ...(initial.kind === 'delta' ? { source: paths[initial.fromSlot] } : {}),
          trust: this.trust(),
          decoder: await this.decoder(),
          ...(offered ? { knownManifest: offered } : {}),
          ...(this.state.keyringVersion !== undefined ? { minKeyringVersion: this.state.keyringVersion } : {}),
          checkpointEveryBytes: this.config.download.checkpointEveryBytes,
          dispatcher: this.dispatcher,
          retry: this.config.download,
          ...(signal ? { signal } : {}),
          random: this.random,
          log: (message, fields) => this.log.info({ ...fields }, message),
        });
        await this.transition({ type: 'applied' });
        // The engine just read the slot back against the signed target sha256: that is the verification.
        await this.transition({ type: 'verified' });
      } else if (this.state.phase === 'verifying') {
        await verifySlot(paths[initial.toSlot], initial.target, signal);
        await this.transition({ type: 'verified' });
      }
    } catch (err) {
      const error = toTandemError(err);
      if (error.code === 'ERR_ABORTED' || signal?.aborted) throw err;
      return this.abandon(this.state.update ?? initial, error);
    }
    return this.finalize(this.state.update!, signal);
  }

  private async abandon(update: UpdateRecord, error: TandemError): Promise<never> {
    this.log.error({ version: update.version, code: error.code, message: error.message }, 'install failed');
    await this.transition(
      {
        type: 'failed',
        code: error.code,
        message: error.message,
        at: this.iso(),
        releaseFault: RELEASE_FAULTS.has(error.code),
        maxAttempts: this.config.download.maxAttemptsPerVersion,
      },
      [this.event('error', { version: update.version, channel: update.channel, code: error.code, message: error.message.slice(0, 1024), payloadKind: update.kind })],
    );
    await this.store.dropPrelude();
    await this.flushEvents();
    throw error;
  }

  private async finalize(update: UpdateRecord, signal?: AbortSignal): Promise<CycleResult> {
    await finalizeStep(this.control, update.toSlot, this.config.tries, this.booted);
    await this.refreshBoot();
    const events = [this.event('installed', { version: update.version, channel: update.channel, payloadKind: update.kind })];
    if (this.config.rebootCommand) events.push(this.event('rebooting', { version: update.version, channel: update.channel }));
    await this.transition({ type: 'trialSet' }, events);
    await this.store.dropPrelude();
    this.log.info({ version: update.version, slot: update.toSlot, tries: this.config.tries }, 'installed; slot on trial');
    await this.flushEvents(signal);
    const rebootRequested = await this.reboot(signal);
    return { result: 'installed', version: update.version, rebootRequested };
  }

  /** Runs the reboot command; false when none is configured (the operator reboots). */
  private async reboot(signal?: AbortSignal): Promise<boolean> {
    if (!this.config.rebootCommand) return false;
    this.log.info({ command: this.config.rebootCommand }, 'rebooting');
    await requestReboot(this.config.rebootCommand, signal);
    return true;
  }

  /** Running the new slot: commit it if healthy, else roll back. */
  private async afterBoot(signal?: AbortSignal): Promise<CycleResult> {
    if (this.state.phase !== 'healthChecking') await this.transition({ type: 'bootedNewSlot', at: this.iso() });
    const update = this.state.update!;
    const boot = this.boot;
    if (boot.active === update.toSlot && boot.good[update.toSlot] && !boot.trial) {
      // Marked good before the agent could record it: the health checks had passed.
      return this.commit(update);
    }
    if (boot.active !== update.toSlot) {
      await this.transition({ type: 'healthFailed', code: 'ERR_HEALTH_CHECK', message: `Slot ${update.toSlot} is no longer active in the boot environment.` });
      return this.rollBack(this.state.update!, signal);
    }
    const started = Date.parse(update.healthStartedAt ?? this.iso());
    const deadline = started + this.config.health.deadlineSeconds * 1000;
    this.log.info({ version: update.version, checks: this.config.health.checks.length, deadline: isoTime(deadline) }, 'health checks');
    const report = await this.healthChecks(deadline, signal);
    if (report.ok) return this.commit(update);
    const failing = report.failing!;
    const message = `Health check ${JSON.stringify(failing.name)} failed: ${failing.detail}`.slice(0, 1000);
    this.log.error({ version: update.version, check: failing.name, detail: failing.detail }, 'health check failed; rolling back');
    await this.transition({ type: 'healthFailed', code: 'ERR_HEALTH_CHECK', message });
    return this.rollBack(this.state.update!, signal);
  }

  /**
   * Running a slot on trial that no update record explains (the state file was
   * lost, or an operator set the trial by hand): the health checks decide, as
   * for an update. Never left unconfirmed, since an install would overwrite the
   * other slot, the trial's fallback.
   */
  private async adoptTrial(signal?: AbortSignal): Promise<CycleResult> {
    const version = await this.currentVersion().catch(() => 'unknown');
    this.log.warn({ slot: this.booted, version }, 'running a slot on trial with no update on record; health checks decide');
    const report = await this.healthChecks(Date.now() + this.config.health.deadlineSeconds * 1000, signal);
    if (report.ok) {
      await this.control.markGood(this.booted);
      await this.refreshBoot();
      return { result: 'committed', version };
    }
    this.log.error({ slot: this.booted, check: report.failing!.name, detail: report.failing!.detail }, 'trial slot failed its health checks; falling back');
    await this.control.markBad(this.booted);
    await this.refreshBoot();
    const rebootRequested = await this.reboot(signal);
    return { result: 'rollingBack', version, code: 'ERR_HEALTH_CHECK', rebootRequested };
  }

  /** The configured health checks, until they all pass or `deadline` (ms since the epoch) passes. */
  private healthChecks(deadline: number, signal?: AbortSignal): ReturnType<typeof runHealthChecks> {
    return runHealthChecks({
      checks: this.config.health.checks,
      deadline,
      intervalSeconds: this.config.health.intervalSeconds,
      systemctl: this.config.health.systemctl,
      dispatcher: this.dispatcher,
      ...(signal ? { signal } : {}),
      log: (message, fields) => this.log.warn({ ...fields }, message),
    });
  }

  private async commit(update: UpdateRecord): Promise<CycleResult> {
    await this.control.markGood(update.toSlot);
    await this.refreshBoot();
    await this.transition({ type: 'healthPassed', at: this.iso() }, [this.event('committed', { version: update.version, channel: update.channel, payloadKind: update.kind })]);
    this.log.info({ version: update.version, slot: update.toSlot }, 'committed');
    return { result: 'committed', version: update.version };
  }

  /** State says rollingBack: mark the new slot bad (idempotent), reboot into the old one, report once back there. */
  private async rollBack(update: UpdateRecord, signal?: AbortSignal): Promise<CycleResult> {
    const failure = update.failure ?? { code: 'ERR_HEALTH_CHECK', message: 'Rolled back.' };
    if (this.booted === update.toSlot) {
      if (this.boot.active === update.toSlot || this.boot.good[update.toSlot]) await this.control.markBad(update.toSlot);
      await this.refreshBoot();
      const rebootRequested = await this.reboot(signal);
      return { result: 'rollingBack', version: update.version, code: failure.code, rebootRequested };
    }
    await this.transition({ type: 'rolledBack', at: this.iso() }, [
      this.event('rolledBack', { version: update.version, channel: update.channel, code: failure.code, message: failure.message.slice(0, 1024), payloadKind: update.kind }),
    ]);
    this.log.warn({ version: update.version, code: failure.code }, 'rolled back');
    return { result: 'rolledBack', version: update.version, code: failure.code, message: failure.message };
  }

  private async fallback(update: UpdateRecord): Promise<CycleResult> {
    await this.transition({ type: 'fallbackDetected', at: this.iso() }, [
      this.event('rolledBack', {
        version: update.version,
        channel: update.channel,
        code: 'ERR_BOOT_FALLBACK',
        message: `Slot ${update.toSlot} never confirmed ${update.version}; the bootloader fell back to slot ${update.fromSlot}.`,
        payloadKind: update.kind,
      }),
    ]);
    const failure = this.state.lastOutcome!;
    this.log.warn({ version: update.version, slot: update.toSlot }, 'bootloader fell back');
    return { result: 'rolledBack', version: update.version, code: 'ERR_BOOT_FALLBACK', message: failure.message ?? '' };
  }

  // ---- Events --------------------------------------------------------------

  /** Delivers queued events (at least once: an event leaves the queue only after the server acknowledged it). Best effort. */
  async flushEvents(signal?: AbortSignal): Promise<number> {
    let sent = 0;
    while (this.state.outbox.length > 0) {
      const batch = this.state.outbox.slice(0, 100);
      try {
        await callJson({
          method: 'POST',
          url: `${this.config.server}/v1/events`,
          body: { deviceId: this.config.deviceId, events: batch },
          ...(this.credential !== undefined ? { credential: this.credential } : {}),
          maxBytes: 64 * 1024,
          dispatcher: this.dispatcher,
          signal: signal ? AbortSignal.any([signal, AbortSignal.timeout(15_000)]) : AbortSignal.timeout(15_000),
        });
      } catch (err) {
        const error = toTandemError(err);
        // A 4xx other than a conflict means the server refuses the batch for good: drop it rather than block the queue forever.
        const status = Number(error.details?.status);
        if (error.code === 'ERR_HTTP_STATUS' && status >= 400 && status < 500 && status !== 408 && status !== 429 && status !== 401) {
          this.log.warn({ code: error.code, message: error.message }, 'server refused events; dropping them');
        } else {
          this.log.warn({ code: error.code, message: error.message, pending: this.state.outbox.length }, 'events not delivered; kept for later');
          return sent;
        }
      }
      const ids = new Set(batch.map((e) => e.id));
      const next = { ...this.state, outbox: this.state.outbox.filter((e) => !ids.has(e.id)) };
      await this.store.save(next);
      this.state = next;
      sent += batch.length;
    }
    return sent;
  }

  // ---- The daemon ----------------------------------------------------------

  /** Polls until the signal aborts: cycle, then wait the server's interval (jittered), or back off after errors. */
  async run(signal: AbortSignal, options: { rebootWaitSeconds?: number } = {}): Promise<void> {
    let errors = 0;
    while (!signal.aborted) {
      let wait: number;
      try {
        const result = await this.cycle(signal);
        errors = 0;
        if (result.result === 'noUpdate') wait = pollSeconds(result.pollAfterSeconds, this.config.poll, this.random);
        else if ((result.result === 'installed' || result.result === 'rebootPending' || result.result === 'rollingBack') && result.rebootRequested) {
          // The reboot should end this process; if it does not, try again later.
          wait = options.rebootWaitSeconds ?? 300;
        } else wait = pollSeconds(undefined, this.config.poll, this.random);
      } catch (err) {
        if (signal.aborted) break;
        errors++;
        const error = toTandemError(err);
        wait = retryWaitSeconds(backoffSeconds(errors - 1, this.config.poll.errorBackoffBaseSeconds, this.config.poll.errorBackoffMaxSeconds, this.random), error);
        this.log.error({ code: error.code, message: error.message, retryInSeconds: Math.round(wait) }, 'cycle failed');
        if (isTandemError(err, 'ERR_STATE_CORRUPT')) throw err;
      }
      try {
        await sleep(wait, signal);
      } catch {
        break;
      }
    }
  }

  // ---- Operator commands ---------------------------------------------------

  async enroll(token: string, signal?: AbortSignal): Promise<{ deviceId: string; channel: string }> {
    const { json } = await callJson({
      method: 'POST',
      url: `${this.config.server}/v1/devices/enroll`,
      body: { token, deviceId: this.config.deviceId, product: this.config.product, board: this.config.board, channel: this.config.channel },
      maxBytes: 64 * 1024,
      dispatcher: this.dispatcher,
      ...(signal ? { signal } : {}),
    });
    const response = validateEnrollResponse(json, 'enroll response');
    if (response.deviceId !== this.config.deviceId) {
      throw new TandemError('ERR_DEVICE_MISMATCH', `The server enrolled ${response.deviceId}, not ${this.config.deviceId}.`);
    }
    await this.store.saveCredential(response.deviceId, response.credential);
    this.credential = response.credential;
    return { deviceId: response.deviceId, channel: response.channel };
  }

  /** Confirms the running slot: commits an update under health check, or marks the running slot good. */
  async markGood(): Promise<CycleResult | { result: 'markedGood'; slot: Slot }> {
    const update = this.state.update;
    if (update && (this.state.phase === 'healthChecking' || this.state.phase === 'waitingForReboot') && this.booted === update.toSlot) {
      if (this.state.phase !== 'healthChecking') await this.transition({ type: 'bootedNewSlot', at: this.iso() });
      return this.commit(update);
    }
    if (update && this.state.phase !== 'idle') {
      throw new TandemError('ERR_ROLLBACK_UNSAFE', `An update to ${update.version} is in phase ${this.state.phase}; mark-good applies to the running slot once it is booted.`);
    }
    await this.control.markGood(this.booted);
    await this.refreshBoot();
    return { result: 'markedGood', slot: this.booted };
  }

  /**
   * Rolls back now: an update under trial is failed (and barred); otherwise the
   * running slot is marked bad and the other one — only if it holds a version the
   * agent verified — becomes active. Then reboots. `force` is the operator's
   * word that the other slot is bootable when the agent cannot know it (the
   * factory image, installed before the agent): its bytes are then not checked.
   */
  async rollback(signal?: AbortSignal, options: { force?: boolean } = {}): Promise<CycleResult | { result: 'rollingBack'; slot: Slot; rebootRequested: boolean; verified: boolean }> {
    const update = this.state.update;
    if (update && this.booted === update.toSlot && (this.state.phase === 'healthChecking' || this.state.phase === 'waitingForReboot')) {
      if (this.state.phase !== 'healthChecking') await this.transition({ type: 'bootedNewSlot', at: this.iso() });
      await this.transition({ type: 'healthFailed', code: 'ERR_MANUAL_ROLLBACK', message: 'Rolled back by the operator.' });
      return this.rollBack(this.state.update!, signal);
    }
    if (this.state.phase !== 'idle') {
      throw new TandemError('ERR_ROLLBACK_UNSAFE', `An update is in phase ${this.state.phase}; the other slot is not a complete image.`);
    }
    const other = otherSlot(this.booted);
    const known = this.state.slots[other];
    if (known?.sha256) {
      await verifySlot(slotPaths(this.config)[other], { size: await this.slotImageSize(other), sha256: known.sha256 }, signal).catch((err: unknown) => {
        throw new TandemError('ERR_ROLLBACK_UNSAFE', `Slot ${other} no longer holds version ${known.version}: ${(err as Error).message}`, { cause: err });
      });
    } else if (options.force === true) {
      this.log.warn({ slot: other }, 'rolling back to a slot this agent never verified, on the operator\'s word (--force)');
    } else {
      throw new TandemError('ERR_ROLLBACK_UNSAFE', `Slot ${other} holds no image this agent installed and verified (e.g. the factory image); refusing to boot it. If you know it is bootable, use --force.`);
    }
    await this.control.markGood(other);
    await this.control.markBad(this.booted);
    await this.refreshBoot();
    const rebootRequested = await this.reboot(signal);
    return { result: 'rollingBack', slot: other, rebootRequested, verified: known?.sha256 !== undefined };
  }

  private async slotImageSize(slot: Slot): Promise<number> {
    const size = this.state.slots[slot]?.size;
    if (size !== undefined) return size;
    throw new TandemError('ERR_ROLLBACK_UNSAFE', `The size of the image in slot ${slot} is not recorded.`);
  }

  async status(): Promise<StatusReport> {
    const paths = slotPaths(this.config);
    const update = this.state.update;
    const slot = (s: Slot) => ({ spec: this.config.slots[s], path: paths[s], ...(this.state.slots[s]?.version ? { version: this.state.slots[s].version } : {}) });
    let version: string;
    try {
      version = await this.currentVersion();
    } catch {
      version = 'unknown';
    }
    return {
      deviceId: this.config.deviceId,
      channel: this.config.channel,
      phase: this.state.phase,
      booted: this.booted,
      version,
      slots: { A: slot('A'), B: slot('B') },
      boot: this.boot,
      ...(update ? { update: { version: update.version, kind: update.kind, toSlot: update.toSlot, attempts: update.attempts, size: update.size, ...(update.checkpoint ? { checkpoint: update.checkpoint } : {}) } } : {}),
      failedVersions: this.state.failedVersions,
      ...(this.state.lastError ? { lastError: this.state.lastError } : {}),
      ...(this.state.lastOutcome ? { lastOutcome: this.state.lastOutcome } : {}),
      pendingEvents: this.state.outbox.length,
      enrolled: this.credential !== undefined,
    };
  }

  private iso(): string {
    return isoTime(this.now());
  }
}
