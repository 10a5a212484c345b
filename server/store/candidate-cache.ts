/**
 * The releases, rollouts and payloads a check-in reads, per (product, channel,
 * board), kept in memory between admin writes. Every check-in needs them and
 * they change only when a release manager (or an auto-halt, or a delta job)
 * writes, so reading them from the database on each check-in was most of its
 * database time and copied every manifest blob each time.
 *
 * The store that owns the tables calls `invalidate()` in each write to them,
 * so a cached answer is never older than the last write through the store;
 * with several server processes on one database (PostgreSQL), each would need
 * to hear of the others' writes (LISTEN/NOTIFY) before this is correct there.
 * Entries are frozen, since every check-in shares them, and bounded in number,
 * since the channel comes from the device.
 */
import type { ReleaseCandidate } from './store.ts';

export class CandidateCache {
  private readonly entries = new Map<string, readonly ReleaseCandidate[]>();
  /** Bumped by each invalidation, so a load that raced with a write is not cached. */
  private generation = 0;

  constructor(private readonly maxEntries = 1024) {}

  async get(product: string, channel: string, board: string, load: () => Promise<ReleaseCandidate[]>): Promise<readonly ReleaseCandidate[]> {
    const key = `${product}\n${channel}\n${board}`;
    const hit = this.entries.get(key);
    if (hit) return hit;
    const generation = this.generation;
    const loaded = deepFreeze(await load());
    if (generation === this.generation) {
      // Oldest first out: enough to bound memory against a device cycling through made-up channel names.
      if (this.entries.size >= this.maxEntries) this.entries.delete(this.entries.keys().next().value!);
      this.entries.set(key, loaded);
    }
    return loaded;
  }

  invalidate(): void {
    this.generation++;
    this.entries.clear();
  }
}

function deepFreeze(candidates: ReleaseCandidate[]): readonly ReleaseCandidate[] {
  for (const c of candidates) {
    Object.freeze(c.release);
    Object.freeze(c.rollout);
    // A Buffer cannot be frozen; the record holding it can.
    for (const p of c.payloads) Object.freeze(p);
    Object.freeze(c.payloads);
    Object.freeze(c);
  }
  return Object.freeze(candidates);
}
