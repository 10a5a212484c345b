/**
 * The order of literal runs in a blob (payloads/literal-order.ts): always a
 * permutation, target order where no run looks like another, look-alike runs
 * next to each other however far apart they lie in the target.
 */
import test from 'ava';
import { sketchBlocks } from '../../payloads/block-sketch.ts';
import { orderBySimilarity } from '../../payloads/literal-order.ts';
import { Prng } from './random-images.ts';

function order(runs: readonly Buffer[]): number[] {
  return orderBySimilarity(
    runs.map((r) => sketchBlocks(r, 4096)),
    runs.map((r) => r.length),
  );
}

test('runs that share nothing keep target order; an empty batch is an empty order', (t) => {
  const prng = new Prng(3);
  const runs = Array.from({ length: 20 }, () => prng.bytes(4096 * prng.range(1, 3)));
  t.deepEqual(order(runs), [...runs.keys()]);
  t.deepEqual(order([]), []);
  // Runs without a full block have no sketch at all.
  t.deepEqual(order([Buffer.alloc(10, 1), Buffer.alloc(0)]), [0, 1]);
});

test('a look-alike run comes right after the run it resembles, however far apart they lie', (t) => {
  const prng = new Prng(4);
  const runs = Array.from({ length: 40 }, () => prng.bytes(8192));
  // Run 30 is run 3 with a few bytes changed (a second binary built from the same code), run 35 is run 10's.
  runs[30] = Buffer.from(runs[3]!);
  runs[30].write('other build', 1000);
  runs[35] = Buffer.from(runs[10]!);
  runs[35].write('other build', 5000);
  const got = order(runs);
  t.deepEqual([...got].sort((a, b) => a - b), [...runs.keys()]);
  t.is(got[got.indexOf(3) + 1], 30);
  t.is(got[got.indexOf(10) + 1], 35);
  // Everything else keeps its relative order.
  const rest = got.filter((i) => i !== 30 && i !== 35);
  t.deepEqual(rest, [...rest].sort((a, b) => a - b));
});
