/**
 * Step 4, verify: the slot about to be booted must hold exactly the signed
 * target image. The apply engine already read the slot back once at the end
 * of a run; this step re-reads it only when that result is not at hand (the
 * agent restarted between apply and finalize) — a deliberate second read
 * (STYLE.md 9), since the bytes sat unwatched while the agent was down.
 */
import { constants, open } from 'node:fs/promises';
import { hashSlot } from '../../payloads/apply.ts';
import { TandemError } from '../../shared/errors.ts';

export async function verifySlot(path: string, target: { size: number; sha256: string }, signal?: AbortSignal): Promise<void> {
  const fh = await open(path, constants.O_RDONLY).catch((cause: unknown) => {
    throw new TandemError('ERR_IO', `Cannot open ${path} to verify it: ${(cause as Error).message}`, { cause });
  });
  try {
    const digest = await hashSlot(fh, target.size, undefined, signal);
    if (digest !== target.sha256) {
      throw new TandemError('ERR_TARGET_HASH', `${path} does not hold the signed target image (sha256 differs); it must not be booted.`, {
        details: { expected: target.sha256, actual: digest },
      });
    }
  } finally {
    await fh.close();
  }
}
