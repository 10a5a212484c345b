#!/usr/bin/env -S node --max-semi-space-size=1
// A small young generation keeps the peak RSS of a payload apply near its working set
// (measured applying the fixture delta: 151 MiB -> 126 MiB); the cost is more minor GCs.
import { launch } from './launch.js';

await launch('tandem');
