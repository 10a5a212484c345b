/**
 * The operation table's extent pool: sectors in 32 bits while every extent
 * falls on the 512-byte grid below 2 TiB (an image's do), bytes in doubles
 * from the first extent that does not. Either way every value reads back exact.
 */
import test from 'ava';
import { OperationTable } from '../../payloads/operation-table.ts';
import type { Extent, Operation } from '../../shared/schemas/manifest.ts';

const SHA = 'ab'.repeat(32);
const TWO_TIB = 2 ** 41;

function ops(...dsts: Extent[][]): Operation[] {
  return dsts.map((dst, i) => (i % 2 === 0 ? { op: 'ZERO', dst } : { op: 'SOURCE_COPY', src: dst.map(([o, l]): Extent => [o + 4096, l]), dst, sha256: SHA }));
}

/** Bytes per extent in the pool: the table's size minus what the same operations cost with no extents at all. */
function poolBytesPerExtent(operations: Operation[]): number {
  const extents = operations.reduce((n, op) => n + op.dst.length + ('src' in op ? op.src.length : 0), 0);
  const empty = OperationTable.from(operations.map((op) => ({ ...op, dst: [], ...('src' in op ? { src: [] } : {}) }) as Operation));
  return (OperationTable.from(operations).byteLength - empty.byteLength) / extents;
}

test('extents on the 512-byte grid below 2 TiB take 8 bytes each and read back exact', (t) => {
  const operations = ops([[0, 4096], [8192, 512]], [[TWO_TIB - 2 * 4096 - 512, 512]], [[1024, TWO_TIB - 4096 - 1024]]);
  const table = OperationTable.from(operations);
  t.deepEqual([...table], operations);
  t.is(poolBytesPerExtent(operations), 8);
});

test('the first extent off the grid turns the pool into bytes; those before it stay exact', (t) => {
  const operations = ops([[0, 4096]], [[8192, 4096]], [[4097, 3]], [[12288, 4096], [65536, 512]]);
  const table = OperationTable.from(operations);
  t.deepEqual([...table], operations);
  t.is(table.offsetAt(0), 0);
  t.is(table.lengthAt(table.dstStart(2)), 3);
  t.is(poolBytesPerExtent(operations), 16);
});

test('offsets and lengths beyond 2 TiB, up to 2^53 - 1, read back exact', (t) => {
  for (const dst of [[[TWO_TIB, 512]], [[0, TWO_TIB]], [[Number.MAX_SAFE_INTEGER - 10, 10]], [[TWO_TIB - 512, TWO_TIB + 512]]] as Extent[][]) {
    const operations = ops([[0, 512]], dst);
    t.deepEqual([...OperationTable.from(operations)], operations, JSON.stringify(dst));
    t.is(poolBytesPerExtent(operations), 16);
  }
});
