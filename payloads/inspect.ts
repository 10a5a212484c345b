/**
 * Read-only views of a payload: `inspect` describes it without trusting it,
 * `verify` checks the whole trust chain and every blob and decoded operation
 * without writing anything (copy operations need a slot and are checked at apply).
 */
import { constants, open } from 'node:fs/promises';
import type { Extent, Manifest, ManifestHeader, OperationKind } from '../shared/schemas/manifest.ts';
import { ByteReader } from './byte-reader.ts';
import { extentsLength } from './manifest-check.ts';
import { materializeManifest, OPERATION_KINDS, type ManifestView } from './operation-table.ts';
import { parsePreludeManifest, readOperations, readPrelude, readVerifiedPrelude, type TrustOptions } from './payload-reader.ts';
import { loadZstdDecoder } from './zstd.ts';

export interface PayloadSummary {
  kind: ManifestHeader['kind'];
  product: string;
  board: string;
  version: string;
  source?: ManifestHeader['source'];
  target: ManifestHeader['target'];
  createdAt: string;
  preludeSize: number;
  manifestSize: number;
  dataSize: number;
  blobs: number;
  operations: Record<OperationKind, { count: number; bytes: number }>;
  signatures: string[];
  keyringVersion: number;
}

export function summarize(manifest: ManifestView, preludeSize: number, manifestSize: number, signatures: string[], keyringVersion: number): PayloadSummary {
  const operations = Object.fromEntries(OPERATION_KINDS.map((k) => [k, { count: 0, bytes: 0 }])) as PayloadSummary['operations'];
  const table = manifest.operations;
  for (let i = 0; i < table.length; i++) {
    const kind = operations[table.kind(i)];
    kind.count++;
    kind.bytes += table.outputLength(i);
  }
  return {
    kind: manifest.kind,
    product: manifest.product,
    board: manifest.board,
    version: manifest.version,
    ...(manifest.source ? { source: manifest.source } : {}),
    target: manifest.target,
    createdAt: manifest.createdAt,
    preludeSize,
    manifestSize,
    dataSize: manifest.dataSize,
    blobs: manifest.blobs.length,
    operations,
    signatures,
    keyringVersion,
  };
}

/** Describes a payload from its prelude alone; nothing here is verified. The manifest comes back in its plain form, for output. */
export async function inspectPayload(stream: AsyncIterable<Uint8Array>): Promise<{ summary: PayloadSummary; manifest: Manifest }> {
  const reader = new ByteReader(stream);
  try {
    const prelude = await readPrelude(reader);
    const manifest = parsePreludeManifest(prelude, await loadZstdDecoder());
    const keyring = prelude.signatureBlock.keyring as { signed?: { version?: number } };
    const summary = summarize(manifest, prelude.raw.length, prelude.header.manifestRawLength, prelude.signatureBlock.signatures.map((s) => s.keyId), keyring.signed?.version ?? 0);
    return { summary, manifest: materializeManifest(manifest) };
  } finally {
    await reader.close();
  }
}

export interface VerifyOptions extends TrustOptions {
  /** Source slot, needed to decode PATCH blobs of a delta. */
  source?: string;
  onProgress?: (done: number, total: number) => void;
  signal?: AbortSignal;
}

/** Verifies signatures, then reads every blob and checks every hash it can without a slot. */
export async function verifyPayload(stream: AsyncIterable<Uint8Array>, options: VerifyOptions): Promise<{ summary: PayloadSummary; keyId: string }> {
  const reader = new ByteReader(stream);
  const source = options.source ? await open(options.source, constants.O_RDONLY) : undefined;
  try {
    const verified = await readVerifiedPrelude(reader, options);
    const readSource = source
      ? async (extents: readonly Extent[]): Promise<Buffer> => {
          const out = Buffer.allocUnsafe(extentsLength(extents));
          let at = 0;
          for (const [offset, length] of extents) {
            await source.read(out, at, length, offset);
            at += length;
          }
          return out;
        }
      : undefined;
    const total = verified.manifest.target.size;
    let done = 0;
    for await (const item of readOperations(verified, reader, { ...(readSource ? { readSource } : {}), ...(options.signal ? { signal: options.signal } : {}) })) {
      done += extentsLength(item.op.dst);
      options.onProgress?.(done, total);
    }
    const { prelude, manifest } = verified;
    return {
      summary: summarize(manifest, prelude.raw.length, prelude.header.manifestRawLength, prelude.signatureBlock.signatures.map((s) => s.keyId), verified.keyring.version),
      keyId: verified.keyId,
    };
  } finally {
    await source?.close();
    await reader.close();
  }
}
