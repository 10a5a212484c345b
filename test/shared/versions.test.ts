import test from 'ava';
import { isTandemError } from '../../shared/errors.ts';
import { compareVersions, isNewer, parseVersion, sortVersions } from '../../shared/versions.ts';

// semver.org §11: each entry has lower precedence than the next.
const PRECEDENCE = [
  '1.0.0-alpha',
  '1.0.0-alpha.1',
  '1.0.0-alpha.beta',
  '1.0.0-beta',
  '1.0.0-beta.2',
  '1.0.0-beta.11',
  '1.0.0-rc.1',
  '1.0.0',
];

test('the spec precedence table holds for every pair', (t) => {
  for (let i = 0; i < PRECEDENCE.length; i++) {
    for (let j = 0; j < PRECEDENCE.length; j++) {
      const a = PRECEDENCE[i] as string;
      const b = PRECEDENCE[j] as string;
      t.is(compareVersions(a, b), Math.sign(i - j) as -1 | 0 | 1, `${a} vs ${b}`);
    }
  }
});

test('sortVersions restores the spec order from a shuffle', (t) => {
  const shuffled = [...PRECEDENCE].reverse();
  [shuffled[1], shuffled[5]] = [shuffled[5] as string, shuffled[1] as string];
  const before = [...shuffled];
  t.deepEqual(sortVersions(shuffled), PRECEDENCE);
  t.deepEqual(shuffled, before, 'the input is not sorted in place');
});

test('core versions compare numerically, not lexically', (t) => {
  t.is(compareVersions('1.0.0', '2.0.0'), -1);
  t.is(compareVersions('2.0.0', '2.1.0'), -1);
  t.is(compareVersions('2.1.0', '2.1.1'), -1);
  t.is(compareVersions('1.10.0', '1.9.0'), 1);
  t.is(compareVersions('10.0.0', '9.99.99'), 1);
  t.is(compareVersions('1.0.0-2', '1.0.0-10'), -1, 'numeric prerelease identifiers compare as numbers');
  t.is(compareVersions('1.0.0-1', '1.0.0-a'), -1, 'numeric below alphanumeric');
  t.is(compareVersions('1.0.0-Z', '1.0.0-a'), -1, 'alphanumeric in ASCII order');
  t.is(compareVersions('1.0.0-alpha-10', '1.0.0-alpha-2'), -1, 'hyphenated identifiers stay alphanumeric');
});

test('build metadata is ignored for precedence', (t) => {
  t.is(compareVersions('1.0.0+build.1', '1.0.0+build.2'), 0);
  t.is(compareVersions('1.0.0-alpha+001', '1.0.0-alpha'), 0);
  t.is(compareVersions('1.0.0+zzz', '1.0.1+aaa'), -1);
  t.false(isNewer('1.0.0+2', '1.0.0+1'));
  t.deepEqual(sortVersions(['1.0.0+b', '1.0.0+a']), ['1.0.0+b', '1.0.0+a'], 'stable for equal precedence');
});

test('isNewer', (t) => {
  t.true(isNewer('1.2.4', '1.2.3'));
  t.true(isNewer('1.0.0', '1.0.0-rc.1'));
  t.false(isNewer('1.0.0-rc.1', '1.0.0'));
  t.false(isNewer('1.2.3', '1.2.3'));
});

test('parseVersion returns the parts', (t) => {
  t.deepEqual(parseVersion('1.2.3-alpha.7.x-y+exp.sha.5114f85'), {
    major: 1,
    minor: 2,
    patch: 3,
    prerelease: ['alpha', 7, 'x-y'],
    build: ['exp', 'sha', '5114f85'],
    raw: '1.2.3-alpha.7.x-y+exp.sha.5114f85',
  });
  for (const ok of ['0.0.0', '1.0.0-0A.is.legal', '1.0.0-x-y-z.--', '1.0.0+21AF26D3----117B344092BD', '1.0.0+001', '1.0.0-0.3.7', `${Number.MAX_SAFE_INTEGER}.0.0`]) {
    t.notThrows(() => parseVersion(ok), ok);
  }
  t.is(parseVersion(`1.0.0-${'a'.repeat(58)}`).raw.length, 64, 'exactly 64 characters is accepted');
});

const INVALID = [
  '',
  '1',
  '1.0',
  '1.0.0.0',
  'v1.0.0',
  '=1.0.0',
  ' 1.0.0',
  '1.0.0 ',
  '1.0.0\n',
  '01.0.0',
  '1.01.0',
  '1.0.01',
  '-1.0.0',
  '1.0.0-',
  '1.0.0+',
  '1.0.0-01',
  '1.0.0-alpha..1',
  '1.0.0-alpha_beta',
  '1.0.0+build..1',
  '1.0.0-é',
  '１.0.0',
  '1.0.0-beta+exp+sha',
  '1.x.0',
  '^1.0.0',
  '9007199254740992.0.0',
  '1.0.0-99999999999999999999',
  `1.0.0-${'a'.repeat(59)}`,
];

test('invalid versions are refused with ERR_BAD_VERSION and a clear message', (t) => {
  for (const bad of INVALID) {
    const err = t.throws(() => parseVersion(bad), undefined, JSON.stringify(bad));
    t.true(isTandemError(err, 'ERR_BAD_VERSION'), JSON.stringify(bad));
    t.regex(err?.message ?? '', /^Invalid version .*: .+\.$/);
  }
  t.regex(t.throws(() => parseVersion('v1.0.0'))?.message ?? '', /prefix/);
  t.regex(t.throws(() => parseVersion('9007199254740992.0.0'))?.message ?? '', /exceeds/);
  t.regex(t.throws(() => parseVersion('1'.repeat(65)))?.message ?? '', /longer than 64/);
  t.true(isTandemError(t.throws(() => parseVersion(3 as unknown as string)), 'ERR_BAD_VERSION'));
  t.true(isTandemError(t.throws(() => compareVersions('1.0.0', 'latest')), 'ERR_BAD_VERSION'));
  t.true(isTandemError(t.throws(() => sortVersions(['1.0.0', '1.0'])), 'ERR_BAD_VERSION'));
});
