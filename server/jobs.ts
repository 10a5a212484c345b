/**
 * Background jobs (delta generation), one at a time, with their state in the
 * store so `GET /v1/admin/jobs/:id` and `tandem status` show them. Each job
 * gets an AbortSignal (STYLE.md 8): closing the server aborts the running one,
 * and a job found unfinished at start is marked failed, never silently lost.
 */
import { randomUUID } from 'node:crypto';
import type { Logger } from 'pino';
import { toTandemError } from '../shared/errors.ts';
import type { Job, Store } from './store/store.ts';

export type JobBody = (report: (progress: number, message?: string) => Promise<void>, signal: AbortSignal) => Promise<string | void>;

export class JobRunner {
  private queue: Promise<void> = Promise.resolve();
  private readonly controller = new AbortController();
  private pending = 0;

  constructor(
    private readonly store: Store,
    private readonly logger: Logger,
  ) {}

  /** Marks jobs a previous process left queued or running as failed. */
  async recover(): Promise<void> {
    for (const job of await this.store.listJobs(1000)) {
      if (job.state === 'queued' || job.state === 'running') {
        await this.store.updateJob(job.id, { state: 'failed', error: 'Interrupted by a server restart.' });
      }
    }
  }

  async enqueue(kind: string, releaseId: string | null, params: Record<string, unknown>, body: JobBody): Promise<Job> {
    const now = new Date().toISOString();
    const job: Job = { id: randomUUID(), kind, state: 'queued', releaseId, params, progress: 0, message: null, error: null, createdAt: now, updatedAt: now };
    await this.store.createJob(job);
    this.pending++;
    this.queue = this.queue.then(() => this.run(job, body)).finally(() => void this.pending--);
    return job;
  }

  private async run(job: Job, body: JobBody): Promise<void> {
    const signal = this.controller.signal;
    if (signal.aborted) return;
    const log = this.logger.child({ job: job.id, kind: job.kind });
    try {
      await this.store.updateJob(job.id, { state: 'running' });
      log.info('job started');
      const message = await body(async (progress, msg) => {
        signal.throwIfAborted();
        await this.store.updateJob(job.id, { progress: Math.round(progress * 100), ...(msg === undefined ? {} : { message: msg }) });
      }, signal);
      await this.store.updateJob(job.id, { state: 'done', progress: 100, ...(message ? { message } : {}) });
      log.info('job done');
    } catch (err) {
      const error = toTandemError(err);
      if (signal.aborted) return; // recover() marks it at the next start
      await this.store.updateJob(job.id, { state: 'failed', error: `${error.code}: ${error.message}` }).catch(() => undefined);
      log.error({ err, code: error.code }, 'job failed');
    }
  }

  /** Resolves when every queued job has finished (tests and `close`). */
  async idle(): Promise<void> {
    while (this.pending > 0) await this.queue;
  }

  async close(): Promise<void> {
    this.controller.abort();
    await this.queue.catch(() => undefined);
  }
}
