/**
 * Step 3, apply: the payload stream goes through the apply engine into the
 * inactive slot (payloads/apply.ts verifies every blob and operation and reads
 * the target back at the end). Before anything is written, the payload's own
 * signed manifest must be byte-identical to the one the signed check response
 * offered, and pass the install policy. Checkpoints (after fdatasync) are
 * handed to the caller, which persists them with the prelude.
 */
import { applyPayload, resumePayload, type ApplyResult, type Checkpoint } from '../../payloads/apply.ts';
import type { KnownManifest, VerifiedPayload } from '../../payloads/payload-reader.ts';
import type { ZstdDecoder } from '../../payloads/zstd.ts';
import { TandemError } from '../../shared/errors.ts';
import type { RootTrust } from '../../shared/keyring.ts';
import type { ManifestHeader } from '../../shared/schemas/manifest.ts';
import { compareVersions } from '../../shared/versions.ts';
import type { Slot } from '../boot-control/index.ts';
import type { UpdateRecord } from '../state.ts';

export interface InstallPolicy {
  board: string;
  product: string;
  currentVersion: string;
  failedVersions: readonly string[];
  allowDowngrade: boolean;
  bootedSlot: Slot;
  targetCapacity?: number;
}

/** Refusals that depend only on the signed manifest and the device (pure). */
export function checkInstallPolicy(manifest: ManifestHeader, policy: InstallPolicy): void {
  if (manifest.board !== policy.board) {
    throw new TandemError('ERR_WRONG_BOARD', `Version ${manifest.version} is for board ${manifest.board}; this device is ${policy.board}.`, {
      details: { board: manifest.board, expected: policy.board },
    });
  }
  if (manifest.product !== policy.product) {
    throw new TandemError('ERR_WRONG_BOARD', `Version ${manifest.version} is for product ${manifest.product}; this device runs ${policy.product}.`, {
      details: { product: manifest.product, expected: policy.product },
    });
  }
  if (policy.failedVersions.includes(manifest.version)) {
    throw new TandemError('ERR_VERSION_FAILED', `Version ${manifest.version} failed on this device before; it is not installed again until the server clears it.`, {
      details: { version: manifest.version },
    });
  }
  const order = compareVersions(manifest.version, policy.currentVersion);
  if (order < 0 && !policy.allowDowngrade) {
    throw new TandemError('ERR_DOWNGRADE', `Version ${manifest.version} is older than the running ${policy.currentVersion}, and the release is not marked as an allowed rollback target.`, {
      details: { version: manifest.version, current: policy.currentVersion },
    });
  }
  if (order === 0) {
    throw new TandemError('ERR_DOWNGRADE', `Version ${manifest.version} is the version already running.`, { details: { version: manifest.version } });
  }
  if (manifest.kind === 'delta' && manifest.source!.version !== policy.currentVersion) {
    throw new TandemError('ERR_SOURCE_MISMATCH', `This delta applies to ${manifest.source!.version}, but slot ${policy.bootedSlot} runs ${policy.currentVersion}.`, {
      details: { source: manifest.source!.version, current: policy.currentVersion },
    });
  }
  if (policy.targetCapacity !== undefined && manifest.target.size > policy.targetCapacity) {
    throw new TandemError('ERR_SLOT_TOO_SMALL', `The image is ${manifest.target.size} bytes; the target slot holds ${policy.targetCapacity}.`, {
      details: { size: manifest.target.size, capacity: policy.targetCapacity },
    });
  }
}

export interface ApplyStepInput {
  update: UpdateRecord;
  policy: InstallPolicy;
  target: string;
  source?: string;
  trust: RootTrust;
  decoder?: ZstdDecoder;
  /** The manifest the check response carried, parsed: the payload's copy of the same bytes is not parsed again. */
  knownManifest?: KnownManifest;
  minKeyringVersion?: number;
  checkpointEveryBytes: number;
  /** Persist the prelude and the checkpoint; resolves once both are durable. */
  onCheckpoint: (checkpoint: Checkpoint, prelude: Buffer) => Promise<void>;
  onProgress?: (done: number, total: number, phase: string) => void;
  signal?: AbortSignal;
}

function options(input: ApplyStepInput) {
  return {
    target: input.target,
    ...(input.source !== undefined ? { source: input.source } : {}),
    trust: input.trust,
    ...(input.decoder ? { decoder: input.decoder } : {}),
    ...(input.knownManifest ? { knownManifest: input.knownManifest } : {}),
    ...(input.minKeyringVersion !== undefined ? { minKeyringVersion: input.minKeyringVersion } : {}),
    checkpointEveryBytes: input.checkpointEveryBytes,
    accept: (verified: VerifiedPayload) => {
      const digest = verified.manifestSha256;
      if (digest !== input.update.manifestSha256) {
        throw new TandemError('ERR_PAYLOAD_CHANGED', `The payload's manifest is not the one the signed check response offered for ${input.update.version}: the payload changed after the check.`, {
          details: { expected: input.update.manifestSha256, actual: digest },
        });
      }
      if (verified.prelude.raw.length !== input.update.preludeSize) {
        throw new TandemError('ERR_PAYLOAD_CHANGED', `The payload's prelude is ${verified.prelude.raw.length} bytes, not the ${input.update.preludeSize} offered.`);
      }
      checkInstallPolicy(verified.manifest, input.policy);
    },
    onCheckpoint: (checkpoint: Checkpoint, verified: VerifiedPayload) => input.onCheckpoint(checkpoint, verified.prelude.raw),
    ...(input.onProgress ? { onProgress: (p: { phase: string; done: number; total: number }) => input.onProgress!(p.done, p.total, p.phase) } : {}),
    ...(input.signal ? { signal: input.signal } : {}),
  };
}

/** Applies from the first byte, or resumes from a checkpoint with the kept prelude. */
export function applyStep(stream: AsyncIterable<Uint8Array>, input: ApplyStepInput, resume?: { prelude: Buffer; checkpoint: Checkpoint }): Promise<ApplyResult> {
  return resume ? resumePayload(resume.prelude, resume.checkpoint, stream, options(input)) : applyPayload(stream, options(input));
}
