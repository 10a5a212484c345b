/**
 * The strict parser every byte from outside goes through: duplicate keys,
 * prototype keys, integers beyond 2^53, nesting and size are refused with their
 * own codes, including when escapes or whitespace disguise them.
 */
import test, { type ExecutionContext } from 'ava';
import { isTandemError, type ErrorCode } from '../../shared/errors.ts';
import { parseSafeJson } from '../../shared/safe-json.ts';

function refuses(t: ExecutionContext, input: string | Uint8Array, code: ErrorCode, options?: Parameters<typeof parseSafeJson>[1]): void {
  const err = t.throws(() => parseSafeJson(input, options), undefined, `${String(input).slice(0, 60)} should be refused`);
  t.true(isTandemError(err, code), `${String(input).slice(0, 60)}: expected ${code}, got ${isTandemError(err) ? err.code : String(err)}`);
}

test('parses ordinary JSON like JSON.parse, with null-prototype objects', (t) => {
  const text = '{"a":[1,-2.5,3e2,true,false,null,"x\\u00e9\\n"],"b":{"c":{}},"d":[]}';
  const value = parseSafeJson(text);
  t.deepEqual(JSON.parse(JSON.stringify(value)), JSON.parse(text));
  t.is(Object.getPrototypeOf(value), null);
  t.is(Object.getPrototypeOf((value as Record<string, unknown>)['b']), null);
});

test('duplicate keys are refused, also when an escape spells the same key', (t) => {
  refuses(t, '{"a":1,"a":2}', 'ERR_JSON_DUPLICATE_KEY');
  refuses(t, '{"a":1,"\\u0061":2}', 'ERR_JSON_DUPLICATE_KEY');
  refuses(t, '{"x":{"k":1, "k" :1}}', 'ERR_JSON_DUPLICATE_KEY');
  refuses(t, '[{"ok":1},{"ok":1,"ok":1}]', 'ERR_JSON_DUPLICATE_KEY');
  // The same key in sibling objects is fine.
  t.notThrows(() => parseSafeJson('[{"a":1},{"a":2}]'));
});

test('__proto__, constructor and prototype keys are refused at any depth and under escapes', (t) => {
  refuses(t, '{"__proto__":{"admin":true}}', 'ERR_JSON_FORBIDDEN_KEY');
  refuses(t, '{"a":{"constructor":{"prototype":1}}}', 'ERR_JSON_FORBIDDEN_KEY');
  refuses(t, '{"prototype":1}', 'ERR_JSON_FORBIDDEN_KEY');
  refuses(t, '{"\\u005f_proto__":1}', 'ERR_JSON_FORBIDDEN_KEY');
  refuses(t, '[[{"__proto__":null}]]', 'ERR_JSON_FORBIDDEN_KEY');
  t.is(({} as Record<string, unknown>)['admin'], undefined);
  // As a value it is just a string.
  t.deepEqual(JSON.parse(JSON.stringify(parseSafeJson('{"k":"__proto__"}'))), { k: '__proto__' });
});

test('integers beyond 2^53 are refused however they are written; 2^53 - 1 is fine', (t) => {
  t.is(parseSafeJson('9007199254740991'), Number.MAX_SAFE_INTEGER);
  t.is(parseSafeJson('-9007199254740991'), -Number.MAX_SAFE_INTEGER);
  for (const text of ['9007199254740992', '9007199254740993', '-9007199254740993', '18446744073709551616', '1e16', '9.007199254740993e15', '1E400', '-1e400', `1${'0'.repeat(500)}`]) {
    refuses(t, `{"size":${text}}`, 'ERR_JSON_UNSAFE_NUMBER');
  }
  // Fractions are numbers JS holds exactly enough; the schemas decide whether they are allowed.
  t.is(parseSafeJson('0.5'), 0.5);
});

test('nesting beyond the limit is refused before it can exhaust the stack', (t) => {
  t.notThrows(() => parseSafeJson('['.repeat(64) + ']'.repeat(64)));
  refuses(t, '['.repeat(65) + ']'.repeat(65), 'ERR_JSON_TOO_DEEP');
  refuses(t, '{"a":'.repeat(65) + '1' + '}'.repeat(65), 'ERR_JSON_TOO_DEEP');
  refuses(t, '['.repeat(1_000_000), 'ERR_JSON_TOO_DEEP', { maxBytes: 2_000_000 });
  refuses(t, '[[[1]]]', 'ERR_JSON_TOO_DEEP', { maxDepth: 2 });
  t.notThrows(() => parseSafeJson('[[1]]', { maxDepth: 2 }));
});

test('input above the size limit is refused by its UTF-8 size, before parsing', (t) => {
  refuses(t, `"${'a'.repeat(100)}"`, 'ERR_JSON_TOO_LARGE', { maxBytes: 101 });
  t.notThrows(() => parseSafeJson(`"${'a'.repeat(99)}"`, { maxBytes: 101 }));
  // 50 euro signs are 150 UTF-8 bytes, 50 UTF-16 units.
  refuses(t, `"${'€'.repeat(50)}"`, 'ERR_JSON_TOO_LARGE', { maxBytes: 100 });
  refuses(t, Buffer.from(`"${'€'.repeat(50)}"`), 'ERR_JSON_TOO_LARGE', { maxBytes: 100 });
  // Even invalid text is refused for its size first: nothing is parsed.
  refuses(t, '{'.repeat(2 * 1024 * 1024), 'ERR_JSON_TOO_LARGE');
});

test('malformed documents are syntax errors, not exceptions of another kind', (t) => {
  for (const text of [
    '',
    ' ',
    '{',
    '{"a"}',
    '{"a":1,}',
    '[1,]',
    '[1 2]',
    '01',
    '-',
    '1.',
    '.5',
    '+1',
    'NaN',
    'Infinity',
    'tru',
    'nulls',
    '"unterminated',
    '"tab\there"',
    '"bad \\x escape"',
    '"\\u12G4"',
    "{'a':1}",
    '{a:1}',
    '{"a":1}{"b":2}',
    '\ufeff{}',
    '{"a":1} x',
  ]) {
    refuses(t, text, 'ERR_JSON_SYNTAX');
  }
});

test('bytes that are not UTF-8 are refused', (t) => {
  refuses(t, Buffer.from([0x22, 0xc3, 0x28, 0x22]), 'ERR_JSON_SYNTAX');
  refuses(t, Buffer.from([0x22, 0xed, 0xa0, 0x80, 0x22]), 'ERR_JSON_SYNTAX'); // an encoded surrogate
  t.is(parseSafeJson(Buffer.from('"é"')), 'é');
});
