/**
 * Step 2, download: streams the payload into the apply step, attempt after
 * attempt. Each attempt starts at the last durable checkpoint (HTTP Range from
 * its payloadOffset, If-Range with the first response's ETag) and feeds the
 * engine as bytes arrive — no temporary copy. Transient failures (network,
 * timeouts, stalls, 5xx, a truncated body, a blob damaged on the way) are
 * retried with exponential backoff and jitter, up to `retries`; a payload that
 * changed under us restarts from its first byte once; anything else fails the
 * install at once.
 */
import type { ApplyResult, Checkpoint } from '../../payloads/apply.ts';
import { toTandemError } from '../../shared/errors.ts';
import { backoffSeconds, retryWaitSeconds, sleep } from '../backoff.ts';
import { openPayloadStream } from '../downloader.ts';
import type { HttpClient } from '../http-client.ts';
import { isTransient } from '../http.ts';
import type { UpdateRecord } from '../state.ts';
import { applyStep, type ApplyStepInput } from './apply.ts';

export interface DownloadPolicy {
  retries: number;
  backoffBaseSeconds: number;
  backoffMaxSeconds: number;
  lowSpeedBytesPerSecond: number;
  lowSpeedSeconds: number;
}

export interface DownloadStepInput extends Omit<ApplyStepInput, 'update' | 'onCheckpoint'> {
  /** The update as persisted (its checkpoint and ETag say where to resume). */
  current: () => UpdateRecord;
  /** The kept prelude for a resume. */
  loadPrelude: () => Promise<Buffer | undefined>;
  /** Persist a checkpoint, the prelude and the ETag together. */
  saveCheckpoint: (checkpoint: Checkpoint, prelude: Buffer, etag: string | undefined) => Promise<void>;
  /** Forget the checkpoint: the next attempt starts from byte 0. */
  restart: () => Promise<void>;
  /** Count an attempt durably (before it starts). */
  countAttempt: () => Promise<void>;
  dispatcher: HttpClient;
  retry: DownloadPolicy;
  log?: (message: string, fields?: Record<string, unknown>) => void;
  random?: () => number;
}

const EMPTY: AsyncIterable<Uint8Array> = { async *[Symbol.asyncIterator]() {} };

export async function downloadStep(input: DownloadStepInput): Promise<ApplyResult> {
  let failures = 0;
  let restarted = false;
  for (;;) {
    input.signal?.throwIfAborted();
    await input.countAttempt();
    const update = input.current();
    let resume: { prelude: Buffer; checkpoint: Checkpoint } | undefined;
    if (update.checkpoint) {
      const prelude = await input.loadPrelude();
      if (prelude === undefined) {
        // The checkpoint outlived its prelude (the state folder was tampered with): start over, never guess.
        await input.restart();
      } else {
        resume = { prelude, checkpoint: update.checkpoint };
      }
    }
    const offset = resume?.checkpoint.payloadOffset ?? 0;
    let etag = update.etag;
    try {
      let body = EMPTY;
      let close = () => {};
      if (offset < update.size) {
        const stream = await openPayloadStream({
          url: update.url,
          size: update.size,
          offset,
          ...(update.etag !== undefined ? { etag: update.etag } : {}),
          lowSpeedBytesPerSecond: input.retry.lowSpeedBytesPerSecond,
          lowSpeedSeconds: input.retry.lowSpeedSeconds,
          dispatcher: input.dispatcher,
          ...(input.signal ? { signal: input.signal } : {}),
        });
        etag ??= stream.etag;
        body = stream.body;
        close = stream.close;
      }
      input.log?.(resume ? 'resuming download' : 'downloading', { url: update.url, offset, attempt: failures + 1 });
      try {
        return await applyStep(body, {
          ...input,
          update,
          onCheckpoint: (checkpoint, prelude) => input.saveCheckpoint(checkpoint, prelude, etag),
        }, resume);
      } finally {
        close();
      }
    } catch (err) {
      const error = toTandemError(err);
      if (error.code === 'ERR_ABORTED' || input.signal?.aborted) throw err;
      if (error.code === 'ERR_PAYLOAD_CHANGED' && resume && !restarted) {
        // The server's copy changed between attempts; the signed manifest still decides what is acceptable, so start over once.
        restarted = true;
        input.log?.('payload changed since the checkpoint; restarting from byte 0', { code: error.code });
        await input.restart();
        continue;
      }
      if (!(isTransient(error) || isDamagedInTransit(error)) || failures >= input.retry.retries) throw error;
      failures++;
      const wait = retryWaitSeconds(backoffSeconds(failures - 1, input.retry.backoffBaseSeconds, input.retry.backoffMaxSeconds, input.random), error);
      input.log?.('download failed, retrying', { code: error.code, message: error.message, retryInSeconds: Number(wait.toFixed(2)), failures });
      await sleep(wait, input.signal);
    }
  }
}

/**
 * A blob whose bytes do not match their signed sha256 was damaged between the
 * server's disk and here (it is checked before a byte of it is decoded or
 * written). Every checkpoint lies before it and covers only operations whose
 * output hashes verified, so the next attempt resumes from the last one
 * instead of failing the version and downloading it all again at the next
 * poll. A server that keeps sending bad bytes runs out of retries and the
 * install fails with ERR_BLOB_HASH as before. A blob that matches its hash but
 * does not decode, or decodes to other bytes, is the release's fault: never
 * retried.
 */
function isDamagedInTransit(error: { code: string }): boolean {
  return error.code === 'ERR_BLOB_HASH';
}
