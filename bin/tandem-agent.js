#!/usr/bin/env -S node --max-semi-space-size=1
// A small young generation keeps the agent's peak RSS near its working set while it applies a payload.
import { launch } from './launch.js';

await launch('tandem-agent');
