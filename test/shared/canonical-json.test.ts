/**
 * Canonical JSON against RFC 8785's own examples: §3.2.2 (whitespace, literals,
 * numbers, strings), §3.2.3 (key sorting by UTF-16 code units), §3.2.4 (the
 * UTF-8 bytes) and Appendix B (number serialization, IEEE 754 bit patterns in).
 */
import test from 'ava';
import { canonicalBytes, canonicalize } from '../../shared/canonical-json.ts';
import { isTandemError } from '../../shared/errors.ts';

function fromBits(hex: string): number {
  return Buffer.from(hex, 'hex').readDoubleBE(0);
}

test('RFC 8785 §3.2.2: the sample object canonicalizes to the RFC output', (t) => {
  // The RFC's input text, parsed as any JSON parser would (1E30 is fine here: canonicalize is not the safe parser).
  const input = String.raw`{
    "numbers": [333333333.33333329, 1E30, 4.50,
                2e-3, 0.000000000000000000000000001],
    "string": "\u20ac$\u000F\u000aA'\u0042\u0022\u005c\\\"\/",
    "literals": [null, true, false]
  }`;
  const expected = String.raw`{"literals":[null,true,false],"numbers":[333333333.3333333,1e+30,4.5,0.002,1e-27],"string":"€$\u000f\nA'B\"\\\\\"/"}`;
  t.is(canonicalize(JSON.parse(input)), expected);
});

test('RFC 8785 §3.2.3: keys sort by UTF-16 code units, not code points or UTF-8', (t) => {
  const input = String.raw`{
    "\u20ac": "Euro Sign",
    "\r": "Carriage Return",
    "\ufb33": "Hebrew Letter Dalet With Dagesh",
    "1": "One",
    "\ud83d\ude00": "Emoji: Grinning Face",
    "\u0080": "Control",
    "\u00f6": "Latin Small Letter O With Diaeresis"
  }`;
  const out = canonicalize(JSON.parse(input));
  // Code units: \r, 1, U+0080, U+00F6, U+20AC, U+D83D U+DE00 (the emoji), U+FB33 — the emoji before U+FB33.
  const positions = ['Carriage', 'One', 'Control', 'Latin', 'Euro', 'Emoji', 'Hebrew'].map((word) => out.indexOf(word));
  t.deepEqual([...positions].sort((a, b) => a - b), positions);
  t.false(positions.includes(-1));
  // The RFC's printed result (U+0080 and the emoji unescaped, \r escaped).
  t.is(
    out,
    '{"\\r":"Carriage Return","1":"One","\u0080":"Control","\u00f6":"Latin Small Letter O With Diaeresis","\u20ac":"Euro Sign","\ud83d\ude00":"Emoji: Grinning Face","\ufb33":"Hebrew Letter Dalet With Dagesh"}',
  );
});

test('RFC 8785 §3.2.4: the UTF-8 bytes of the §3.2.2 result', (t) => {
  const value = { literals: [null, true, false], numbers: [333333333.3333333, 1e30, 4.5, 0.002, 1e-27], string: "€$\u000f\nA'B\"\\\\\"/" };
  const expected =
    '7b 22 6c 69 74 65 72 61 6c 73 22 3a 5b 6e 75 6c 6c 2c 74 72 75 65 2c 66 61 6c 73 65 5d 2c 22 6e 75 6d 62 65 72 73 22 3a 5b 33 33 ' +
    '33 33 33 33 33 33 33 2e 33 33 33 33 33 33 33 2c 31 65 2b 33 30 2c 34 2e 35 2c 30 2e 30 30 32 2c 31 65 2d 32 37 5d 2c 22 73 74 72 ' +
    '69 6e 67 22 3a 22 e2 82 ac 24 5c 75 30 30 30 66 5c 6e 41 27 42 5c 22 5c 5c 5c 5c 5c 22 2f 22 7d';
  t.is(canonicalBytes(value).toString('hex'), expected.replace(/ /g, ''));
});

// RFC 8785 Appendix B: IEEE 754 bit pattern → canonical text.
const NUMBERS: [bits: string, text: string][] = [
  ['0000000000000000', '0'],
  ['8000000000000000', '0'], // minus zero
  ['0000000000000001', '5e-324'],
  ['8000000000000001', '-5e-324'],
  ['7fefffffffffffff', '1.7976931348623157e+308'],
  ['ffefffffffffffff', '-1.7976931348623157e+308'],
  ['4340000000000000', '9007199254740992'],
  ['c340000000000000', '-9007199254740992'],
  ['4430000000000000', '295147905179352830000'],
  ['44b52d02c7e14af5', '9.999999999999997e+22'],
  ['44b52d02c7e14af6', '1e+23'],
  ['44b52d02c7e14af7', '1.0000000000000001e+23'],
  ['444b1ae4d6e2ef4e', '999999999999999700000'],
  ['444b1ae4d6e2ef4f', '999999999999999900000'],
  ['444b1ae4d6e2ef50', '1e+21'],
  ['3eb0c6f7a0b5ed8c', '9.999999999999997e-7'],
  ['3eb0c6f7a0b5ed8d', '0.000001'],
  ['41b3de4355555553', '333333333.3333332'],
  ['41b3de4355555554', '333333333.33333325'],
  ['41b3de4355555555', '333333333.3333333'],
  ['41b3de4355555556', '333333333.3333334'],
  ['41b3de4355555557', '333333333.33333343'],
  ['becbf647612f3696', '-0.0000033333333333333333'],
  ['43143ff3c1cb0959', '1424953923781206.2'],
];

for (const [bits, text] of NUMBERS) {
  test(`RFC 8785 Appendix B: 0x${bits} → ${text}`, (t) => {
    t.is(canonicalize(fromBits(bits)), text);
    t.is(canonicalize([fromBits(bits)]), `[${text}]`);
  });
}

test('RFC 8785 Appendix B: NaN and Infinity have no canonical form', (t) => {
  for (const bits of ['7fffffffffffffff', '7ff0000000000000', 'fff0000000000000']) {
    const err = t.throws(() => canonicalize({ n: fromBits(bits) }));
    t.true(isTandemError(err, 'ERR_CANONICAL_JSON'), bits);
  }
});

test('lone surrogates, in values or keys, are refused rather than written as invalid UTF-8', (t) => {
  for (const value of ['\ud800', { ['\udc00']: 1 }, ['a\ud83d']]) {
    const err = t.throws(() => canonicalize(value));
    t.true(isTandemError(err, 'ERR_CANONICAL_JSON'));
  }
});

test('nested objects sort at every level, arrays keep their order, undefined members are left out', (t) => {
  t.is(canonicalize({ b: [3, { z: 1, a: 2 }, 1], a: { d: null, c: undefined, b: 'x' } }), '{"a":{"b":"x","d":null},"b":[3,{"a":2,"z":1},1]}');
});

test('values with no JSON form are refused', (t) => {
  for (const value of [1n, () => 1, Symbol('x')]) {
    const err = t.throws(() => canonicalize({ v: value }));
    t.true(isTandemError(err, 'ERR_CANONICAL_JSON'));
  }
});

test('canonicalization is idempotent through JSON.parse', (t) => {
  const value = { 'é': [1.5, -0, 'line\nbreak\u2028', { '\u0000': true }], '': 1e21 };
  const once = canonicalize(value);
  t.is(canonicalize(JSON.parse(once)), once);
});
