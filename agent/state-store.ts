/**
 * The agent's durable memory: `state.json` (phase, update in flight, failed
 * versions, keyring version, and the outbox of unsent events, so a transition
 * and the events it produced land in one atomic write), `prelude.bin` (the
 * verified payload prelude a resume needs), `credential.json`, and a lock so
 * only one agent process acts at a time. Every write goes through
 * writeFileDurable (STYLE.md 10): after a power cut, the old file or the new.
 */
import { open, mkdir, readdir, readFile, rename, unlink } from 'node:fs/promises';
import { join } from 'node:path';
import { isDurableWriteTemp, writeFileDurable } from '../shared/durable-write.ts';
import { TandemError } from '../shared/errors.ts';
import { parseSafeJson } from '../shared/safe-json.ts';
import { PHASES, initialState, type AgentState } from './state.ts';
import { isoTime } from '../shared/iso-time.ts';

export class StateStore {
  readonly statePath: string;
  readonly preludePath: string;
  readonly credentialPath: string;
  readonly lockPath: string;

  constructor(readonly dir: string) {
    this.statePath = join(dir, 'state.json');
    this.preludePath = join(dir, 'prelude.bin');
    this.credentialPath = join(dir, 'credential.json');
    this.lockPath = join(dir, 'agent.lock');
  }

  async init(): Promise<void> {
    await mkdir(this.dir, { recursive: true, mode: 0o700 });
  }

  async load(): Promise<AgentState> {
    let bytes: Buffer;
    try {
      bytes = await readFile(this.statePath);
    } catch (err) {
      if ((err as NodeJS.ErrnoException).code === 'ENOENT') return initialState();
      throw err;
    }
    let doc: unknown;
    try {
      doc = parseSafeJson(bytes, { maxBytes: 8 * 1024 * 1024, maxDepth: 16 });
    } catch (cause) {
      throw new TandemError('ERR_STATE_CORRUPT', `${this.statePath} is not valid JSON; move it aside to start over.`, { cause });
    }
    const state = doc as unknown as AgentState;
    if (state === null || typeof state !== 'object' || state.format !== 1 || !PHASES.includes(state.phase) || !Array.isArray(state.outbox) || !Array.isArray(state.failedVersions)) {
      throw new TandemError('ERR_STATE_CORRUPT', `${this.statePath} is not an agent state (format 1); move it aside to start over.`);
    }
    return { ...initialState(), ...state };
  }

  /**
   * Moves an unreadable state file aside (kept for a post-mortem) along with
   * the prelude that belonged to it; the agent then starts from a blank state.
   * Only media corruption or a hand edit gets here: power cuts cannot tear a
   * file written by rename.
   */
  async quarantine(now: Date): Promise<string> {
    const aside = `${this.statePath}.corrupt-${isoTime(now).replace(/[:.]/g, '')}`;
    await rename(this.statePath, aside);
    await this.dropPrelude();
    return aside;
  }

  /** Removes temp files of durable writes that a killed agent left behind; call with the lock held. */
  async removeStaleTemps(): Promise<number> {
    let removed = 0;
    for (const name of await readdir(this.dir).catch(() => [] as string[])) {
      if (isDurableWriteTemp(name) && (await unlink(join(this.dir, name)).then(() => true, () => false))) removed++;
    }
    return removed;
  }

  save(state: AgentState): Promise<void> {
    return writeFileDurable(this.statePath, `${JSON.stringify(state)}\n`, { mode: 0o600 });
  }

  async loadPrelude(): Promise<Buffer | undefined> {
    return readFile(this.preludePath).catch(() => undefined);
  }

  savePrelude(raw: Uint8Array): Promise<void> {
    return writeFileDurable(this.preludePath, raw, { mode: 0o600 });
  }

  async dropPrelude(): Promise<void> {
    await unlink(this.preludePath).catch(() => undefined);
  }

  async loadCredential(): Promise<string | undefined> {
    const bytes = await readFile(this.credentialPath).catch(() => undefined);
    if (bytes === undefined) return undefined;
    const doc = parseSafeJson(bytes, { maxBytes: 4096, maxDepth: 2 }) as { credential?: unknown };
    return typeof doc?.credential === 'string' ? doc.credential : undefined;
  }

  saveCredential(deviceId: string, credential: string): Promise<void> {
    return writeFileDurable(this.credentialPath, `${JSON.stringify({ deviceId, credential })}\n`, { mode: 0o600 });
  }

  /**
   * Takes the agent lock (a pid file created exclusively). A lock whose process
   * is gone — the agent was killed — is taken over. Returns the release function.
   */
  async lock(): Promise<() => Promise<void>> {
    for (let attempt = 0; attempt < 3; attempt++) {
      try {
        const fh = await open(this.lockPath, 'wx', 0o600);
        await fh.writeFile(`${process.pid}\n`);
        await fh.close();
        return async () => {
          await unlink(this.lockPath).catch(() => undefined);
        };
      } catch (err) {
        if ((err as NodeJS.ErrnoException).code !== 'EEXIST') throw err;
      }
      const pid = Number((await readFile(this.lockPath, 'utf8').catch(() => '')).trim());
      if (Number.isInteger(pid) && pid > 0 && isAlive(pid)) {
        throw new TandemError('ERR_AGENT_LOCKED', `Another tandem-agent (pid ${pid}) holds ${this.lockPath}.`, { details: { pid } });
      }
      await unlink(this.lockPath).catch(() => undefined);
    }
    throw new TandemError('ERR_AGENT_LOCKED', `Could not take ${this.lockPath}.`);
  }
}

function isAlive(pid: number): boolean {
  try {
    process.kill(pid, 0);
    return true;
  } catch (err) {
    return (err as NodeJS.ErrnoException).code === 'EPERM';
  }
}
