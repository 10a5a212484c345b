/**
 * Tests that drive a real tool (grub-editenv, fw_setenv, zstd, QEMU…): run when
 * the tool is there, skipped with the reason and the Debian package when it is
 * not, and failed instead when CI promised to install it (TANDEM_REQUIRE_TOOLS=1,
 * set by .ci/run) — so a missing tool never passes silently in CI.
 */
import { spawnSync } from 'node:child_process';
import { existsSync } from 'node:fs';
import type { ExecutionContext, TestFn } from 'ava';

export interface ToolNeed {
  /** Commands that must be on PATH. */
  commands?: string[];
  /** Files that must exist (firmware images, EFI binaries…). */
  files?: string[];
  /** The Debian packages that provide them, for the skip message. */
  packages: string;
}

export function missingTools(need: ToolNeed): string[] {
  const missing = (need.commands ?? []).filter((cmd) => spawnSync('sh', ['-c', `command -v ${cmd}`], { stdio: 'ignore' }).status !== 0);
  return [...missing, ...(need.files ?? []).filter((file) => !existsSync(file))];
}

/** Registers `fn` with `register` (test, test.serial…) when the tools are there; otherwise a skip, or a failure under CI. */
export function toolTest<C>(test: TestFn<C>, title: string, need: ToolNeed, fn: (t: ExecutionContext<C>) => Promise<void>, register: TestFn<C> | TestFn<C>['serial'] = test): void {
  const missing = missingTools(need);
  if (missing.length === 0) register(title, fn);
  else if (process.env.TANDEM_REQUIRE_TOOLS === '1') test(title, (t) => t.fail(`${missing.join(', ')} missing (apt-get install ${need.packages}) and TANDEM_REQUIRE_TOOLS=1`));
  else test.skip(`${title} [skipped: ${missing.join(', ')} missing; apt-get install ${need.packages}]`, fn);
}
