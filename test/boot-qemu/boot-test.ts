/**
 * Boot tests need real tools (QEMU, firmware, GRUB, mtools…): each test says
 * which, and runs, skips with the reason, or fails when CI requires the tools
 * (test/helpers/tool-test.ts).
 */
import test from 'ava';
import type { ExecutionContext } from 'ava';
import { toolTest, type ToolNeed } from '../helpers/tool-test.ts';

/**
 * A serial ava test that needs real tools. Serial: each boot keeps one core
 * busy, and two cycles at once would only stretch both past their timeouts.
 */
export function bootTest(title: string, need: ToolNeed, fn: (t: ExecutionContext) => Promise<void>): void {
  toolTest(test, title, need, fn, test.serial);
}
