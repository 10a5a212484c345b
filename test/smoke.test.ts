import test from 'ava';
import { canonicalize } from '../shared/canonical-json.ts';

test('canonical JSON sorts keys', (t) => {
  t.is(canonicalize({ b: 1, a: [true, null] }), '{"a":[true,null],"b":1}');
});
