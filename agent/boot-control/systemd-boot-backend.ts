/**
 * Boot control for systemd-boot (BOOTLOADERS.md §4): no environment block and
 * no script. The try counter lives in the names of the Boot Loader
 * Specification entries on the ESP, one per slot:
 *
 *   <esp>/loader/entries/<prefix>-<gen>-<slot>[+LEFT[-DONE]].conf     e.g. tandem-7-b+3.conf
 *
 * What systemd-boot does with them at every boot (systemd 252, src/boot/efi/boot.c):
 * it sorts the entries, those with no tries left (`+0…`, "bad") last, the rest
 * by id (the file name, lowercased), newest first in strverscmp_improved order;
 * starts the first; and, if that entry has a counter, renames it first,
 * LEFT − 1 and DONE + 1 (`+3` → `+2-1` → `+1-2` → `+0-3`). A bad entry sorts
 * after the other slot, so it falls back by itself. The OS "blesses" an entry by
 * renaming it without the counter. `chooseSystemdBootEntry` is that choice as a
 * pure function (the QEMU test holds real systemd-boot to it).
 *
 * How Tandem maps onto it: `<gen>` orders the slots. A trial gets a generation
 * above the other slot's and a counter; confirming removes the counter; the
 * agent marks a slot bad with `+0` (no DONE), the bootloader leaves `+0-N` when
 * it ran out of tries, which is how `fallbackFrom` is told apart. Each verb is
 * one rename, or two ordered so that every state in between boots the same
 * slot; the entries folder is fsynced after each. (FAT renames are what
 * systemd-boot and systemd-bless-boot rely on too.)
 *
 * Requirements: no `default` in loader.conf and no LoaderEntryDefault /
 * LoaderEntryOneShot EFI variable (they pin an entry, bad or not); no
 * `sort-key` in any entry (systemd-boot would order by it, before names);
 * entries of other systems must sort after Tandem's. The installer writes each
 * slot's entry (title, linux/initrd or efi, options); this backend only renames it.
 *
 * Which entry systemd-boot started comes from the volatile EFI variable
 * LoaderEntrySelected (its id before the rename). It tells a slot running its
 * last try (its entry now `+0-N`: still active, on trial, no tries left, as
 * with the env backends) from the other slot started after a fallback. Without
 * efivarfs, `booted` is unknown and `active` is simply the entry systemd-boot
 * starts next.
 */
import { open, readFile, readdir, rename, stat } from 'node:fs/promises';
import { join } from 'node:path';
import { TandemError } from '../../shared/errors.ts';
import { MAX_TRIES, SLOTS, backendError, isSlot, otherSlot } from './boot-control.ts';
import type { BootControl, BootState, Slot } from './boot-control.ts';

export interface SystemdBootControlConfig {
  kind: 'systemd-boot';
  /** Where the ESP (or XBOOTLDR) is mounted: the entries are in `<esp>/loader/entries`. */
  esp: string;
  /** Entry name prefix (default 'tandem'): lowercase letters, digits, '_' and '-', starting with a letter. */
  prefix?: string;
  /** Where efivarfs is mounted (default /sys/firmware/efi/efivars), for LoaderEntrySelected. */
  efivars?: string;
}

/** systemd-boot's vendor GUID for its Loader* variables. */
export const LOADER_GUID = '4a67b082-0a4c-41cf-b6c7-440b29bb8c4f';

// ---------------------------------------------------------------------------
// What systemd-boot does, as pure functions

/** A boot counter in an entry file name, parsed as systemd-boot does (config_entry_parse_tries). */
export interface BootCounter {
  /** The name before the `+`. */
  base: string;
  left: number;
  /** 0 when the name has no `-DONE`. */
  done: number;
  /** The name systemd-boot renames the file to when it starts it. */
  next: string;
}

/**
 * The counter of `file` (`NAME+LEFT[-DONE].conf`), or undefined when it has
 * none: the last `+` must be followed by digits, optionally `-` and digits,
 * then exactly `.conf`.
 */
export function parseBootCounter(file: string, suffix = '.conf'): BootCounter | undefined {
  const plus = file.lastIndexOf('+');
  if (plus < 0) return undefined;
  const m = /^(\d+)(?:-(\d+))?(.*)$/s.exec(file.slice(plus + 1));
  if (m === null || m[3] !== suffix) return undefined;
  const left = Number(m[1]);
  const done = m[2] === undefined ? 0 : Number(m[2]);
  if (left > 0x7fffffff || done > 0x7fffffff) return undefined;
  const base = file.slice(0, plus);
  return { base, left, done, next: `${base}+${Math.max(left - 1, 0)}-${Math.min(done + 1, 0x7fffffff)}${suffix}` };
}

/**
 * systemd's strverscmp_improved (src/fundamental/string-util-fundamental.c):
 * version-aware comparison, '-' and '.' separating segments, numbers by value,
 * '~' older than anything. Negative, zero or positive like strcmp.
 */
export function strverscmpImproved(a: string, b: string): number {
  const isDigit = (c: string) => c >= '0' && c <= '9';
  const isAlpha = (c: string) => (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z');
  const isValid = (c: string) => isDigit(c) || isAlpha(c) || c === '~' || c === '-' || c === '^' || c === '.';
  const cmp = (x: number, y: number) => (x < y ? -1 : x > y ? 1 : 0);
  const at = (s: string, i: number) => s[i] ?? '';
  let i = 0;
  let j = 0;
  for (;;) {
    while (i < a.length && !isValid(at(a, i))) i++;
    while (j < b.length && !isValid(at(b, j))) j++;
    if (at(a, i) === '~' || at(b, j) === '~') {
      const r = cmp(+(at(a, i) !== '~'), +(at(b, j) !== '~'));
      if (r !== 0) return r;
      i++;
      j++;
    }
    if (i >= a.length || j >= b.length) return cmp(+(i < a.length), +(j < b.length));
    for (const sep of ['-', '^', '.']) {
      if (at(a, i) === sep || at(b, j) === sep) {
        const r = cmp(+(at(a, i) !== sep), +(at(b, j) !== sep));
        if (r !== 0) return r;
        i++;
        j++;
      }
    }
    let ii = i;
    let jj = j;
    if (isDigit(at(a, i)) || isDigit(at(b, j))) {
      while (isDigit(at(a, ii))) ii++;
      while (isDigit(at(b, jj))) jj++;
      const r = cmp(+(ii > i), +(jj > j));
      if (r !== 0) return r;
      while (at(a, i) === '0') i++;
      while (at(b, j) === '0') j++;
      // Same number of significant digits: compare them as text.
      const byLength = cmp(ii - i, jj - j);
      if (byLength !== 0) return byLength;
      const x = a.slice(i, ii);
      const y = b.slice(j, jj);
      if (x !== y) return x < y ? -1 : 1;
    } else {
      while (isAlpha(at(a, ii))) ii++;
      while (isAlpha(at(b, jj))) jj++;
      const n = Math.min(ii - i, jj - j);
      const x = a.slice(i, i + n);
      const y = b.slice(j, j + n);
      if (x !== y) return x < y ? -1 : 1;
      const byLength = cmp(ii - i, jj - j);
      if (byLength !== 0) return byLength;
    }
    i = ii;
    j = jj;
  }
}

/**
 * systemd-boot's order of Type #1 entry files without sort-key
 * (config_entry_compare): bad entries (no tries left) last, then by id
 * descending, then more tries left first, then fewer done.
 */
export function compareEntryFiles(a: string, b: string): number {
  const ca = parseBootCounter(a);
  const cb = parseBootCounter(b);
  const badA = ca?.left === 0;
  const badB = cb?.left === 0;
  if (badA !== badB) return badA ? 1 : -1;
  const byId = strverscmpImproved(b.toLowerCase(), a.toLowerCase()); // descending: newest first
  if (byId !== 0 || ca === undefined || cb === undefined) return byId;
  return cb.left - ca.left || ca.done - cb.done;
}

/**
 * The entry systemd-boot starts among `files` (bootable Type #1 entries, no
 * sort-key, no default configured), the name it renames that file to before
 * starting it (undefined: no counter, no rename), and the id it reports in
 * LoaderEntrySelected. Undefined when there is no entry.
 */
export function chooseSystemdBootEntry(files: readonly string[]): { file: string; renamedTo?: string; id: string } | undefined {
  const [first] = [...files].sort(compareEntryFiles);
  if (first === undefined) return undefined;
  const counter = parseBootCounter(first);
  return counter === undefined ? { file: first, id: first.toLowerCase() } : { file: first, renamedTo: counter.next, id: first.toLowerCase() };
}

// ---------------------------------------------------------------------------
// Tandem's entries

export interface SlotEntry {
  file: string;
  slot: Slot;
  gen: number;
  /** The boot counter; undefined for a blessed (good) entry. */
  counter?: BootCounter;
  /** systemd-boot lists it: it names a `linux` or `efi` image that exists on the ESP. */
  bootable: boolean;
}

function entryPattern(prefix: string): RegExp {
  return new RegExp(`^${prefix}-(\\d+)-([ab])(?:\\+\\d+(?:-\\d+)?)?\\.conf$`);
}

/** The slot an entry file name or LoaderEntrySelected id belongs to (a counter is allowed either way). */
export function slotOfEntryId(id: string, prefix = 'tandem'): Slot | undefined {
  const m = new RegExp(`^${prefix}-\\d+-([ab])(?:\\+\\d+(?:-\\d+)?)?(?:\\.conf)?$`).exec(id.toLowerCase());
  return m === null ? undefined : (m[1]!.toUpperCase() as Slot);
}

/**
 * The BootState the entries stand for (pure). `selected` is LoaderEntrySelected,
 * when known. Only bootable entries count: systemd-boot does not list the others.
 */
export function systemdBootState(entries: Partial<Record<Slot, SlotEntry>>, selected?: string, prefix = 'tandem'): BootState {
  const bootable = SLOTS.map((s) => entries[s]).filter((e): e is SlotEntry => e !== undefined && e.bootable);
  const first = chooseSystemdBootEntry(bootable.map((e) => e.file));
  if (first === undefined) {
    throw new TandemError('ERR_BOOTENV_MISSING', `No bootable ${prefix}-<gen>-<slot>.conf entry.`);
  }
  const next = bootable.find((e) => e.file === first.file)!;
  const booted = selected === undefined ? undefined : slotOfEntryId(selected, prefix);
  const bootedEntry = booted === undefined ? undefined : entries[booted];
  // Started on its last try: the bootloader already counted it down to +0-N, yet it is running, on trial.
  const lastTry = bootedEntry?.counter !== undefined && bootedEntry.counter.left === 0 && bootedEntry.counter.done > 0 ? bootedEntry : undefined;
  const active = lastTry ?? next;
  const trial = active.counter !== undefined && (active.counter.left > 0 || active === lastTry);
  const state: BootState = {
    active: active.slot,
    trial,
    triesLeft: trial ? active.counter!.left : 0,
    good: { A: isGood(entries.A), B: isGood(entries.B) },
  };
  if (booted !== undefined) state.booted = booted;
  const fellBack = bootable.find((e) => e !== active && e.counter !== undefined && e.counter.left === 0 && e.counter.done > 0);
  if (fellBack !== undefined) state.fallbackFrom = fellBack.slot;
  return state;
}

const isGood = (e: SlotEntry | undefined) => e !== undefined && e.bootable && e.counter === undefined;

// ---------------------------------------------------------------------------
// The backend

export class SystemdBootControl implements BootControl {
  readonly kind = 'systemd-boot';
  readonly entriesDir: string;
  readonly prefix: string;
  readonly efivars: string;
  // One change at a time, so two verbs never interleave their renames.
  private queue: Promise<unknown> = Promise.resolve();

  constructor(readonly esp: string, options: { prefix?: string; efivars?: string } = {}) {
    this.prefix = options.prefix ?? 'tandem';
    if (!/^[a-z][a-z0-9_-]*$/.test(this.prefix)) {
      throw new TandemError('ERR_BOOTENV_CONFIG', `Entry prefix ${JSON.stringify(this.prefix)}: use lowercase letters, digits, '_' and '-', starting with a letter.`);
    }
    this.entriesDir = join(esp, 'loader', 'entries');
    this.efivars = options.efivars ?? '/sys/firmware/efi/efivars';
  }

  read(): Promise<BootState> {
    return this.run(async () => systemdBootState(await this.entries(), await this.selected(), this.prefix));
  }

  setTrial(slot: Slot, tries: number): Promise<void> {
    return this.run(async () => {
      checkSlot(slot);
      if (!Number.isInteger(tries) || tries < 1 || tries > MAX_TRIES) {
        throw new TandemError('ERR_BOOTENV_INVALID', `Tries must be an integer from 1 to ${MAX_TRIES}, not ${tries}.`, { details: { tries } });
      }
      const entries = await this.entries();
      const target = this.bootableEntry(entries, slot);
      const other = entries[otherSlot(slot)];
      // The other slot's record of a spent trial goes, as TANDEM_FALLBACK does; it stays bad (+0).
      if (other?.counter !== undefined && other.counter.left === 0 && other.counter.done > 0) {
        await this.rename(other, this.name(other.gen, other.slot, '+0'));
      }
      const gen = Math.max(...Object.values(entries).map((e) => e.gen)) + 1;
      await this.rename(target, this.name(gen, slot, `+${tries}`));
    });
  }

  markGood(slot: Slot): Promise<void> {
    return this.run(async () => {
      checkSlot(slot);
      const entries = await this.entries();
      const target = this.bootableEntry(entries, slot);
      const state = systemdBootState(entries, await this.selected(), this.prefix);
      const other = entries[otherSlot(slot)];
      if (state.active === slot) {
        // Blessed, and first by name too, so it stays first whatever the other entry becomes.
        const gen = other !== undefined && other.gen >= target.gen ? other.gen + 1 : target.gen;
        await this.rename(target, this.name(gen, slot));
        return;
      }
      // Not the active slot: it must stay below the active one once blessed. Raise the active one first.
      const active = entries[state.active];
      if (active !== undefined && active.gen <= target.gen) {
        await this.rename(active, this.name(target.gen + 1, active.slot, counterSuffix(active)));
      }
      await this.rename(target, this.name(target.gen, slot));
    });
  }

  markBad(slot: Slot): Promise<void> {
    return this.run(async () => {
      checkSlot(slot);
      const entries = await this.entries();
      const target = entries[slot];
      if (target === undefined) return; // no entry: systemd-boot cannot start it anyway
      const wasActive = systemdBootState(entries, await this.selected(), this.prefix).active === slot;
      // Already bad and not running its last try: keep the name, and with it the bootloader's fallback record.
      if (wasActive || target.counter?.left !== 0) await this.rename(target, this.name(target.gen, slot, '+0'));
      const other = entries[otherSlot(slot)];
      // The other slot boots next with no trial: with systemd-boot that means without a counter.
      if (wasActive && other?.counter !== undefined) await this.rename(other, this.name(other.gen, other.slot));
    });
  }

  /** Tandem's entries by slot. ERR_BOOTENV_MISSING when there are none, _CORRUPT for two of one slot, _CONFIG for a sort-key. */
  private async entries(): Promise<Partial<Record<Slot, SlotEntry>>> {
    let files: string[];
    try {
      files = await readdir(this.entriesDir);
    } catch (err) {
      if ((err as NodeJS.ErrnoException).code === 'ENOENT') {
        throw new TandemError('ERR_BOOTENV_MISSING', `${this.entriesDir} does not exist.`, { cause: err, details: { path: this.entriesDir } });
      }
      throw err;
    }
    const pattern = entryPattern(this.prefix);
    const entries: Partial<Record<Slot, SlotEntry>> = {};
    for (const file of files.sort()) {
      const m = pattern.exec(file);
      if (m === null) continue;
      const slot = m[2]!.toUpperCase() as Slot;
      if (entries[slot] !== undefined) {
        throw new TandemError('ERR_BOOTENV_CORRUPT', `Two entries for slot ${slot}: ${entries[slot].file} and ${file}.`, { details: { files: [entries[slot].file, file] } });
      }
      const counter = parseBootCounter(file);
      entries[slot] = { file, slot, gen: Number(m[1]), ...(counter ? { counter } : {}), bootable: await this.isBootable(file) };
    }
    if (entries.A === undefined && entries.B === undefined) {
      throw new TandemError('ERR_BOOTENV_MISSING', `No ${this.prefix}-<gen>-<a|b>.conf entry in ${this.entriesDir}.`, { details: { path: this.entriesDir } });
    }
    return entries;
  }

  /** As systemd-boot decides whether to list an entry: it names a `linux` or `efi` image that exists. */
  private async isBootable(file: string): Promise<boolean> {
    const text = await readFile(join(this.entriesDir, file), 'latin1');
    let image: string | undefined;
    for (const line of text.split('\n')) {
      const m = /^\s*(\S+)\s+(.*?)\s*$/.exec(line);
      if (m === null || line.trimStart().startsWith('#')) continue;
      if (m[1] === 'sort-key') {
        throw new TandemError('ERR_BOOTENV_CONFIG', `${file} has a sort-key: systemd-boot would order the slots by it instead of by name.`, { details: { file } });
      }
      if (m[1] === 'linux' || m[1] === 'efi') image = m[2];
    }
    if (image === undefined) return false;
    return stat(join(this.esp, ...image.split(/[\\/]+/).filter(Boolean))).then(
      (s) => s.isFile(),
      () => false,
    );
  }

  private bootableEntry(entries: Partial<Record<Slot, SlotEntry>>, slot: Slot): SlotEntry {
    const entry = entries[slot];
    if (entry === undefined || !entry.bootable) {
      throw new TandemError(
        'ERR_BOOTENV_MISSING',
        entry === undefined
          ? `No entry for slot ${slot} (${this.prefix}-<gen>-${slot.toLowerCase()}.conf): install it first.`
          : `${entry.file} names no linux or efi image present on the ESP: systemd-boot would not list it.`,
        { details: { slot } },
      );
    }
    return entry;
  }

  /** LoaderEntrySelected: 4 bytes of attributes, then the id in UTF-16LE with its NUL. Undefined without efivarfs. */
  private async selected(): Promise<string | undefined> {
    let raw: Buffer;
    try {
      raw = await readFile(join(this.efivars, `LoaderEntrySelected-${LOADER_GUID}`));
    } catch {
      return undefined;
    }
    const id = raw.subarray(4, raw.length - ((raw.length - 4) % 2)).toString('utf16le').replace(/\0+$/, '');
    return id === '' ? undefined : id;
  }

  private name(gen: number, slot: Slot, counter = ''): string {
    return `${this.prefix}-${gen}-${slot.toLowerCase()}${counter}.conf`;
  }

  /** One rename in the entries folder, made durable: systemd-boot reads the folder at the next boot. */
  private async rename(entry: SlotEntry, to: string): Promise<void> {
    if (entry.file === to) return;
    await rename(join(this.entriesDir, entry.file), join(this.entriesDir, to));
    const dir = await open(this.entriesDir, 'r');
    try {
      await dir.sync();
    } finally {
      await dir.close();
    }
  }

  private run<T>(task: () => Promise<T>): Promise<T> {
    const result = this.queue.then(task).catch((err: unknown) => {
      throw backendError(this.kind, err);
    });
    this.queue = result.catch(() => undefined);
    return result;
  }
}

function counterSuffix(entry: SlotEntry): string {
  const c = entry.counter;
  if (c === undefined) return '';
  return entry.file.slice(c.base.length, -'.conf'.length);
}

function checkSlot(slot: unknown): asserts slot is Slot {
  if (!isSlot(slot)) throw new TandemError('ERR_BOOTENV_INVALID', `Slot must be "A" or "B", not ${JSON.stringify(slot)}.`);
}

export function createSystemdBootControl(config: SystemdBootControlConfig): SystemdBootControl {
  if (typeof config.esp !== 'string' || config.esp === '') throw new TandemError('ERR_BOOTENV_CONFIG', 'systemd-boot needs the ESP mount point (esp).');
  return new SystemdBootControl(config.esp, {
    ...(config.prefix !== undefined ? { prefix: config.prefix } : {}),
    ...(config.efivars !== undefined ? { efivars: config.efivars } : {}),
  });
}
