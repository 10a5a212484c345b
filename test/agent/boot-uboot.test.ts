import test from 'ava';
import type { ExecutionContext } from 'ava';
import { toolTest as withTool } from '../helpers/tool-test.ts';
import { execFile } from 'node:child_process';
import { mkdtemp, readFile, rm, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { promisify } from 'node:util';
import { crc32 } from 'node:zlib';
import { isTandemError } from '../../shared/errors.ts';
import { createBootControl } from '../../agent/boot-control/index.ts';
import type { UBootEnvCopyConfig } from '../../agent/boot-control/uboot-backend.ts';
import {
  UBOOT_ENV_DEFAULT_SIZE as SIZE,
  parseUBootEnv,
  parseUBootEnvCopy,
  planUBootEnvWrite,
  serializeUBootEnv,
} from '../../agent/boot-control/uboot-env.ts';

const run = promisify(execFile);
let dir = '';
let n = 0;
const fresh = (name: string) => join(dir, `${n++}-${name}`);

test.before(async () => {
  dir = await mkdtemp(join(tmpdir(), 'tandem-boot-uboot-'));
});
test.after.always(async () => {
  await rm(dir, { recursive: true, force: true });
});

/** Tests of the real libubootenv tools (test/helpers/tool-test.ts). */
const toolTest = (title: string, fn: (t: ExecutionContext) => Promise<void>): void => withTool(test, title, { commands: ['fw_printenv', 'fw_setenv'], packages: 'libubootenv-tool' }, fn);

const vars = (o: Record<string, string>) => new Map(Object.entries(o));

/** A fw_env.config for `copies` (given to the tools with -c), as in BOOTLOADERS.md §3. */
async function fwConfig(copies: UBootEnvCopyConfig[]): Promise<string> {
  const cfg = fresh('fw_env.config');
  await writeFile(cfg, copies.map((c) => `${c.path} 0x${(c.offset ?? 0).toString(16)} 0x${SIZE.toString(16)}\n`).join(''));
  return cfg;
}
async function fwPrintenv(cfg: string): Promise<Map<string, string>> {
  const { stdout } = await run('fw_printenv', ['-c', cfg]);
  return new Map(stdout.split('\n').filter(Boolean).map((line) => [line.slice(0, line.indexOf('=')), line.slice(line.indexOf('=') + 1)]));
}
const fwSetenv = (cfg: string, ...args: string[]) => run('fw_setenv', ['-c', cfg, ...args]);
const sorted = (m: ReadonlyMap<string, string>) => [...m].sort(([a], [b]) => (a < b ? -1 : 1));

test('codec: single copy layout: LE CRC over data and padding, sorted NUL-separated pairs, double NUL, 0xff pad', (t) => {
  const image = serializeUBootEnv(vars({ b: '2', a: 'x=y' }));
  t.is(image.length, SIZE);
  t.is(image.readUInt32LE(0), crc32(image.subarray(4)));
  t.deepEqual(image.subarray(4, 16), Buffer.from('a=x=y\0b=2\0\0\xff', 'latin1'));
  t.deepEqual([...parseUBootEnvCopy(image).vars], [
    ['a', 'x=y'],
    ['b', '2'],
  ]);
});

test('codec: redundant copy has the flags byte outside the CRC', (t) => {
  const image = serializeUBootEnv(vars({ k: 'v' }), { redundant: true, flags: 7, size: 0x100 });
  t.is(image[4], 7);
  t.is(image.readUInt32LE(0), crc32(image.subarray(5)));
  image[4] = 9; // still valid: flags are not covered
  t.deepEqual(parseUBootEnvCopy(image, { redundant: true, size: 0x100 }), { vars: vars({ k: 'v' }), flags: 9 });
});

test('codec: refuses a bad CRC, a wrong size, unterminated data; skips entries without "="', (t) => {
  const image = serializeUBootEnv(vars({ a: '1' }), { size: 64 });
  const flipped = Buffer.from(image);
  flipped.writeUInt8(flipped.readUInt8(40) ^ 1, 40);
  t.true(isTandemError(t.throws(() => parseUBootEnvCopy(flipped, { size: 64 })), 'ERR_BOOTENV_CORRUPT'));
  t.true(isTandemError(t.throws(() => parseUBootEnvCopy(image, { size: 128 })), 'ERR_BOOTENV_CORRUPT'));
  const unterminated = Buffer.alloc(16, 0x61);
  unterminated.writeUInt32LE(crc32(unterminated.subarray(4)), 0);
  t.true(isTandemError(t.throws(() => parseUBootEnvCopy(unterminated, { size: 16 })), 'ERR_BOOTENV_CORRUPT'));
  const odd = Buffer.alloc(32);
  odd.write('junk\0=noname\0k=v\0\0', 4, 'latin1');
  odd.writeUInt32LE(crc32(odd.subarray(4)), 0);
  t.deepEqual([...parseUBootEnvCopy(odd, { size: 32 }).vars], [['k', 'v']]);
});

test('codec: refuses what does not fit or cannot be stored', (t) => {
  t.notThrows(() => serializeUBootEnv(vars({ k: 'x'.repeat(16 - 4 - 4) }), { size: 16 })); // "k=…\0" + final NUL fills it exactly
  t.true(isTandemError(t.throws(() => serializeUBootEnv(vars({ k: 'x'.repeat(16 - 4 - 3) }), { size: 16 })), 'ERR_BOOTENV_TOO_LARGE'));
  for (const [name, value] of [['', 'v'], ['a=b', 'v'], ['n\0', 'v'], ['k', 'nul\0'], ['k', '\u20ac']]) {
    t.true(isTandemError(t.throws(() => serializeUBootEnv(new Map([[name!, value!]]))), 'ERR_BOOTENV_INVALID'), JSON.stringify(name));
  }
});

test('codec: redundant selection follows libubootenv (newer flags, 0 after 255, bad CRC skipped)', (t) => {
  const copy = (value: string, flags: number) => serializeUBootEnv(vars({ v: value }), { redundant: true, flags });
  const pick = (a: Buffer | null, b: Buffer | null) => {
    const env = parseUBootEnv([a, b]);
    return `${env.vars.get('v')}/${env.current}/${env.flags}`;
  };
  t.is(pick(copy('old', 1), copy('new', 2)), 'new/1/2');
  t.is(pick(copy('new', 2), copy('old', 1)), 'new/0/2');
  t.is(pick(copy('old', 255), copy('new', 0)), 'new/1/0');
  t.is(pick(copy('new', 0), copy('old', 255)), 'new/0/0');
  t.is(pick(copy('zero', 4), copy('one', 4)), 'zero/0/4', 'equal flags: copy 0');
  const broken = copy('newest', 9);
  broken.writeUInt8(broken.readUInt8(100) ^ 0xff, 100);
  t.is(pick(copy('old', 3), broken), 'old/0/3');
  t.is(pick(null, copy('only', 5)), 'only/1/5');
  t.true(isTandemError(t.throws(() => parseUBootEnv([broken, null])), 'ERR_BOOTENV_CORRUPT'));
});

test('codec: a redundant write goes to the other copy with flags + 1, wrapping; a fresh env gets both copies', (t) => {
  const v = vars({ a: '1' });
  const plan = (previous: { current: 0 | 1; flags: number } | undefined, redundant = true) =>
    planUBootEnvWrite(v, previous, { redundant }).map(({ copy, image }) => [copy, redundant ? image[4] : undefined]);
  t.deepEqual(plan({ current: 0, flags: 1 }), [[1, 2]]);
  t.deepEqual(plan({ current: 1, flags: 255 }), [[0, 0]]);
  t.deepEqual(plan(undefined), [
    [1, 1],
    [0, 0],
  ]);
  t.deepEqual(plan(undefined, false), [[0, undefined]]);
  const [first, second] = planUBootEnvWrite(v, undefined, { redundant: true });
  t.is(parseUBootEnv([second?.image ?? null, first?.image ?? null]).current, 1);
});

toolTest('fw_printenv reads a single-copy env the backend created, and we read what fw_setenv wrote', async (t) => {
  const path = fresh('uboot.env');
  const cfg = await fwConfig([{ path }]);
  const bc = createBootControl({ kind: 'uboot', copies: [{ path }] });
  await bc.setTrial('B', 3);
  t.deepEqual(sorted(await fwPrintenv(cfg)), [
    ['TANDEM_ACTIVE', 'B'],
    ['TANDEM_B_GOOD', '0'],
    ['TANDEM_TRIAL', '1'],
    ['TANDEM_TRIES', '3'],
  ]);
  await fwSetenv(cfg, 'TANDEM_TRIES', '1');
  await fwSetenv(cfg, 'bootdelay', '0');
  const batch = fresh('batch.txt');
  await writeFile(batch, 'TANDEM_A_GOOD=1\nTANDEM_BOOTED=B\n');
  await fwSetenv(cfg, '-s', batch);
  t.deepEqual(await bc.read(), { active: 'B', booted: 'B', trial: true, triesLeft: 1, good: { A: true, B: false } });
  await bc.markGood('B');
  const after = await fwPrintenv(cfg);
  t.is(after.get('bootdelay'), '0', 'unrelated variables survive our write');
  t.is(after.get('TANDEM_B_GOOD'), '1');
  t.is(after.get('TANDEM_TRIAL'), '0');
});

toolTest('redundant copies in two files: writes alternate with fw_setenv, flags climb, both sides agree', async (t) => {
  const copies = [{ path: fresh('env0.bin') }, { path: fresh('env1.bin') }];
  const cfg = await fwConfig(copies);
  const bc = createBootControl({ kind: 'uboot', copies });
  await bc.setTrial('B', 2); // nothing readable yet: both copies written, copy 1 current
  const flagsOf = async () => Promise.all(copies.map(async (c) => (await readFile(c.path))[4]));
  t.deepEqual(await flagsOf(), [0, 1]);
  t.is((await fwPrintenv(cfg)).get('TANDEM_TRIES'), '2');
  await fwSetenv(cfg, 'TANDEM_TRIES', '1'); // libubootenv writes copy 0 with flags 2
  t.deepEqual(await flagsOf(), [2, 1]);
  t.is((await bc.read()).triesLeft, 1);
  await bc.markGood('B'); // we write copy 1 with flags 3
  t.deepEqual(await flagsOf(), [2, 3]);
  t.like(Object.fromEntries(await fwPrintenv(cfg)), { TANDEM_B_GOOD: '1', TANDEM_TRIAL: '0' });
  await fwSetenv(cfg, 'extra', 'yes');
  t.deepEqual(await flagsOf(), [4, 3]);
  t.deepEqual(await bc.read(), { active: 'B', trial: false, triesLeft: 0, good: { A: false, B: true } });
});

toolTest('redundant copies at two offsets of one device: 0 beats 255, and a bad current copy falls back', async (t) => {
  const path = fresh('flash.img');
  const copies = [{ path }, { path, offset: SIZE }];
  const cfg = await fwConfig(copies);
  const image = (flags: number, active: string) => serializeUBootEnv(vars({ TANDEM_ACTIVE: active }), { redundant: true, flags });
  await writeFile(path, Buffer.concat([image(255, 'A'), image(0, 'B')]));
  t.is((await fwPrintenv(cfg)).get('TANDEM_ACTIVE'), 'B');
  const bc = createBootControl({ kind: 'uboot', copies });
  t.is((await bc.read()).active, 'B');

  // Break the newer copy: both sides fall back to the older one.
  const flash = await readFile(path);
  flash.writeUInt8(flash.readUInt8(SIZE + 100) ^ 0xff, SIZE + 100);
  await writeFile(path, flash);
  t.is((await fwPrintenv(cfg)).get('TANDEM_ACTIVE'), 'A');
  t.is((await bc.read()).active, 'A');
  // Our next write repairs the broken copy (the one not current) with flags 255 + 1 = 0.
  await bc.markBad('A');
  t.is((await readFile(path))[SIZE + 4], 0);
  t.is((await fwPrintenv(cfg)).get('TANDEM_ACTIVE'), 'B');
});

toolTest('single copy with a bad CRC: fw_printenv refuses it, we report it, our next write repairs it', async (t) => {
  const path = fresh('uboot.env');
  const cfg = await fwConfig([{ path }]);
  await writeFile(path, Buffer.alloc(SIZE));
  const refused = await t.throwsAsync(fwPrintenv(cfg));
  t.is((refused as Error & { code?: number }).code, 243);
  const bc = createBootControl({ kind: 'uboot', copies: [{ path }] });
  const err = await t.throwsAsync(bc.read());
  t.true(isTandemError(err, 'ERR_BOOTENV_CORRUPT'));
  t.regex(err?.message ?? '', /^uboot: No valid U-Boot environment copy/);
  await bc.markGood('A');
  t.deepEqual(sorted(await fwPrintenv(cfg)), [
    ['TANDEM_ACTIVE', 'A'],
    ['TANDEM_A_GOOD', '1'],
    ['TANDEM_TRIAL', '0'],
    ['TANDEM_TRIES', '0'],
  ]);
});

test('backend: no env file at all is ERR_BOOTENV_MISSING; a bad copy count is ERR_BOOTENV_CONFIG', async (t) => {
  const bc = createBootControl({ kind: 'uboot', copies: [{ path: fresh('none0') }, { path: fresh('none1') }] });
  const err = await t.throwsAsync(bc.read());
  t.true(isTandemError(err, 'ERR_BOOTENV_MISSING'));
  t.regex(err?.message ?? '', /^uboot: /);
  const cfgErr = t.throws(() => createBootControl({ kind: 'uboot', copies: [] }));
  t.true(isTandemError(cfgErr, 'ERR_BOOTENV_CONFIG'));
  t.regex(cfgErr?.message ?? '', /^uboot: /);
});
