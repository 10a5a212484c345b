/** `tandem`: keys and payloads for release engineering; releases, rollouts and devices through the admin API. */
import { processIo, runCommands, type Command } from './cli-kit.ts';
import { keysCommand } from './commands/keys.ts';
import { payloadCommand } from './commands/payload.ts';

const commands: Record<string, { summary: string; run: Command }> = {
  keys: { summary: 'generate root and release keys and a keyring', run: keysCommand },
  payload: { summary: 'create, inspect, verify and apply payloads', run: payloadCommand },
};

process.exitCode = await runCommands(commands, process.argv.slice(2), processIo, 'tandem');
