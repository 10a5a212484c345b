/**
 * isoTime writes what Date#toISOString writes (the agent's events, state and
 * keyring checks compare and store these strings), without its ICU time-zone lookup.
 */
import test from 'ava';
import { isoTime } from '../../shared/iso-time.ts';

test('isoTime matches toISOString across years, months, leap days and milliseconds', (t) => {
  const fixed = [0, 1, 999, 951782400000, 1795468368669, Date.UTC(2024, 1, 29, 23, 59, 59, 999), Date.UTC(0, 0, 1), Date.UTC(9999, 11, 31, 23, 59, 59, 999)];
  let seed = 12345;
  const random = Array.from({ length: 2000 }, () => {
    seed = (seed * 1103515245 + 12345) % 2 ** 31;
    return Math.floor((seed / 2 ** 31) * 253402300799999); // up to 9999-12-31
  });
  const mismatches = [...fixed, ...random].filter((ms) => isoTime(ms) !== new Date(ms).toISOString() || isoTime(new Date(ms)) !== new Date(ms).toISOString());
  t.deepEqual(mismatches, []);
});

test('isoTime writes expanded years like toISOString and refuses an invalid date the same way', (t) => {
  const far = Date.UTC(10000, 0, 1);
  t.is(isoTime(far), '+010000-01-01T00:00:00.000Z');
  t.is(isoTime(Date.UTC(-1, 0, 1)), new Date(Date.UTC(-1, 0, 1)).toISOString());
  t.throws(() => isoTime(Number.NaN), { instanceOf: RangeError });
});
