/**
 * Boot tests need real tools (QEMU, firmware, GRUB, mtools…): each test says
 * which, and runs, skips with the reason, or fails when CI requires the tools.
 */
import test from 'ava';
import type { ExecutionContext } from 'ava';
import { spawnSync } from 'node:child_process';
import { existsSync } from 'node:fs';

export interface ToolNeed {
  /** Commands that must be on PATH. */
  commands?: string[];
  /** Files that must exist (firmware, boot images). */
  files?: string[];
  /** What installs them: named in the skip and failure messages. */
  packages: string;
}

/** What is missing of `need`, as a list of names; empty when everything is there. */
export function missingTools(need: ToolNeed): string[] {
  const missing = (need.commands ?? []).filter((cmd) => spawnSync('sh', ['-c', `command -v ${cmd}`], { stdio: 'ignore' }).status !== 0);
  return [...missing, ...(need.files ?? []).filter((file) => !existsSync(file))];
}

/**
 * A serial ava test that needs real tools: skipped with the reason when they are
 * missing, failed instead when CI requires the tools (TANDEM_REQUIRE_TOOLS=1).
 * Serial: each boot keeps one core busy, and two cycles at once would only
 * stretch both past their timeouts.
 */
export function bootTest(title: string, need: ToolNeed, fn: (t: ExecutionContext) => Promise<void>): void {
  const missing = missingTools(need);
  if (missing.length === 0) test.serial(title, fn);
  else if (process.env.TANDEM_REQUIRE_TOOLS === '1') {
    test(title, (t) => t.fail(`${missing.join(', ')} missing (apt-get install ${need.packages}) and TANDEM_REQUIRE_TOOLS=1`));
  } else test.skip(`${title} [skipped: ${missing.join(', ')} missing; apt-get install ${need.packages}]`, fn);
}
