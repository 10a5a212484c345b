/**
 * Bounds the garbage that streaming leaves outside the JS heap. Socket reads
 * hand over each chunk (up to 64 KiB) in a new ArrayBuffer, and zstd-codec
 * hands over every decoded block (≤ 128 KiB) in a new ArrayBuffer too, so
 * every payload byte received and every image byte decoded becomes garbage
 * that V8 frees only when it collects the wrappers. With little JS allocation
 * going on, that waits until external memory has grown by tens of MiB
 * (measured on the agent: up to 15 MiB of dead chunks per 8 MiB blob read,
 * 30–40 MiB in all at its peak). A scavenge of the young generation after
 * every MiB streamed frees them while they are still young: ~0.3 ms per
 * scavenge (measured on the agent: 1 MiB gave 3-4 MiB less peak RSS than 2 MiB, 512 KiB no less than 1 MiB).
 */
import { setFlagsFromString } from 'node:v8';
import { runInNewContext } from 'node:vm';

export const RECLAIM_BYTES = 1024 * 1024;

type Collector = (options: { type: 'minor' | 'major'; execution: 'sync' }) => void;
let collector: Collector | null | undefined;

/**
 * V8's collector, reached without --expose-gc on the command line: the flag set
 * at run time exposes `gc` to contexts created afterwards, not to this one.
 */
function gc(): Collector | null {
  if (collector === undefined) {
    try {
      setFlagsFromString('--expose-gc');
      collector = runInNewContext('gc') as Collector;
    } catch {
      collector = null; // a runtime without it: the garbage waits for V8's own schedule
    }
  }
  return collector;
}

function collectYoungGarbage(): void {
  gc()?.({ type: 'minor', execution: 'sync' });
}

/**
 * A full collection, for a point where much just died at once: the agent calls
 * it between a check and the download, when the check response and the parse
 * of the manifest it carried (MiBs for a manifest of 0.5 M extents) are garbage
 * and the download's buffers have not been allocated yet.
 */
export function collectAllGarbage(): void {
  gc()?.({ type: 'major', execution: 'sync' });
}

// One count for the process, like the garbage it stands for: a reader and a decoder
// streaming at once together leave at most RECLAIM_BYTES behind, not twice that.
let since = 0;

/** Counts bytes streamed into new ArrayBuffers; runs a young-generation collection after every RECLAIM_BYTES of them. */
export function noteStreamedGarbage(bytes: number): void {
  since += bytes;
  if (since >= RECLAIM_BYTES) {
    since = 0;
    collectYoungGarbage();
  }
}
