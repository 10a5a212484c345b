import test from 'ava';
import type { ExecutionContext } from 'ava';
import { toolTest as withTool } from '../helpers/tool-test.ts';
import { execFile } from 'node:child_process';
import { readFile } from 'node:fs/promises';
import { promisify } from 'node:util';
import { decideBoot } from '../../agent/boot-control/boot-decision.ts';
import { BOOT_VAR_NAMES } from '../../agent/boot-control/boot-vars.ts';

// The scripts cannot run here (booting them in QEMU is a separate test); these
// checks keep them in step with decideBoot and the agent's variable names.
const run = promisify(execFile);
const GRUB_CFG = new URL('../../agent/boot/grub.cfg', import.meta.url);
const BOOT_CMD = new URL('../../agent/boot/boot.cmd', import.meta.url);
const code = async (url: URL) => (await readFile(url, 'utf8')).replace(/^\s*#.*$/gm, '');

const toolTest = (title: string, fn: (t: ExecutionContext) => Promise<void>): void => withTool(test, title, { commands: ['grub-script-check'], packages: 'grub-common' }, fn);

toolTest('grub.cfg passes grub-script-check', async (t) => {
  await t.notThrowsAsync(run('grub-script-check', [GRUB_CFG.pathname]));
});

for (const [name, url, loadRe] of [
  ['grub.cfg', GRUB_CFG, /load_env --file "\$\{tandem_env\}" ([A-Z_ ]+)/],
  ['boot.cmd', BOOT_CMD, /env import -c \$\{kernel_addr_r\} \$\{tandem_size\} ([A-Z_ ]+)/],
] as const) {
  test(`${name}: uses exactly the agent's variables and loads all of them, nothing else`, async (t) => {
    const text = await code(url);
    t.deepEqual([...new Set(text.match(/TANDEM_[A-Z_]+/g))].sort(), [...BOOT_VAR_NAMES].sort());
    t.deepEqual(loadRe.exec(text)?.[1]?.trim().split(' '), [...BOOT_VAR_NAMES]);
  });

  test(`${name}: decrements tries 1..9 by a table, as decideBoot does`, async (t) => {
    const pairs = [...(await code(url)).matchAll(/"\$\{TANDEM_TRIES\}" = (\d)(?: \])?; then (?:set )?tandem_left=(\d)/g)];
    t.deepEqual(
      pairs.map((m) => [Number(m[1]), Number(m[2])]),
      Array.from({ length: 9 }, (_, i) => [i + 1, i]),
    );
    for (let tries = 1; tries <= 9; tries++) {
      const d = decideBoot(new Map([['TANDEM_ACTIVE', 'A'], ['TANDEM_TRIAL', '1'], ['TANDEM_TRIES', String(tries)]]));
      t.is(d.newVars?.get('TANDEM_TRIES'), String(tries - 1));
    }
  });
}

test('grub.cfg: each save_env saves what decideBoot changes, in the same order (GRUB appends new names in that order)', async (t) => {
  const saves = [...(await code(GRUB_CFG)).matchAll(/save_env --file "\$\{tandem_env\}" ([A-Z_ ]+)/g)].map((m) => m[1]?.trim());
  const changed = (env: Record<string, string>) => {
    const before = new Map(Object.entries(env));
    return [...(decideBoot(before).newVars ?? [])].filter(([k, v]) => before.get(k) !== v).map(([k]) => k).join(' ');
  };
  t.deepEqual(saves.sort(), [
    changed({ TANDEM_ACTIVE: 'A', TANDEM_TRIAL: '1', TANDEM_TRIES: '3' }), // a trial boot
    changed({ TANDEM_ACTIVE: 'A', TANDEM_TRIAL: '1' }), // fallback from A
    changed({ TANDEM_ACTIVE: 'B', TANDEM_TRIAL: '1' }), // fallback from B
    changed({ TANDEM_ACTIVE: 'B' }), // first boot of a slot outside a trial
  ].sort());
});

test('boot.cmd: exports every variable it loads, as a single-copy env the agent reads', async (t) => {
  const text = await code(BOOT_CMD);
  const exported = /env export -c -s \$\{tandem_size\} \$\{kernel_addr_r\} ([A-Z_ ]+)/.exec(text)?.[1]?.trim().split(' ');
  t.deepEqual(exported, [...BOOT_VAR_NAMES]);
  t.regex(text, /fatwrite \$\{tandem_if\} \$\{tandem_part\} \$\{kernel_addr_r\} \$\{tandem_file\} \$\{tandem_size\}/);
});
