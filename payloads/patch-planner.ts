/**
 * Which literal runs of a delta become PATCH operations, and against which
 * source bytes: bytes that changed in place (a config file, the dpkg
 * database, directories whose entries got new inode numbers, filesystem
 * metadata) compress far better against the source bytes they replaced.
 *
 * Two candidate dictionaries per run, the smaller encoding wins:
 * - the gap: fresh-mkfs images move files but mostly keep their order, so the
 *   old version of a changed run often lies in the source right after the
 *   extent the previous SOURCE_COPY ended at, up to where the next one starts;
 * - the look-alikes: for each block, the source block sharing most of its
 *   resemblance sketch (block-sketch.ts), with a block either side, wherever
 *   it lies: for images whose files do not keep their order (on the fixture
 *   pair, which does, the gap finds nearly everything: they save 0.8 KB).
 *
 * A run becomes PATCH only when its dictionary shrinks it by 30 % on its own
 * (a REPLACE run also gains from the runs around it in its long frame;
 * measured on the fixture pair, 20 % or 40 % make larger deltas).
 * PATCH operations are grouped into blobs of ≤ 2 MiB output with ≤ 2 MiB of
 * merged dictionary in ≤ 512 extents (the decoder's limits), runs whose
 * dictionaries lie close together in the same group, and applied after every
 * REPLACE, so the REPLACE stream stays one long frame.
 */
import { createHash } from 'node:crypto';
import { MANIFEST_LIMITS, type Extent } from '../shared/schemas/manifest.ts';
import { SKETCH_FEATURES, type SketchIndex } from './block-sketch.ts';
import { BLOCK_SIZE, MAX_DICT_SIZE, MAX_DICT_WINDOW_LOG, MAX_OPERATION_SIZE, MAX_WINDOW_LOG } from './format.ts';
import type { Encoder } from './zstd.ts';

/** Literal bytes for one target extent, waiting for a blob. */
export interface LiteralOp {
  dst: Extent;
  bytes: Buffer;
}

export interface Candidate extends LiteralOp {
  /** End of the source extent the last SOURCE_COPY before this operation read (-1: none). */
  prevSourceEnd: number;
  /** Start of the first SOURCE_COPY after it, once known. */
  nextSourceStart?: number;
  /** Resemblance sketch of each full block (block-sketch.ts). */
  sketch: Uint32Array;
}

/** Target extents of PATCH runs (their bytes are read back from the image when encoded) and their merged dictionary. */
export interface PatchGroup {
  runs: Extent[];
  dict: Extent[];
}

const MAX_CANDIDATE = MAX_OPERATION_SIZE;
const MAX_DICT_PER_OP = 2 * 1024 * 1024;
const MAX_GROUP_RAW = 2 * 1024 * 1024;
/** Extents of one run's look-alike dictionary: half of a blob's, so a group holds several runs. */
const MAX_OP_DICT_EXTENTS = MANIFEST_LIMITS.maxDictExtents / 2;

export function gapDict(candidate: Candidate, sourceSize: number): Extent | undefined {
  const start = candidate.prevSourceEnd;
  if (start < 0 || start >= sourceSize) return undefined;
  const next = candidate.nextSourceStart;
  let end = next !== undefined && next > start && next - start <= MAX_DICT_PER_OP ? next : start + Math.min(MAX_DICT_PER_OP, Math.max(256 * 1024, 4 * candidate.bytes.length));
  end = Math.min(end, sourceSize);
  return end > start ? [start, end - start] : undefined;
}

/**
 * The source blocks most like the run's blocks, each with its neighbours (a
 * changed file shifts its content by less than a block either way), as
 * sorted extents within the per-run limits; the matches themselves come first.
 */
export function lookAlikeDict(matches: Int32Array, sourceSize: number): Extent[] | undefined {
  const sourceBlocks = Math.floor(sourceSize / BLOCK_SIZE);
  const chosen = new Set<number>();
  const limit = MAX_DICT_PER_OP / BLOCK_SIZE;
  for (const ring of [0, -1, 1]) {
    for (const m of matches) {
      const b = m + ring;
      if (m < 0 || b < 0 || b >= sourceBlocks || chosen.has(b)) continue;
      if (chosen.size >= limit) break;
      chosen.add(b);
    }
  }
  if (chosen.size === 0) return undefined;
  const extents: Extent[] = [];
  for (const b of [...chosen].sort((x, y) => x - y)) {
    const last = extents[extents.length - 1];
    if (last && last[0] + last[1] === b * BLOCK_SIZE) last[1] += BLOCK_SIZE;
    else if (extents.length < MAX_OP_DICT_EXTENTS) extents.push([b * BLOCK_SIZE, BLOCK_SIZE]);
  }
  return extents;
}

/** Merges extents into sorted, non-overlapping ones. */
export function mergeExtents(extents: readonly Extent[]): Extent[] {
  const sorted = [...extents].sort((a, b) => a[0] - b[0]);
  const out: Extent[] = [];
  for (const [offset, length] of sorted) {
    const last = out[out.length - 1];
    if (last && offset <= last[0] + last[1]) last[1] = Math.max(last[1], offset + length - last[0]);
    else out.push([offset, length]);
  }
  return out;
}

export class PatchPlanner {
  /** PATCH runs by target extent only, so memory does not grow with the bytes patched. */
  readonly patched: { dst: Extent; dict: Extent[] }[] = [];

  constructor(
    private readonly encoder: Encoder,
    private readonly readSource: (extents: readonly Extent[]) => Promise<Buffer>,
    private readonly sourceSize: number,
    private readonly sketches?: SketchIndex,
  ) {}

  /** Decides a batch (two runs at a time); returns the runs that stay REPLACE, in order. */
  async decide(batch: readonly Candidate[]): Promise<Candidate[]> {
    const verdicts = new Array<Extent[] | undefined>(batch.length);
    let next = 0;
    const worker = async (): Promise<void> => {
      for (let i = next++; i < batch.length; i = next++) verdicts[i] = await this.judge(batch[i]!);
    };
    await Promise.all([worker(), worker()]);
    const keep: Candidate[] = [];
    batch.forEach((candidate, i) => {
      const dict = verdicts[i];
      if (dict) this.patched.push({ dst: candidate.dst, dict });
      else keep.push(candidate);
    });
    return keep;
  }

  /** The candidate dictionaries worth an encoding: those the sketches say hold look-alike bytes. */
  private dictionaries(candidate: Candidate): Extent[][] {
    const dicts: Extent[][] = [];
    const gap = gapDict(candidate, this.sourceSize);
    const sketches = this.sketches;
    if (!sketches || candidate.sketch.length < SKETCH_FEATURES) {
      if (gap) dicts.push([gap]);
      return dicts;
    }
    // Measured on the fixture pair (731 runs): the gap is tried only when some block shares a
    // feature with a block in it, the look-alikes only when some block shares two with its match;
    // 42 % fewer encodings for 1 % less gain.
    if (gap && sketches.anyWithin(candidate.sketch, Math.floor(gap[0] / BLOCK_SIZE), Math.ceil((gap[0] + gap[1]) / BLOCK_SIZE))) dicts.push([gap]);
    const votes = new Uint8Array(candidate.sketch.length / SKETCH_FEATURES);
    const matches = sketches.bestMatches(candidate.sketch, votes);
    if (votes.some((v) => v >= 2)) {
      const lookAlike = lookAlikeDict(matches, this.sourceSize);
      if (lookAlike) dicts.push(lookAlike);
    }
    return dicts;
  }

  private async judge(candidate: Candidate): Promise<Extent[] | undefined> {
    if (candidate.bytes.length > MAX_CANDIDATE) return undefined;
    const dicts = this.dictionaries(candidate);
    if (dicts.length === 0) return undefined;
    const [plain, ...patched] = await Promise.all([
      this.encoder.encode(candidate.bytes, { windowLog: MAX_WINDOW_LOG }),
      ...dicts.map(async (extents) => this.encoder.encode(candidate.bytes, { windowLog: MAX_DICT_WINDOW_LOG, dict: await this.readSource(extents) })),
    ]);
    let best = 0;
    patched.forEach((p, i) => {
      if (p.length < patched[best]!.length) best = i;
    });
    const size = patched[best]!.length;
    return size <= 0.7 * plain!.length && plain!.length - size >= 256 ? dicts[best] : undefined;
  }

  /** PATCH operations grouped within the decoder's dictionary and window limits. */
  groups(): PatchGroup[] {
    // Runs whose dictionaries lie close together share a group, and with it one merged dictionary.
    const ordered = [...this.patched].sort((a, b) => a.dict[0]![0] - b.dict[0]![0]);
    const groups: PatchGroup[] = [];
    let current: PatchGroup | undefined;
    let raw = 0;
    for (const { dst, dict } of ordered) {
      const merged = current ? mergeExtents([...current.dict, ...dict]) : dict;
      const dictSize = merged.reduce((n, [, l]) => n + l, 0);
      if (!current || raw + dst[1] > MAX_GROUP_RAW || dictSize > MAX_DICT_SIZE || merged.length > MANIFEST_LIMITS.maxDictExtents) {
        current = { runs: [], dict: mergeExtents(dict) };
        groups.push(current);
        raw = 0;
      } else {
        current.dict = merged;
      }
      current.runs.push(dst);
      raw += dst[1];
    }
    return groups;
  }
}

export function sha256Of(bytes: Uint8Array): string {
  return createHash('sha256').update(bytes).digest('hex');
}
