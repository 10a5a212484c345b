/**
 * Slot I/O helpers: where each slot lives, which one is running, and the rule
 * the agent never breaks — it never writes the slot the device runs from.
 * Slots are files or block devices, named by path, `PARTLABEL=` or `PARTUUID=`
 * (resolved through udev's /dev/disk/by-partlabel and by-partuuid links).
 */
import { readFile, realpath, stat } from 'node:fs/promises';
import { join } from 'node:path';
import { TandemError, isTandemError } from '../shared/errors.ts';
import type { BootControl, BootState, Slot } from './boot-control/index.ts';
import { isSlot, otherSlot } from './boot-control/index.ts';
import { decideBoot } from './boot-control/boot-decision.ts';
import { bootStateFromVars } from './boot-control/boot-vars.ts';
import type { AgentConfig } from './config.ts';

/** The path a slot spec names (links resolved only when opened). */
export function slotPath(spec: string, diskDir = '/dev/disk'): string {
  if (spec.startsWith('PARTLABEL=')) return join(diskDir, 'by-partlabel', spec.slice('PARTLABEL='.length));
  // udev lowercases GPT partition UUIDs in its link names.
  if (spec.startsWith('PARTUUID=')) return join(diskDir, 'by-partuuid', spec.slice('PARTUUID='.length).toLowerCase());
  return spec;
}

export function slotPaths(config: AgentConfig): Record<Slot, string> {
  return { A: slotPath(config.slots.A, config.diskDir), B: slotPath(config.slots.B, config.diskDir) };
}

/**
 * True when `slot` is (or holds) the running root. `root` is a directory (`/`:
 * its filesystem's device number), a block device, or — for tests — a file.
 */
export async function isRunningRoot(root: string, slot: string): Promise<boolean> {
  const [r, s] = await Promise.all([stat(root, { bigint: true }), stat(slot, { bigint: true }).catch(() => undefined)]);
  if (s === undefined) return false;
  if (r.isDirectory()) return s.isBlockDevice() && s.rdev === r.dev;
  if (r.isBlockDevice() && s.isBlockDevice()) return r.rdev === s.rdev;
  if (r.dev === s.dev && r.ino === s.ino) return true;
  return (await realpath(root)) === (await realpath(slot).catch(() => slot));
}

/** `tandem.slot=A` on the kernel command line (the GRUB and U-Boot scripts append it). */
export async function bootedSlotFromCmdline(cmdlinePath: string): Promise<Slot | undefined> {
  const text = await readFile(cmdlinePath, 'utf8').catch(() => '');
  const m = /(?:^|\s)tandem\.slot=([AB])(?:\s|$)/.exec(text);
  return m ? (m[1] as Slot) : undefined;
}

export interface BootFacts {
  booted: Slot;
  boot: BootState;
  /** Set when the boot environment could not be read: `boot` is then what the bootloader acts on (its safe default). */
  bootEnvUnreadable?: TandemError;
}

/**
 * The slot the device runs from, by the configured source: the kernel command
 * line, the bootloader's TANDEM_BOOTED, or (auto) those then the root device.
 */
export async function detectBootedSlot(config: AgentConfig, control: BootControl): Promise<BootFacts> {
  let boot: BootState;
  let bootEnvUnreadable: TandemError | undefined;
  try {
    boot = await control.read();
  } catch (err) {
    // A torn or missing env is what the bootloader met too: it booted its safe default, and so reads it here.
    if (!isTandemError(err, 'ERR_BOOTENV_CORRUPT') && !isTandemError(err, 'ERR_BOOTENV_MISSING')) throw err;
    boot = bootStateFromVars(new Map());
    bootEnvUnreadable = err;
  }
  const paths = slotPaths(config);
  let booted: Slot | undefined;
  if (config.bootedSlotFrom !== 'bootenv') booted = await bootedSlotFromCmdline(config.cmdlinePath);
  if (booted === undefined && config.bootedSlotFrom !== 'cmdline') booted = bootEnvUnreadable ? decideBoot(null).boot : boot.booted;
  if (booted === undefined && config.bootedSlotFrom === 'auto') {
    for (const slot of ['A', 'B'] as const) if (await isRunningRoot(config.rootDevice, paths[slot])) booted = slot;
  }
  if (!isSlot(booted)) {
    throw new TandemError('ERR_SLOT_UNKNOWN', `Cannot tell which slot is running (bootedSlotFrom=${config.bootedSlotFrom}): no tandem.slot= on the kernel command line, no TANDEM_BOOTED in the boot environment, and neither slot is the root device.`);
  }
  return { booted, boot, ...(bootEnvUnreadable ? { bootEnvUnreadable } : {}) };
}

/**
 * Refuses a configuration under which the agent would write the running root:
 * the slot it would install into (the other one) must not be the root device.
 */
export async function checkTargetIsNotRoot(config: AgentConfig, booted: Slot): Promise<void> {
  const target = otherSlot(booted);
  const path = slotPaths(config)[target];
  if (await isRunningRoot(config.rootDevice, path)) {
    throw new TandemError('ERR_SLOT_IS_ROOT', `Slot ${target} (${config.slots[target]}) is the running root device, yet the boot environment says slot ${booted} is running: fix slots or the boot environment; the agent never writes the running root.`, {
      details: { slot: target, path, rootDevice: config.rootDevice },
    });
  }
}

/**
 * Bytes a slot can hold: a block device's size from sysfs (512-byte sectors),
 * undefined for a file (it grows) or when sysfs cannot tell.
 */
export async function slotCapacity(path: string): Promise<number | undefined> {
  const s = await stat(path, { bigint: true }).catch(() => undefined);
  if (s === undefined || !s.isBlockDevice()) return undefined;
  const major = Number((s.rdev >> 8n) & 0xfffn);
  const minor = Number((s.rdev & 0xffn) | ((s.rdev >> 12n) & 0xfff00n));
  const sectors = await readFile(`/sys/dev/block/${major}:${minor}/size`, 'utf8').catch(() => undefined);
  return sectors === undefined ? undefined : Number(sectors.trim()) * 512;
}
