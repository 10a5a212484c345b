/**
 * Sends a byte range of an open file as an HTTP response body, reading into
 * buffers that are reused once the socket has taken their bytes.
 *
 * Why not `ctx.body = fs.createReadStream(...)`: that allocates a fresh
 * buffer for every read, and koa pipes it with stream.pipeline, which makes
 * an AbortController (and on finish a DOMException) per response. Serving a
 * fleet's range requests, the garbage (a new 256 KiB buffer per read) kept
 * V8's collector busy in proportion to the bytes served: the payload route
 * took about twice the CPU per byte of node:http + createReadStream with the
 * same read size. Here each response uses two buffers from a shared pool
 * (one being read into while the other is written), the pool keeps a bounded
 * number of them, and memory stays fixed however many bytes go out.
 *
 * Backpressure: the next read starts only once the previous buffer's write
 * has been handed to the kernel (the write callback), so a slow reader holds
 * two buffers and no more. A reader that hangs up fails the pending write and
 * ends the loop; a read error after the headers went out can only cut the
 * response short, as with any streamed body.
 */
import { read } from 'node:fs';
import type { ServerResponse } from 'node:http';

export class BufferPool {
  private readonly free: Buffer[] = [];

  constructor(
    readonly bufferBytes: number,
    /** Free buffers kept for reuse; more are allocated while many responses run at once, then dropped. */
    private readonly keep: number,
  ) {}

  take(): Buffer {
    return this.free.pop() ?? Buffer.allocUnsafeSlow(this.bufferBytes);
  }

  give(buffer: Buffer): void {
    if (this.free.length < this.keep) this.free.push(buffer);
  }
}

function readAt(fd: number, buffer: Buffer, length: number, position: number): Promise<number> {
  return new Promise((resolve, reject) => read(fd, buffer, 0, length, position, (err, n) => (err ? reject(err) : resolve(n))));
}

function write(res: ServerResponse, chunk: Buffer): Promise<void> {
  return new Promise((resolve, reject) => {
    res.write(chunk, (err) => (err ? reject(err) : resolve()));
  });
}

/**
 * Writes bytes start..end (inclusive) of `fd` to `res` and ends it; the status and headers
 * (Content-Length among them) must be set. Never rejects: resolves with the bytes the socket took
 * and, when the file or the connection failed, the error (the response is then destroyed, cut
 * short). Never closes `fd`.
 */
export async function sendFileRange(res: ServerResponse, fd: number, start: number, end: number, pool: BufferPool): Promise<{ bytes: number; error?: unknown }> {
  let position = start;
  let sent = 0;
  // The buffer whose write is in flight: reused once its callback says the socket has the bytes.
  let writing: { buffer: Buffer; bytes: number; done: Promise<void> } | undefined;
  const settle = async (): Promise<void> => {
    if (!writing) return;
    const { buffer, bytes, done } = writing;
    writing = undefined;
    await done; // on failure the buffer is dropped, not reused: the socket may still hold it
    sent += bytes;
    pool.give(buffer);
  };
  try {
    while (position <= end && !res.destroyed) {
      const buffer = pool.take();
      let n: number;
      try {
        n = await readAt(fd, buffer, Math.min(buffer.length, end - position + 1), position);
      } catch (err) {
        pool.give(buffer);
        throw err;
      }
      if (n === 0) throw new Error(`the file ends at byte ${position}, before ${end + 1}`);
      await settle();
      const done = write(res, n === buffer.length ? buffer : buffer.subarray(0, n));
      done.catch(() => undefined); // awaited by settle(); this only keeps a failure meanwhile from being unhandled
      writing = { buffer, bytes: n, done };
      position += n;
    }
    await settle();
    if (position <= end) throw new Error('the client closed the connection');
    res.end();
    return { bytes: sent };
  } catch (error) {
    res.destroy();
    return { bytes: sent, error };
  }
}
