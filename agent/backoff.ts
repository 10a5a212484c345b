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
