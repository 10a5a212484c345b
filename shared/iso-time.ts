/**
 * ISO 8601 UTC timestamps (`2026-11-23T21:06:20.000Z`), as Date#toISOString
 * writes them, from the UTC fields alone. On Node 20 toISOString first asks ICU
 * for the host's time zone, which pages in ~0.9 MiB of ICU's zone data on the
 * first call (measured with /proc/self/pagemap); the agent, whose memory is
 * budgeted, stamps events and checks expiry dates without it.
 */
const pad = (n: number, width: number): string => String(n).padStart(width, '0');

export function isoTime(when: Date | number): string {
  const date = typeof when === 'number' ? new Date(when) : when;
  const year = date.getUTCFullYear();
  // Years outside 0000-9999 need toISOString's expanded ±YYYYYY form (and NaN its RangeError).
  if (!(year >= 0 && year <= 9999)) return date.toISOString();
  return (
    `${pad(year, 4)}-${pad(date.getUTCMonth() + 1, 2)}-${pad(date.getUTCDate(), 2)}` +
    `T${pad(date.getUTCHours(), 2)}:${pad(date.getUTCMinutes(), 2)}:${pad(date.getUTCSeconds(), 2)}.${pad(date.getUTCMilliseconds(), 3)}Z`
  );
}
