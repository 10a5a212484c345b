/**
 * Boot control in a JSON file: `{"TANDEM_ACTIVE":"A", …}`, the same variables
 * the GRUB and U-Boot scripts use. For tests and for custom bootloaders that
 * can read JSON (or an init script that turns it into their own env).
 */
import { writeFileDurable } from '../../shared/durable-write.ts';
import { TandemError } from '../../shared/errors.ts';
import { parseSafeJson } from '../../shared/safe-json.ts';
import { EnvBootControl, readEnvFile } from './env-boot-control.ts';
import type { EnvStore } from './env-boot-control.ts';
import type { BootVars } from './boot-vars.ts';

export interface FileBootControlConfig {
  kind: 'file';
  path: string;
}

// A boot env is a handful of short strings; anything this large is not one.
const MAX_BYTES = 64 * 1024;

export class JsonEnvStore implements EnvStore {
  constructor(readonly path: string) {}

  async load(): Promise<Map<string, string>> {
    const bytes = await readEnvFile(this.path);
    let doc;
    try {
      doc = parseSafeJson(bytes, { maxBytes: MAX_BYTES, maxDepth: 1 });
    } catch (cause) {
      throw new TandemError('ERR_BOOTENV_CORRUPT', `${this.path} is not valid JSON.`, { cause });
    }
    if (doc === null || typeof doc !== 'object' || Array.isArray(doc)) {
      throw new TandemError('ERR_BOOTENV_CORRUPT', `${this.path} is not a JSON object.`);
    }
    const vars = new Map<string, string>();
    for (const [name, value] of Object.entries(doc)) {
      if (typeof value !== 'string') throw new TandemError('ERR_BOOTENV_CORRUPT', `${this.path}: ${name} is not a string.`);
      vars.set(name, value);
    }
    return vars;
  }

  save(vars: BootVars): Promise<void> {
    return writeFileDurable(this.path, `${JSON.stringify(Object.fromEntries(vars), null, 2)}\n`);
  }
}

export function createFileBootControl(config: FileBootControlConfig): EnvBootControl {
  return new EnvBootControl('file', new JsonEnvStore(config.path));
}
