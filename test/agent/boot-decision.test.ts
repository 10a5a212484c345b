import test from 'ava';
import { decideBoot } from '../../agent/boot-control/boot-decision.ts';
import { bootStateFromVars, withBad, withGood, withTrial } from '../../agent/boot-control/boot-vars.ts';
import type { BootVars } from '../../agent/boot-control/boot-vars.ts';
import type { Slot } from '../../agent/boot-control/boot-control.ts';
import { isTandemError } from '../../shared/errors.ts';

const vars = (o: Record<string, string>) => new Map(Object.entries(o));
/** Power-on as the bootloader does it; the env it saved (or the same one) comes back. */
function boot(env: BootVars): [Slot, BootVars, boolean] {
  const d = decideBoot(env);
  return [d.boot, d.newVars ?? env, d.newVars !== null];
}

const table: [title: string, env: Record<string, string> | null, boot: Slot, writes: Record<string, string> | null][] = [
  ['unreadable env: slot A, nothing written', null, 'A', null],
  ['empty env: slot A', {}, 'A', null],
  ['garbage TANDEM_ACTIVE, only B good: the last good, B', { TANDEM_ACTIVE: 'C', TANDEM_B_GOOD: '1' }, 'B', null],
  ['garbage TANDEM_ACTIVE, both good: A', { TANDEM_ACTIVE: 'b', TANDEM_A_GOOD: '1', TANDEM_B_GOOD: '1' }, 'A', null],
  ['good slot, booted recorded: no write', { TANDEM_ACTIVE: 'A', TANDEM_A_GOOD: '1', TANDEM_BOOTED: 'A' }, 'A', null],
  ['good slot, first boot: records TANDEM_BOOTED', { TANDEM_ACTIVE: 'B', TANDEM_B_GOOD: '1', TANDEM_BOOTED: 'A' }, 'B', { TANDEM_BOOTED: 'B' }],
  ['trial with 9 tries: 8 left', { TANDEM_ACTIVE: 'B', TANDEM_TRIAL: '1', TANDEM_TRIES: '9' }, 'B', { TANDEM_TRIES: '8', TANDEM_BOOTED: 'B' }],
  ['trial with 1 try: the last boot of it', { TANDEM_ACTIVE: 'A', TANDEM_TRIAL: '1', TANDEM_TRIES: '1' }, 'A', { TANDEM_TRIES: '0', TANDEM_BOOTED: 'A' }],
  ...(['0', '', '10', 'x', '-1'].map((tries) => [
    `trial with tries ${JSON.stringify(tries)}: falls back`,
    { TANDEM_ACTIVE: 'B', TANDEM_TRIAL: '1', TANDEM_TRIES: tries, TANDEM_A_GOOD: '1' },
    'A',
    { TANDEM_ACTIVE: 'A', TANDEM_TRIAL: '0', TANDEM_TRIES: '0', TANDEM_B_GOOD: '0', TANDEM_FALLBACK: 'B', TANDEM_BOOTED: 'A' },
  ]) as [string, Record<string, string>, Slot, Record<string, string>][]),
  ['TANDEM_TRIAL other than 1 is no trial', { TANDEM_ACTIVE: 'B', TANDEM_TRIAL: 'yes', TANDEM_TRIES: '0', TANDEM_BOOTED: 'B' }, 'B', null],
];
for (const [title, env, expectBoot, writes] of table) {
  test(`decideBoot: ${title}`, (t) => {
    const d = decideBoot(env === null ? null : vars(env));
    t.is(d.boot, expectBoot);
    t.deepEqual(d.newVars, writes === null ? null : new Map([...Object.entries(env ?? {}), ...Object.entries(writes)]));
  });
}

test('decideBoot: unrelated variables stay in place; new ones are appended in the scripts save order', (t) => {
  const d = decideBoot(vars({ saved_entry: 'x', TANDEM_TRIES: '0', TANDEM_ACTIVE: 'B', TANDEM_TRIAL: '1', zz: 'y' }));
  t.deepEqual(
    [...(d.newVars ?? [])].map(([k]) => k),
    ['saved_entry', 'TANDEM_TRIES', 'TANDEM_ACTIVE', 'TANDEM_TRIAL', 'zz', 'TANDEM_B_GOOD', 'TANDEM_FALLBACK', 'TANDEM_BOOTED'],
  );
});

test('full trial cycle: try 3 → three boots spend the tries → the 4th falls back to A, which then stays', (t) => {
  let env: BootVars = withTrial(withGood(vars({}), 'A'), 'B', 3);
  const seen: string[] = [];
  for (let i = 0; i < 6; i++) {
    const [slot, next, wrote] = boot(env);
    env = next;
    seen.push(`${slot}:${env.get('TANDEM_TRIES')}:${wrote ? 'w' : '-'}`);
  }
  t.deepEqual(seen, ['B:2:w', 'B:1:w', 'B:0:w', 'A:0:w', 'A:0:-', 'A:0:-']);
  t.deepEqual(bootStateFromVars(env), { active: 'A', booted: 'A', trial: false, triesLeft: 0, good: { A: true, B: false }, fallbackFrom: 'B' });
});

test('mark good: the slot stays, no more tries are spent and nothing more is written', (t) => {
  const [slot, first] = boot(withTrial(withGood(vars({}), 'A'), 'B', 3));
  let env = first;
  t.is(slot, 'B');
  t.deepEqual(bootStateFromVars(env), { active: 'B', booted: 'B', trial: true, triesLeft: 2, good: { A: true, B: false } });
  env = withGood(env, 'B');
  for (let i = 0; i < 4; i++) {
    const [s, next, wrote] = boot(env);
    t.is(s, 'B');
    t.false(wrote);
    env = next;
  }
  t.deepEqual(bootStateFromVars(env), { active: 'B', booted: 'B', trial: false, triesLeft: 0, good: { A: true, B: true } });
});

test('mark bad during a trial: the other slot is active and boots next, with no fallback recorded', (t) => {
  const [, env] = boot(withTrial(withGood(vars({}), 'A'), 'B', 3));
  const bad = withBad(env, 'B');
  const [slot, after] = boot(bad);
  t.is(slot, 'A');
  t.deepEqual(bootStateFromVars(after), { active: 'A', booted: 'A', trial: false, triesLeft: 0, good: { A: true, B: false } });
  t.deepEqual(withBad(after, 'B'), after, 'marking the inactive slot bad again changes nothing');
});

test('agent edits: a new trial clears the fallback record; good/bad pin a missing TANDEM_ACTIVE first', (t) => {
  t.false(withTrial(vars({ TANDEM_FALLBACK: 'B' }), 'B', 2).has('TANDEM_FALLBACK'));
  // With no TANDEM_ACTIVE the bootloader boots A; marking B good must not move it to B.
  t.is(decideBoot(withGood(vars({}), 'B')).boot, 'A');
  t.is(withBad(vars({ TANDEM_B_GOOD: '1' }), 'B').get('TANDEM_ACTIVE'), 'A');
  t.is(withBad(vars({ TANDEM_B_GOOD: '1', TANDEM_A_GOOD: '0' }), 'A').get('TANDEM_ACTIVE'), 'B');
  for (const tries of [0, 10, 1.5, Number.NaN]) {
    t.true(isTandemError(t.throws(() => withTrial(vars({}), 'B', tries)), 'ERR_BOOTENV_INVALID'), String(tries));
  }
  t.true(isTandemError(t.throws(() => withGood(vars({}), 'C' as 'A')), 'ERR_BOOTENV_INVALID'));
});
