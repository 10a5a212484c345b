/**
 * Waiting, as pure functions: exponential backoff with jitter for retries, and
 * the poll interval with jitter, so a fleet that lost its server never comes
 * back in step (the thundering herd).
 */

/** "Equal jitter": half the exponential delay for sure, the other half at random. Seconds. */
export function backoffSeconds(attempt: number, baseSeconds: number, maxSeconds: number, random: () => number = Math.random): number {
  const exp = Math.min(maxSeconds, baseSeconds * 2 ** Math.max(0, Math.min(attempt, 40)));
  return exp / 2 + (random() * exp) / 2;
}

/**
 * A server's Retry-After (RFC 9110 10.2.3: delay-seconds or an HTTP-date) in
 * seconds, or undefined when absent or unreadable; capped, so a hostile or
 * broken server cannot park a device for days.
 */
export function parseRetryAfter(value: string | undefined, now: Date, maxSeconds = 3600): number | undefined {
  if (value === undefined) return undefined;
  const text = value.trim();
  let seconds: number;
  if (/^\d{1,10}$/.test(text)) seconds = Number(text);
  else {
    const at = Date.parse(text);
    if (!/^[A-Za-z]{3}, \d{2} [A-Za-z]{3} \d{4} \d{2}:\d{2}:\d{2} GMT$/.test(text) || Number.isNaN(at)) return undefined;
    seconds = Math.max(0, (at - now.getTime()) / 1000);
  }
  return Math.min(seconds, maxSeconds);
}

/** The wait before a retry: the backoff, or longer when the server asked for it (Retry-After) in the error's details. */
export function retryWaitSeconds(backoff: number, error: { details?: Record<string, unknown> }): number {
  const asked = error.details?.retryAfterSeconds;
  return typeof asked === 'number' && asked > backoff ? asked : backoff;
}

/** The interval to the next check: the server's (or the default), clamped, ± jitter. Seconds. */
export function pollSeconds(
  requested: number | undefined,
  policy: { intervalSeconds: number; minSeconds: number; maxSeconds: number; jitter: number },
  random: () => number = Math.random,
): number {
  const base = Math.min(policy.maxSeconds, Math.max(policy.minSeconds, requested ?? policy.intervalSeconds));
  return Math.max(policy.minSeconds, base * (1 + policy.jitter * (2 * random() - 1)));
}

/** Resolves after `seconds`, or rejects with the signal's reason when it aborts first. */
export function sleep(seconds: number, signal?: AbortSignal): Promise<void> {
  return new Promise((resolve, reject) => {
    if (signal?.aborted) {
      reject(signal.reason as Error);
      return;
    }
    const timer = setTimeout(() => {
      signal?.removeEventListener('abort', onAbort);
      resolve();
    }, Math.max(0, seconds * 1000));
    const onAbort = () => {
      clearTimeout(timer);
      reject(signal!.reason as Error);
    };
    signal?.addEventListener('abort', onAbort, { once: true });
  });
}
