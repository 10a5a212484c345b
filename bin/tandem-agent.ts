/**
 * `tandem-agent`: the device daemon and its operator commands (STYLE.md 12:
 * parse, call agent/, print, map codes to exit codes). Logs are JSON lines
 * (JSON lines, pino's shape) on stderr; results on stdout.
 *
 *   run --config FILE                 the daemon (SIGTERM/SIGINT stop it cleanly)
 *   check --config FILE [--json]      one cycle: 0 installed or committed, 4 installed and
 *                                     reboot pending, 2 nothing to do, 1 rolled back, other codes on errors
 *   status --config FILE [--json]
 *   enroll --config FILE --token T
 *   mark-good --config FILE | rollback --config FILE [--force]
 *   bootenv --backend grub|uboot|file --env FILE [--env-redundant FILE2] [--size N]
 *           show | try A|B --tries N | mark-good A|B | fallback
 */
import { DeviceAgent, type AgentLogger, type CycleResult } from '../agent/agent.ts';
import { createBootControl, isSlot, MAX_TRIES, simulateReboot, type BootControlConfig, type BootState } from '../agent/boot-control/index.ts';
import { loadConfig } from '../agent/config.ts';
import { createJsonLogger } from '../agent/json-logger.ts';
import { EXIT, parseCommandArgs, printJson, processIo, requireOption, runCommands, UsageError, type Command, type Io } from './cli-kit.ts';

/** `check` exit codes beyond cli-kit's: what scripts and the kill tests branch on. */
export const AGENT_EXIT = { installed: 0, committed: 0, nothingToDo: 2, rebootPending: 4, rolledBack: 1 } as const;

function logger(io: Io, quiet: boolean): AgentLogger {
  return createJsonLogger({ level: quiet ? 'warn' : (io.env.TANDEM_LOG_LEVEL ?? 'info'), name: 'tandem-agent', write: (line) => io.stderr.write(line) });
}

async function openAgent(configPath: string, io: Io, options: { readOnly?: boolean; quiet?: boolean } = {}): Promise<DeviceAgent> {
  const config = await loadConfig(configPath);
  return DeviceAgent.open(config, { logger: logger(io, options.quiet ?? false), ...(options.readOnly ? { readOnly: true } : {}) });
}

function exitFor(result: CycleResult): number {
  switch (result.result) {
    case 'noUpdate':
      return AGENT_EXIT.nothingToDo;
    case 'installed':
    case 'rebootPending':
      return result.rebootRequested ? AGENT_EXIT.installed : AGENT_EXIT.rebootPending;
    case 'committed':
      return AGENT_EXIT.committed;
    case 'rollingBack':
    case 'rolledBack':
      return AGENT_EXIT.rolledBack;
  }
}

function describe(result: CycleResult): string {
  switch (result.result) {
    case 'noUpdate':
      return `no update; next check in about ${result.pollAfterSeconds} s`;
    case 'installed':
      return `installed ${result.version}; ${result.rebootRequested ? 'rebooting' : 'reboot to try it'}`;
    case 'rebootPending':
      return `${result.version} is installed and waiting for a reboot${result.rebootRequested ? ' (reboot requested again)' : ''}`;
    case 'committed':
      return `committed ${result.version}`;
    case 'rollingBack':
      return `${result.version} failed (${result.code}); rolling back${result.rebootRequested ? ', rebooting' : ': reboot to finish'}`;
    case 'rolledBack':
      return `${result.version} rolled back (${result.code}): ${result.message}`;
  }
}

const run: Command = async (argv, io) => {
  const { values } = parseCommandArgs(argv, { config: { type: 'string' } }, false);
  const agent = await openAgent(requireOption(values.config, 'config'), io);
  const controller = new AbortController();
  const stop = () => controller.abort(new Error('stopped by signal'));
  process.once('SIGTERM', stop);
  process.once('SIGINT', stop);
  try {
    await agent.run(controller.signal);
  } finally {
    process.off('SIGTERM', stop);
    process.off('SIGINT', stop);
    await agent.close();
  }
  return EXIT.ok;
};

const check: Command = async (argv, io) => {
  const { values } = parseCommandArgs(argv, { config: { type: 'string' }, json: { type: 'boolean' }, quiet: { type: 'boolean' } }, false);
  const agent = await openAgent(requireOption(values.config, 'config'), io, { quiet: values.quiet === true });
  try {
    const result = await agent.cycle();
    if (values.json) printJson(io, result);
    else io.stdout.write(`${describe(result)}\n`);
    return exitFor(result);
  } finally {
    await agent.close();
  }
};

const status: Command = async (argv, io) => {
  const { values } = parseCommandArgs(argv, { config: { type: 'string' }, json: { type: 'boolean' } }, false);
  const agent = await openAgent(requireOption(values.config, 'config'), io, { readOnly: true, quiet: true });
  try {
    const s = await agent.status();
    if (values.json) {
      printJson(io, s);
      return EXIT.ok;
    }
    const flags = (slot: 'A' | 'B') =>
      `${s.boot.active === slot ? 'active' : ''}${s.boot.active === slot && s.boot.trial ? ` trial(${s.boot.triesLeft} left)` : ''}${s.boot.good[slot] ? ' good' : ''}${s.boot.fallbackFrom === slot ? ' fell-back' : ''}`.trim();
    const lines = [
      `device   ${s.deviceId} (${s.channel})${s.enrolled ? '' : ' — not enrolled'}`,
      `running  slot ${s.booted}, version ${s.version}`,
      ...(['A', 'B'] as const).map((slot) => `slot ${slot}   ${s.slots[slot].path}  ${s.slots[slot].version ?? '?'}  ${flags(slot)}`),
      `state    ${s.phase}${s.update ? ` → ${s.update.version} (${s.update.kind}) into slot ${s.update.toSlot}${s.update.checkpoint ? `, at byte ${s.update.checkpoint.payloadOffset} of ${s.update.size}` : ''}` : ''}`,
      ...(s.failedVersions.length ? [`failed   ${s.failedVersions.join(', ')}`] : []),
      ...(s.lastError ? [`error    ${s.lastError.code}: ${s.lastError.message} (${s.lastError.at})`] : []),
      ...(s.pendingEvents ? [`events   ${s.pendingEvents} not yet delivered`] : []),
    ];
    io.stdout.write(`${lines.join('\n')}\n`);
    return EXIT.ok;
  } finally {
    await agent.close();
  }
};

const enroll: Command = async (argv, io) => {
  const { values } = parseCommandArgs(argv, { config: { type: 'string' }, token: { type: 'string' }, json: { type: 'boolean' } }, false);
  const agent = await openAgent(requireOption(values.config, 'config'), io, { quiet: true });
  try {
    const result = await agent.enroll(requireOption(values.token, 'token'));
    if (values.json) printJson(io, result);
    else io.stdout.write(`enrolled ${result.deviceId} on channel ${result.channel}\n`);
    return EXIT.ok;
  } finally {
    await agent.close();
  }
};

const markGood: Command = async (argv, io) => {
  const { values } = parseCommandArgs(argv, { config: { type: 'string' }, json: { type: 'boolean' } }, false);
  const agent = await openAgent(requireOption(values.config, 'config'), io, { quiet: true });
  try {
    const result = await agent.markGood();
    if (values.json) printJson(io, result);
    else io.stdout.write(result.result === 'markedGood' ? `slot ${result.slot} marked good\n` : `${describe(result)}\n`);
    return EXIT.ok;
  } finally {
    await agent.close();
  }
};

const rollback: Command = async (argv, io) => {
  const { values } = parseCommandArgs(argv, { config: { type: 'string' }, force: { type: 'boolean' }, json: { type: 'boolean' } }, false);
  const agent = await openAgent(requireOption(values.config, 'config'), io, { quiet: true });
  try {
    const result = await agent.rollback(undefined, { force: values.force === true });
    if (values.json) printJson(io, result);
    else if ('slot' in result) io.stdout.write(`rolling back to slot ${result.slot}${result.verified ? '' : ' (not verified: --force)'}${result.rebootRequested ? '; rebooting' : '; reboot to finish'}\n`);
    else io.stdout.write(`${describe(result)}\n`);
    return EXIT.ok;
  } finally {
    await agent.close();
  }
};

const BOOTENV_USAGE = 'usage: tandem-agent bootenv --backend grub|uboot|file --env FILE [--env-redundant FILE2] [--size BYTES] [--json] show | try A|B --tries N | mark-good A|B | fallback | simulate-boot';

function formatBoot(s: BootState): string {
  return [
    `active   ${s.active}${s.trial ? ` (trial, ${s.triesLeft} tries left)` : ''}`,
    `booted   ${s.booted ?? '-'}`,
    `good     A=${s.good.A ? 'yes' : 'no'} B=${s.good.B ? 'yes' : 'no'}`,
    ...(s.fallbackFrom ? [`fallback from ${s.fallbackFrom}`] : []),
  ].join('\n');
}

const bootenv: Command = async (argv, io) => {
  const { values, positionals } = parseCommandArgs(argv, {
    backend: { type: 'string' },
    env: { type: 'string' },
    'env-redundant': { type: 'string' },
    size: { type: 'string' },
    tries: { type: 'string' },
    json: { type: 'boolean' },
  });
  const backend = requireOption(values.backend, 'backend');
  const env = requireOption(values.env, 'env');
  const size = values.size === undefined ? undefined : Number(values.size);
  if (size !== undefined && (!Number.isInteger(size) || size < 8)) throw new UsageError('--size must be a byte count.');
  if (values['env-redundant'] !== undefined && backend !== 'uboot') throw new UsageError('--env-redundant is for the uboot backend.');
  let config: BootControlConfig;
  if (backend === 'file') config = { kind: 'file', path: env };
  else if (backend === 'grub') config = { kind: 'grub', path: env, ...(size !== undefined ? { size } : {}) };
  else if (backend === 'uboot') config = { kind: 'uboot', copies: [{ path: env }, ...(values['env-redundant'] ? [{ path: values['env-redundant'] }] : [])], ...(size !== undefined ? { size } : {}) };
  else throw new UsageError(`Unknown backend ${JSON.stringify(backend)}.\n${BOOTENV_USAGE}`);
  const control = createBootControl(config);
  const [verb, slot, ...extra] = positionals;
  const needSlot = () => {
    if (!isSlot(slot) || extra.length > 0) throw new UsageError(`${verb} takes one slot, A or B.\n${BOOTENV_USAGE}`);
    return slot;
  };
  switch (verb) {
    case 'show':
      break;
    case 'try': {
      const s = needSlot();
      const tries = Number(requireOption(values.tries, 'tries'));
      if (!Number.isInteger(tries) || tries < 1 || tries > MAX_TRIES) throw new UsageError(`--tries must be 1..${MAX_TRIES}.`);
      await control.setTrial(s, tries);
      break;
    }
    case 'mark-good':
      await control.markGood(needSlot());
      break;
    case 'fallback': {
      if (slot !== undefined) throw new UsageError(`fallback takes no slot: it marks the active slot bad.\n${BOOTENV_USAGE}`);
      await control.markBad((await control.read()).active);
      break;
    }
    case 'simulate-boot': {
      // What the bootloader script would do at the next power-on (decideBoot), for testing an install by hand.
      const decision = await simulateReboot(control);
      io.stderr.write(`bootloader would boot slot ${decision.boot}\n`);
      break;
    }
    default:
      throw new UsageError(BOOTENV_USAGE);
  }
  const state = await control.read();
  if (values.json) printJson(io, state);
  else io.stdout.write(`${formatBoot(state)}\n`);
  return EXIT.ok;
};

const commands: Record<string, { summary: string; run: Command }> = {
  run: { summary: 'the daemon: poll, install, reboot, health-check, commit or roll back', run },
  check: { summary: 'one cycle now (exit 0 installed, 4 reboot pending, 2 nothing to do)', run: check },
  status: { summary: 'slots, versions, boot flags, state, last error', run: status },
  enroll: { summary: 'enroll with the server using a token (--token T)', run: enroll },
  'mark-good': { summary: 'confirm the running slot (commits an update on trial)', run: markGood },
  rollback: { summary: 'fail the running slot and reboot into the other one', run: rollback },
  bootenv: { summary: 'read or change the bootloader environment directly', run: bootenv },
};

process.exitCode = await runCommands(commands, process.argv.slice(2), processIo, 'tandem-agent');
