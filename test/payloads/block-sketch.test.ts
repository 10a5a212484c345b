/**
 * Resemblance sketches (payloads/block-sketch.ts): a block edited in a few
 * bytes keeps most of its sketch, unrelated blocks share none, zero padding
 * counts for nothing, and the index finds a block's look-alike among many.
 */
import test from 'ava';
import { NO_FEATURE, SKETCH_FEATURES, sketchBlock, sketchBlocks, SketchIndex } from '../../payloads/block-sketch.ts';
import { Prng } from './random-images.ts';

function sketchOf(block: Uint8Array): number[] {
  const out = new Uint32Array(SKETCH_FEATURES);
  sketchBlock(block, out, 0);
  return [...out];
}

function shared(a: readonly number[], b: readonly number[]): number {
  return a.filter((f) => f !== NO_FEATURE && b.includes(f)).length;
}

test('a block edited in a few bytes shares most of its sketch; an unrelated block shares none', (t) => {
  const prng = new Prng(1);
  let editedShared = 0;
  for (let i = 0; i < 50; i++) {
    const block = prng.bytes(4096);
    const edited = Buffer.from(block);
    edited.write('edited', prng.int(4000));
    editedShared += shared(sketchOf(block), sketchOf(edited));
    t.is(shared(sketchOf(block), sketchOf(prng.bytes(4096))), 0);
  }
  // 6 changed bytes touch 13 of 4,089 shingles: nearly every feature survives.
  t.true(editedShared >= 50 * SKETCH_FEATURES * 0.9, `${editedShared} of ${50 * SKETCH_FEATURES}`);
});

test('features are sorted, distinct, and all-zero shingles give none', (t) => {
  t.deepEqual(sketchOf(Buffer.alloc(4096)), [NO_FEATURE, NO_FEATURE, NO_FEATURE, NO_FEATURE]);
  // One non-zero byte: the 8 shingles that hold it, so four features, the same wherever the zeros end.
  const one = Buffer.alloc(4096);
  one[100] = 7;
  const sketch = sketchOf(one);
  t.false(sketch.includes(NO_FEATURE));
  t.deepEqual(sketch, [...sketch].sort((a, b) => a - b));
  t.is(new Set(sketch).size, SKETCH_FEATURES);
  const padded = Buffer.alloc(4096);
  padded[3000] = 7;
  t.deepEqual(sketchOf(padded), sketch);
  // Shorter than a shingle: no feature; sketchBlocks skips a trailing partial block.
  t.deepEqual(sketchOf(Buffer.from([1, 2, 3])), [NO_FEATURE, NO_FEATURE, NO_FEATURE, NO_FEATURE]);
  t.is(sketchBlocks(Buffer.alloc(3 * 4096 + 100, 1), 4096).length, 3 * SKETCH_FEATURES);
});

test('the index finds the source block an edited block came from, and prefers the next block of a run', (t) => {
  const prng = new Prng(2);
  const source = prng.bytes(2000 * 4096);
  const index = new SketchIndex(10);
  const all = sketchBlocks(source, 4096);
  for (let b = 0; b < 2000; b++) index.add(all, b * SKETCH_FEATURES, b);
  // Three consecutive source blocks, edited, and one block seen nowhere.
  const target = Buffer.concat([source.subarray(700 * 4096, 703 * 4096), prng.bytes(4096)]);
  for (let b = 0; b < 3; b++) target.write('changed!', b * 4096 + prng.int(4000));
  const votes = new Uint8Array(4);
  t.deepEqual([...index.bestMatches(sketchBlocks(target, 4096), votes)], [700, 701, 702, -1]);
  t.true(votes[0]! >= 3 && votes[3] === 0);
  t.true(index.anyWithin(sketchBlocks(target.subarray(0, 4096), 4096), 700, 701));
  t.false(index.anyWithin(sketchBlocks(target.subarray(0, 4096), 4096), 0, 700));

  // Two identical source blocks: a tie, broken toward the block after the previous match.
  const twin = new SketchIndex(10);
  const blocks = [prng.bytes(4096), prng.bytes(4096)];
  const layout = [blocks[1]!, blocks[0]!, blocks[1]!]; // blocks 0 and 2 alike, block 1 before block 2
  const sketches = sketchBlocks(Buffer.concat(layout), 4096);
  for (let b = 0; b < 3; b++) twin.add(sketches, b * SKETCH_FEATURES, b);
  t.deepEqual([...twin.bestMatches(sketchBlocks(Buffer.concat([blocks[0]!, blocks[1]!]), 4096))], [1, 2]);
});

test('a feature held by more blocks than the postings limit is skipped, whatever the number of blocks', (t) => {
  const index = new SketchIndex(4);
  const sketch = new Uint32Array([5, 6, NO_FEATURE, NO_FEATURE]);
  for (let b = 0; b < SketchIndex.MAX_POSTINGS * 3; b++) index.add(sketch, 0, b);
  const seen: number[] = [];
  t.is(index.lookup(5, (b) => seen.push(b)), 0);
  t.deepEqual(seen, []);
  const rare = new Uint32Array([9, NO_FEATURE, NO_FEATURE, NO_FEATURE]);
  index.add(rare, 0, 77);
  t.is(index.lookup(9, (b) => seen.push(b)), 1);
  t.deepEqual(seen, [77]);
  t.is(index.lookup(NO_FEATURE, () => t.fail()), 0);
});
