#!/usr/bin/env -S node --max-semi-space-size=1
// A small young generation keeps the agent's peak RSS near its working set while it applies a payload.
// Launcher: runs the TypeScript entry point through tsx, so no build step is needed.
import { register } from 'tsx/esm/api';

register();
await import('./tandem-agent.ts');
