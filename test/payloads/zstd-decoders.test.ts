/**
 * The two blob decoders: node:zlib's zstd where the runtime has it with
 * dictionaries (Node 24; CI runs the suite on it too), zstd-codec everywhere
 * else. Where both exist they must agree on every frame, byte for byte and
 * error for error, fed through FrameStream as the reader feeds them.
 */
import test from 'ava';
import { createHash } from 'node:crypto';
import { isTandemError } from '../../shared/errors.ts';
import { createEncoder, FrameStream, loadZstdDecoder, type ZstdDecoder } from '../../payloads/zstd.ts';
import { Prng } from './random-images.ts';

const major = Number(process.versions.node.split('.')[0]);
/** Node 24 has zstd in node:zlib with dictionaries; Node 20 has no zstd there. */
const NATIVE_EXPECTED = major >= 24;
const WINDOW = 2 ** 23;

test('the agent decodes with node:zlib where the runtime has zstd with dictionaries, else with zstd-codec', async (t) => {
  const auto = await loadZstdDecoder();
  t.log(`Node ${process.versions.node}: ${auto.name}`);
  if (NATIVE_EXPECTED) {
    t.is(auto.name, 'node:zlib');
    t.false(auto.freshOutput);
  } else if (major < 22) {
    t.is(auto.name, 'zstd-codec');
    const err = await t.throwsAsync(loadZstdDecoder('native'));
    t.true(isTandemError(err, 'ERR_DECODER'), String(err));
  }
  t.is((await loadZstdDecoder('wasm')).name, 'zstd-codec');
});

/** Text-like data with repeats, noise, and a run of zeros: what blobs carry. */
function sampleData(rng: Prng, size: number): Buffer {
  const out = Buffer.alloc(size);
  const words = ['systemd', 'lib', 'x86_64-linux-gnu', '\n', 'tandem', '\0\0\0\0'];
  for (let at = 0; at < size; ) {
    if (rng.int(8) === 0) {
      const n = Math.min(size - at, rng.range(1, 5000));
      for (let i = 0; i < n; i++) out[at + i] = rng.int(256);
      at += n;
    } else if (rng.int(16) === 0) {
      at += rng.range(1, 20000);
    } else {
      at += out.write(rng.pick(words), at);
    }
  }
  return out;
}

/** What FrameStream makes of a frame: the decoded bytes' sha256 taken in pieces of `piece`, or the error code. */
function decode(zstd: ZstdDecoder, frame: Buffer, rawSize: number, piece: number, dict?: Buffer): string {
  try {
    const stream = new FrameStream(zstd, frame, { rawSize, maxWindowSize: WINDOW }, dict);
    const hash = createHash('sha256');
    const into = Buffer.alloc(piece);
    for (let done = 0; done < rawSize; done += piece) hash.update(stream.take(Math.min(piece, rawSize - done), into));
    stream.finish();
    return hash.digest('hex');
  } catch (err) {
    return isTandemError(err) ? err.code : `crash: ${String(err)}`;
  }
}

const both = NATIVE_EXPECTED ? test : test.skip;

both('node:zlib and zstd-codec decode every frame alike: plain, with a dictionary, corrupted, truncated, longer or shorter than declared', async (t) => {
  const native = await loadZstdDecoder('native');
  const wasm = await loadZstdDecoder('wasm');
  const encoder = await createEncoder({ level: 19 });
  const rng = new Prng(0x5eed);
  let cases = 0;
  for (let round = 0; round < 12; round++) {
    const raw = sampleData(rng, rng.pick([1, 4096, 100_000, 2 * 1024 * 1024 + 17]));
    const dict = round % 2 === 1 ? sampleData(rng, 300_000) : undefined;
    if (dict) dict.set(raw.subarray(0, Math.min(raw.length, 50_000)), 1000); // something to refer to
    const frame = await encoder.encode(raw, { windowLog: 22, dict });
    const expected = createHash('sha256').update(raw).digest('hex');
    const variants: [string, Buffer, number, Buffer | undefined][] = [
      ['as made', frame, raw.length, dict],
      ['declared one byte longer', frame, raw.length + 1, dict],
      ['declared one byte shorter', frame, raw.length - 1, dict],
      ['truncated', frame.subarray(0, frame.length - 1 - rng.int(Math.min(frame.length - 1, 40))), raw.length, dict],
    ];
    const flipped = Buffer.from(frame);
    flipped[rng.range(6, frame.length - 1)]! ^= 1 << rng.int(8);
    variants.push(['a bit flipped', flipped, raw.length, dict]);
    if (dict) variants.push(['another dictionary', frame, raw.length, Buffer.from(dict).fill(7, 0, 60_000)]);
    for (const [what, bytes, rawSize, withDict] of variants) {
      const piece = rng.pick([1 + rng.int(5000), 65_536, 2 * 1024 * 1024]);
      const a = decode(native, bytes, rawSize, piece, withDict);
      const b = decode(wasm, bytes, rawSize, piece, withDict);
      t.is(a, b, `round ${round}, ${raw.length} bytes${dict ? ' with a dictionary' : ''}, ${what}`);
      if (what === 'as made') t.is(a, expected, `round ${round}: decodes to what was encoded`);
      // A flipped bit or another dictionary may still decode (the checksum, if any, or the operation hashes catch it).
      else if (what.startsWith('declared') || what === 'truncated') t.true(a.startsWith('ERR_'), `round ${round}, ${what}: ${a}`);
      cases++;
    }
  }
  t.log(`${cases} frames decoded alike`);
});
