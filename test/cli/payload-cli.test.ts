/**
 * The `tandem keys` and `tandem payload` command lines, spawned as a user runs
 * them: exit codes, --json output, and the error shape on failure.
 */
import test from 'ava';
import { execFile } from 'node:child_process';
import { randomBytes } from 'node:crypto';
import { mkdtemp, readFile, rm, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join, resolve } from 'node:path';

const TANDEM = resolve('bin/tandem.js');
let dir = '';

interface Run {
  code: number;
  stdout: string;
  stderr: string;
}

function tandem(...args: string[]): Promise<Run> {
  return new Promise((done) => {
    execFile(process.execPath, [TANDEM, ...args], { cwd: dir, timeout: 60_000 }, (err, stdout, stderr) => {
      done({ code: err ? ((err as { code?: number }).code ?? 1) : 0, stdout, stderr });
    });
  });
}

test.before(async () => {
  dir = await mkdtemp(join(tmpdir(), 'tandem-cli-'));
  const old = Buffer.alloc(3 * 1024 * 1024);
  randomBytes(600_000).copy(old, 4096);
  const next = Buffer.from(old);
  randomBytes(20_000).copy(next, 100_000);
  await writeFile(join(dir, 'old.img'), old);
  await writeFile(join(dir, 'new.img'), next);
});

test.after.always(async () => {
  if (dir) await rm(dir, { recursive: true, force: true });
});

test.serial('keys generate, then payload create, inspect, verify and apply a delta', async (t) => {
  const keys = await tandem('keys', 'generate', '--out', 'keys', '--json');
  t.is(keys.code, 0, keys.stderr);
  t.truthy(JSON.parse(keys.stdout).rootPub);

  const again = await tandem('keys', 'generate', '--out', 'keys');
  t.is(again.code, 64, 'refuses to overwrite keys: a usage error');
  t.regex(again.stderr, /^error ERR_INVALID_ARGUMENT: .*already exists/);

  const created = await tandem('payload', 'create', '--image', 'new.img', '--source', 'old.img', '--source-version', '1.0.0', '--version', '1.1.0', '--board', 'qemu-x86_64', '--key', 'keys/release.key', '--keyring', 'keys/keyring.json', '--out', 'delta.tpl', '--level', '3', '--json');
  t.is(created.code, 0, created.stderr);
  const summary = JSON.parse(created.stdout);
  t.is(summary.kind, 'delta');
  t.regex(summary.sha256, /^[0-9a-f]{64}$/);

  const inspected = await tandem('payload', 'inspect', 'delta.tpl', '--json');
  t.is(inspected.code, 0, inspected.stderr);
  t.like(JSON.parse(inspected.stdout), { kind: 'delta', version: '1.1.0', board: 'qemu-x86_64', source: { version: '1.0.0' } });

  const verified = await tandem('payload', 'verify', 'delta.tpl', '--root', 'keys/root.pub', '--json');
  t.is(verified.code, 0, verified.stderr);
  t.true(JSON.parse(verified.stdout).verified);

  const applied = await tandem('payload', 'apply', 'delta.tpl', '--target', 'slot.img', '--source', 'old.img', '--root', 'keys/root.pub', '--json');
  t.is(applied.code, 0, applied.stderr);
  t.true((await readFile(join(dir, 'slot.img'))).equals(await readFile(join(dir, 'new.img'))));
});

test.serial('refusals exit 65 with a stable code: wrong root key, target is the source, corrupted payload', async (t) => {
  const wrongRoot = await tandem('payload', 'verify', 'delta.tpl', '--root', 'keys/release.pub', '--json');
  t.is(wrongRoot.code, 65);
  t.is(JSON.parse(wrongRoot.stderr).error.code, 'ERR_KEYRING_UNTRUSTED');

  const onSource = await tandem('payload', 'apply', 'delta.tpl', '--target', 'old.img', '--source', 'old.img', '--root', 'keys/root.pub');
  t.is(onSource.code, 65);
  t.regex(onSource.stderr, /ERR_TARGET_IS_SOURCE/);

  const payload = await readFile(join(dir, 'delta.tpl'));
  payload[payload.length - 10]! ^= 0x40;
  await writeFile(join(dir, 'corrupt.tpl'), payload);
  const before = await readFile(join(dir, 'slot.img'));
  const corrupt = await tandem('payload', 'apply', 'corrupt.tpl', '--target', 'slot2.img', '--source', 'old.img', '--root', 'keys/root.pub', '--json');
  t.is(corrupt.code, 65);
  t.is(JSON.parse(corrupt.stderr).error.code, 'ERR_BLOB_HASH');
  t.true((await readFile(join(dir, 'slot.img'))).equals(before));
});

test.serial('usage errors exit 64; a missing file exits 74', async (t) => {
  const usage = await tandem('payload', 'create', '--image', 'new.img');
  t.is(usage.code, 64);
  t.regex(usage.stderr, /Missing required option/);
  const unknown = await tandem('payload', 'frobnicate');
  t.is(unknown.code, 64);
  const missing = await tandem('payload', 'inspect', 'nope.tpl');
  t.is(missing.code, 74);
  t.regex(missing.stderr, /ERR_IO/);
});
