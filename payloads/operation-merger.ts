/**
 * Runs of one kind merged into few operations. An operation may write many
 * target extents (FORMAT.md), and every operation but ZERO carries a sha256,
 * 32 bytes that no compressor shrinks: one operation per run made the
 * fixture delta's manifest 1,593 operations and 66.5 KB stored; merged up to
 * 2 MiB of output and 512 extents, 215 operations and about 17 KB. Merging
 * only moves writes earlier (a merged operation sits where its first run
 * would have), so it keeps every TARGET_COPY reading bytes already written as
 * long as TARGET_COPY operations come after all others (the generator puts
 * them last).
 */
import { createHash, type Hash } from 'node:crypto';
import { MANIFEST_LIMITS, type Extent, type Operation } from '../shared/schemas/manifest.ts';
import { MAX_OPERATION_SIZE } from './format.ts';

export type MergedKind = Operation['op'];

interface Open {
  op: Operation;
  hash: Hash | undefined;
  length: number;
}

/** Extents after appending `more` to `extents`, counting a contiguous first one as no new extent. */
function extentsAfter(extents: readonly Extent[], more: readonly Extent[]): number {
  if (more.length === 0) return extents.length;
  const last = extents[extents.length - 1];
  const joins = last !== undefined && last[0] + last[1] === more[0]![0];
  return extents.length + more.length - (joins ? 1 : 0);
}

function append(extents: Extent[], more: readonly Extent[]): void {
  for (const [offset, length] of more) {
    const last = extents[extents.length - 1];
    if (last && last[0] + last[1] === offset) last[1] += length;
    else extents.push([offset, length]);
  }
}

/**
 * Builds operations of one kind (and one blob, for REPLACE and PATCH) from
 * runs given in order, each writing at most `maxLength` bytes unless one run
 * alone is longer. `place` receives each operation when its first run
 * arrives; its extents and hash are completed in place until `close`.
 */
export class OperationMerger {
  private open: Open | undefined;

  constructor(
    private readonly kind: MergedKind,
    private readonly place: (op: Operation) => void,
    private readonly maxLength = MAX_OPERATION_SIZE,
  ) {}

  /** Adds a run writing `dst` (reading `src`, for copies) whose output bytes are `chunks` (none for ZERO). */
  add(dst: Extent, chunks: readonly Uint8Array[], src: readonly Extent[] = [], blob = -1): void {
    const length = dst[1];
    const open = this.open;
    const fits =
      open !== undefined &&
      open.length + length <= this.maxLength &&
      extentsAfter(open.op.dst, [dst]) <= MANIFEST_LIMITS.maxExtentsPerOperation &&
      (!('src' in open.op) || extentsAfter(open.op.src, src) <= MANIFEST_LIMITS.maxExtentsPerOperation) &&
      (!('blob' in open.op) || open.op.blob === blob);
    let target: Open;
    if (fits) {
      target = open;
    } else {
      this.close();
      target = { op: this.newOperation(blob), hash: this.kind === 'ZERO' ? undefined : createHash('sha256'), length: 0 };
      this.open = target;
      this.place(target.op);
    }
    append(target.op.dst, [dst]);
    if ('src' in target.op) append(target.op.src, src);
    for (const chunk of chunks) target.hash?.update(chunk);
    target.length += length;
  }

  /** Finishes the open operation (its hash); the next run starts a new one. */
  close(): void {
    const open = this.open;
    if (!open) return;
    this.open = undefined;
    if (open.hash && 'sha256' in open.op) open.op.sha256 = open.hash.digest('hex');
  }

  private newOperation(blob: number): Operation {
    switch (this.kind) {
      case 'ZERO':
        return { op: 'ZERO', dst: [] };
      case 'SOURCE_COPY':
      case 'TARGET_COPY':
        return { op: this.kind, src: [], dst: [], sha256: '' };
      case 'REPLACE':
      case 'PATCH':
        return { op: this.kind, blob, dst: [], sha256: '' };
    }
  }
}
