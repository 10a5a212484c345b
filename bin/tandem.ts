/** `tandem`: keys and payloads for release engineering; releases, rollouts and devices through the admin API. */
import { processIo, runCommands, type Command } from './cli-kit.ts';
import { keysCommand } from './commands/keys.ts';
import { payloadCommand } from './commands/payload.ts';
import { releaseCommand } from './commands/release.ts';
import { rolloutCommand } from './commands/rollout.ts';
import { statusCommand } from './commands/status.ts';
import { deviceCommand } from './commands/device.ts';
import { tokenCommand } from './commands/token.ts';

const commands: Record<string, { summary: string; run: Command }> = {
  keys: { summary: 'generate root and release keys and a keyring', run: keysCommand },
  payload: { summary: 'create, inspect, verify and apply payloads', run: payloadCommand },
  release: { summary: 'publish an image or payload to a channel; list releases', run: releaseCommand },
  rollout: { summary: 'set, pause, resume, halt or show a staged rollout', run: rolloutCommand },
  status: { summary: 'adoption, failures and rollout state per channel', run: statusCommand },
  device: { summary: 'list and show devices; clear a failure; pin a version', run: deviceCommand },
  token: { summary: 'create admin API tokens and device enrollment tokens', run: tokenCommand },
};

process.exitCode = await runCommands(commands, process.argv.slice(2), processIo, 'tandem');
