/**
 * Publishing (issue 4, "Admin API and release management"): an uploaded
 * image is streamed to disk (hashed as it flows, never whole in memory), the
 * full payload is generated and signed with the release key, and a background
 * job generates deltas from the previous releases on the channel. A payload
 * made offline (`tandem payload create`) is verified end to end on upload:
 * keyring against the root, manifest signature against the server's keyring
 * too (devices verify with the keyring the server sends), and every blob hash.
 */
import { createHash, randomBytes, randomUUID } from 'node:crypto';
import { createReadStream, createWriteStream } from 'node:fs';
import { access, mkdir, open, rename, rm } from 'node:fs/promises';
import { join } from 'node:path';
import { Transform } from 'node:stream';
import { pipeline } from 'node:stream/promises';
import { TandemError } from '../../shared/errors.ts';
import { verifySignedBytes } from '../../shared/keyring.ts';
import { compareVersions, parseVersion } from '../../shared/versions.ts';
import { ByteReader } from '../../payloads/byte-reader.ts';
import { MANIFEST_SIGNATURE_DOMAIN } from '../../payloads/format.ts';
import { createPayload } from '../../payloads/generate.ts';
import { readPrelude, verifyPrelude, type Prelude } from '../../payloads/payload-reader.ts';
import type { ServerContext } from '../context.ts';
import type { Job, PayloadRecord, Release, Rollout } from '../store/store.ts';

export interface PublishImageInput {
  product?: string;
  board: string;
  channel: string;
  version: string;
  steppingStone?: boolean;
  allowDowngrade?: boolean;
  notes?: string | null;
  actor: string;
}

export interface PublishPayloadInput {
  channel: string;
  steppingStone?: boolean;
  allowDowngrade?: boolean;
  notes?: string | null;
  actor: string;
}

export interface PublishResult {
  release: Release;
  payload: PayloadRecord;
  job: Job | null;
}

export type ByteSource = AsyncIterable<Uint8Array> | NodeJS.ReadableStream;

/** Streams a body to a file with its sha256 and a size limit; removes the file on any failure. */
export async function receiveToFile(source: ByteSource, path: string, maxBytes: number, signal?: AbortSignal): Promise<{ size: number; sha256: string }> {
  const hash = createHash('sha256');
  let size = 0;
  const meter = new Transform({
    transform(chunk: Buffer, _enc, done) {
      size += chunk.length;
      if (size > maxBytes) {
        done(new TandemError('ERR_BODY_TOO_LARGE', `The upload exceeds the ${maxBytes}-byte limit.`, { details: { limit: maxBytes } }));
        return;
      }
      hash.update(chunk);
      done(null, chunk);
    },
  });
  try {
    await pipeline(source as NodeJS.ReadableStream, meter, createWriteStream(path, { mode: 0o600 }), signal ? { signal } : {});
  } catch (err) {
    await rm(path, { force: true });
    throw err;
  }
  if (size === 0) {
    await rm(path, { force: true });
    throw new TandemError('ERR_INVALID_ARGUMENT', 'The upload is empty.');
  }
  return { size, sha256: hash.digest('hex') };
}

async function readPreludeOf(path: string): Promise<Prelude> {
  const stream = createReadStream(path, { highWaterMark: 1024 * 1024 });
  try {
    return await readPrelude(new ByteReader(stream));
  } finally {
    stream.destroy();
  }
}

async function exists(path: string): Promise<boolean> {
  return access(path).then(() => true, () => false);
}

/** Moves a finished file into its content-addressed place; an identical file already there wins. */
async function placeContent(tmp: string, dest: string): Promise<void> {
  if (await exists(dest)) await rm(tmp, { force: true });
  else await rename(tmp, dest);
}

function payloadRecordOf(prelude: Prelude, p: { sha256: string; size: number; releaseId: string; board: string; kind: 'full' | 'delta'; sourceVersion: string | null; targetSha256: string; targetSize: number }): PayloadRecord {
  return {
    ...p,
    preludeSize: prelude.raw.length,
    manifest: prelude.manifestBytes,
    signatures: JSON.stringify(prelude.signatureBlock.signatures),
    createdAt: new Date().toISOString(),
  };
}

function newRollout(sc: ServerContext, releaseId: string, actor: string): Rollout {
  return {
    releaseId,
    basisPoints: 0,
    state: 'active',
    salt: randomBytes(16).toString('hex'),
    failureThresholdBp: sc.config.rolloutDefaults.failureThresholdBp,
    minAttempts: sc.config.rolloutDefaults.minAttempts,
    haltReason: null,
    updatedAt: new Date().toISOString(),
    updatedBy: actor,
  };
}

/** The release for (product, channel, version), created with a 0 % active rollout when new. */
async function ensureRelease(sc: ServerContext, q: { product: string; channel: string; version: string; steppingStone?: boolean; allowDowngrade?: boolean; notes?: string | null; actor: string }): Promise<Release> {
  const [existing] = await sc.store.findReleases({ product: q.product, channel: q.channel, version: q.version });
  if (existing) return existing;
  const release: Release = {
    id: randomUUID(),
    product: q.product,
    channel: q.channel,
    version: q.version,
    steppingStone: q.steppingStone ?? false,
    allowDowngrade: q.allowDowngrade ?? false,
    createdAt: new Date().toISOString(),
    createdBy: q.actor,
    notes: q.notes ?? null,
  };
  await sc.store.createRelease(release, newRollout(sc, release.id, q.actor));
  return release;
}

async function refuseExistingFull(sc: ServerContext, product: string, channel: string, version: string, board: string): Promise<void> {
  const [existing] = await sc.store.findReleases({ product, channel, version });
  if (existing && (await sc.store.listPayloads(existing.id)).some((p) => p.kind === 'full' && p.board === board)) {
    throw new TandemError('ERR_RELEASE_EXISTS', `Release ${product} ${version} on ${channel} already has a full payload for board ${board}.`, {
      details: { product, channel, version, board },
    });
  }
}

export async function publishImage(sc: ServerContext, input: PublishImageInput, image: ByteSource, options: { signal?: AbortSignal } = {}): Promise<PublishResult> {
  parseVersion(input.version);
  const product = input.product ?? input.board;
  await refuseExistingFull(sc, product, input.channel, input.version, input.board);
  const id = randomUUID();
  const imageTmp = join(sc.paths.uploads, `${id}.img`);
  const payloadTmp = join(sc.paths.uploads, `${id}.payload`);
  try {
    const received = await receiveToFile(image, imageTmp, sc.config.limits.imageBytes, options.signal);
    const summary = await createPayload({
      image: imageTmp,
      version: input.version,
      board: input.board,
      product,
      signer: sc.keys.releaseKey,
      keyring: sc.keys.keyring,
      out: payloadTmp,
      level: sc.config.zstdLevel,
      ...(options.signal ? { signal: options.signal } : {}),
    });
    const prelude = await readPreludeOf(payloadTmp);
    await placeContent(payloadTmp, join(sc.paths.payloads, summary.sha256));
    await placeContent(imageTmp, join(sc.paths.images, received.sha256));
    // Re-check after the long part: another upload of the same release may have won meanwhile.
    await refuseExistingFull(sc, product, input.channel, input.version, input.board);
    const release = await ensureRelease(sc, { ...input, product });
    const payload = payloadRecordOf(prelude, {
      sha256: summary.sha256, size: summary.size, releaseId: release.id, board: input.board, kind: 'full', sourceVersion: null,
      targetSha256: received.sha256, targetSize: received.size,
    });
    await sc.store.addPayload(payload);
    await sc.store.audit({
      at: new Date().toISOString(), actor: input.actor, action: 'release.publish', target: `${product}/${input.channel}/${input.version}`,
      details: { board: input.board, payload: summary.sha256, size: summary.size, image: received.sha256 },
    });
    const job = await scheduleDeltas(sc, release, input.board);
    return { release, payload, job };
  } finally {
    await rm(imageTmp, { force: true });
    await rm(payloadTmp, { force: true });
  }
}

/** Deltas to `release` from the previous `deltaSources` releases on its channel whose images are kept. */
export async function scheduleDeltas(sc: ServerContext, release: Release, board: string): Promise<Job | null> {
  if (sc.config.deltaSources === 0) return null;
  const target = (await sc.store.listPayloads(release.id)).find((p) => p.kind === 'full' && p.board === board);
  if (!target) return null;
  const targetImage = join(sc.paths.images, target.targetSha256);
  if (!(await exists(targetImage))) return null;
  const previous = (await sc.store.findReleases({ product: release.product, channel: release.channel }))
    .filter((r) => compareVersions(r.version, release.version) < 0)
    .sort((a, b) => compareVersions(b.version, a.version));
  const sources: { version: string; image: string }[] = [];
  for (const r of previous) {
    if (sources.length >= sc.config.deltaSources) break;
    const full = (await sc.store.listPayloads(r.id)).find((p) => p.kind === 'full' && p.board === board);
    const image = full && join(sc.paths.images, full.targetSha256);
    if (image && (await exists(image))) sources.push({ version: r.version, image });
  }
  if (sources.length === 0) return null;
  return sc.jobs.enqueue('deltas', release.id, { board, version: release.version, sources: sources.map((s) => s.version) }, async (report, signal) => {
    const existing = await sc.store.listPayloads(release.id);
    let done = 0;
    const made: string[] = [];
    for (const source of sources) {
      await report(done / sources.length, `delta from ${source.version}`);
      if (existing.some((p) => p.kind === 'delta' && p.board === board && p.sourceVersion === source.version)) {
        done++;
        continue;
      }
      const out = join(sc.paths.uploads, `${randomUUID()}.delta`);
      try {
        const summary = await createPayload({
          image: targetImage,
          source: { path: source.image, version: source.version },
          version: release.version,
          board,
          product: release.product,
          signer: sc.keys.releaseKey,
          keyring: sc.keys.keyring,
          out,
          level: sc.config.zstdLevel,
          signal,
        });
        const prelude = await readPreludeOf(out);
        await placeContent(out, join(sc.paths.payloads, summary.sha256));
        await sc.store.addPayload(payloadRecordOf(prelude, {
          sha256: summary.sha256, size: summary.size, releaseId: release.id, board, kind: 'delta', sourceVersion: source.version,
          targetSha256: target.targetSha256, targetSize: target.targetSize,
        }));
        made.push(`${source.version} (${summary.size} bytes)`);
      } finally {
        await rm(out, { force: true });
      }
      done++;
    }
    return made.length ? `deltas from ${made.join(', ')}` : 'no new deltas';
  });
}

export async function publishPayload(sc: ServerContext, input: PublishPayloadInput, body: ByteSource, options: { signal?: AbortSignal } = {}): Promise<PublishResult> {
  const tmp = join(sc.paths.uploads, `${randomUUID()}.payload`);
  try {
    const received = await receiveToFile(body, tmp, sc.config.limits.payloadBytes, options.signal);
    const prelude = await readPreludeOf(tmp);
    const now = new Date();
    const verified = await verifyPrelude(prelude, { trust: { rootKeys: [sc.keys.rootPublicKey], threshold: 1 }, now });
    // Devices check the manifest against the keyring in the check response: the server's.
    verifySignedBytes(prelude.manifestBytes, prelude.signatureBlock.signatures, sc.keys.verified, MANIFEST_SIGNATURE_DOMAIN, now);
    const manifest = verified.manifest;
    await verifyDataSection(tmp, prelude.dataOffset, manifest.blobs, manifest.dataSize, received.size);

    const board = manifest.board;
    if (manifest.kind === 'full') await refuseExistingFull(sc, manifest.product, input.channel, manifest.version, board);
    let release: Release;
    if (manifest.kind === 'full') {
      release = await ensureRelease(sc, { product: manifest.product, channel: input.channel, version: manifest.version, ...pick(input), actor: input.actor });
    } else {
      const [found] = await sc.store.findReleases({ product: manifest.product, channel: input.channel, version: manifest.version });
      if (!found) {
        throw new TandemError('ERR_NOT_FOUND', `A delta payload needs its release ${manifest.product} ${manifest.version} on ${input.channel} to exist; publish the full payload first.`);
      }
      release = found;
    }
    const existing = await sc.store.getPayload(received.sha256);
    if (existing) throw new TandemError('ERR_RELEASE_EXISTS', `Payload ${received.sha256} is already published.`, { details: { sha256: received.sha256 } });
    await placeContent(tmp, join(sc.paths.payloads, received.sha256));
    const payload = payloadRecordOf(prelude, {
      sha256: received.sha256, size: received.size, releaseId: release.id, board, kind: manifest.kind,
      sourceVersion: manifest.source?.version ?? null, targetSha256: manifest.target.sha256, targetSize: manifest.target.size,
    });
    await sc.store.addPayload(payload);
    await sc.store.audit({
      at: now.toISOString(), actor: input.actor, action: 'release.publish-payload', target: `${manifest.product}/${input.channel}/${manifest.version}`,
      details: { board, kind: manifest.kind, payload: received.sha256, size: received.size, sourceVersion: manifest.source?.version ?? null },
    });
    return { release, payload, job: null };
  } finally {
    await rm(tmp, { force: true });
  }
}

function pick(input: PublishPayloadInput): { steppingStone?: boolean; allowDowngrade?: boolean; notes?: string | null } {
  return {
    ...(input.steppingStone === undefined ? {} : { steppingStone: input.steppingStone }),
    ...(input.allowDowngrade === undefined ? {} : { allowDowngrade: input.allowDowngrade }),
    ...(input.notes === undefined ? {} : { notes: input.notes }),
  };
}

/** The data section is the blobs back to back, each matching its signed sha256, and nothing after. */
async function verifyDataSection(path: string, dataOffset: number, blobs: readonly { size: number; sha256: string }[], dataSize: number, fileSize: number): Promise<void> {
  if (fileSize !== dataOffset + dataSize) {
    throw new TandemError(fileSize < dataOffset + dataSize ? 'ERR_PAYLOAD_TRUNCATED' : 'ERR_PAYLOAD_TRAILING_DATA',
      `The payload is ${fileSize} bytes; its manifest says ${dataOffset + dataSize}.`);
  }
  const fh = await open(path, 'r');
  try {
    let offset = dataOffset;
    const buf = Buffer.allocUnsafe(1024 * 1024);
    for (const [i, blob] of blobs.entries()) {
      const hash = createHash('sha256');
      let left = blob.size;
      while (left > 0) {
        const { bytesRead } = await fh.read(buf, 0, Math.min(buf.length, left), offset);
        if (bytesRead === 0) throw new TandemError('ERR_PAYLOAD_TRUNCATED', `The payload ends inside blob ${i}.`);
        hash.update(buf.subarray(0, bytesRead));
        offset += bytesRead;
        left -= bytesRead;
      }
      if (hash.digest('hex') !== blob.sha256) throw new TandemError('ERR_BLOB_HASH', `Blob ${i} does not match its sha256 in the manifest.`, { details: { blob: i } });
    }
  } finally {
    await fh.close();
  }
}

export async function ensureDataDirs(sc: Pick<ServerContext, 'paths'>): Promise<void> {
  for (const dir of [sc.paths.payloads, sc.paths.images, sc.paths.uploads]) await mkdir(dir, { recursive: true });
  // Leftovers of uploads cut off by a crash.
  await rm(sc.paths.uploads, { recursive: true, force: true });
  await mkdir(sc.paths.uploads, { recursive: true });
}
