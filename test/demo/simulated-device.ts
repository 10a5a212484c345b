/**
 * One device of the demo fleet: the agent tests' device on disk (two slot
 * files, a JSON boot env for the `file` boot-control backend, a state folder
 * and an agent.json: makeDevice in test/agent/harness.ts) driven by the real
 * DeviceAgent in this process.
 *
 * The agent is opened for one cycle and closed after it, like `tandem-agent
 * check` run by a timer. A reboot cannot happen here; it is simulated as the
 * agent tests do: with the agent closed (its process gone), the boot env goes
 * through decideBoot exactly as the GRUB or U-Boot script would leave it
 * (simulateReboot), and the next cycle opens a new agent on the same state
 * folder, which finds the slot it booted from the env.
 */
import { join } from 'node:path';
import { DeviceAgent, type CycleResult, type StatusReport } from '../../agent/agent.ts';
import type { BootState, Slot } from '../../agent/boot-control/index.ts';
import type { UpdateRecord } from '../../agent/state.ts';
import { makeDevice, type Device } from '../agent/harness.ts';

export interface DeviceSpec {
  /** The device id, also the name it has in the narration. */
  id: string;
  server: string;
  rootPublicKey: Buffer;
  product: string;
  board: string;
  /** The factory version and image in slot A. */
  version: string;
  image: Buffer;
  /** False: the device's app self-test (its health check) fails on any new slot. */
  healthy: boolean;
}

/** What one cycle did, with the facts the narration needs (read before the agent closes). */
export interface CycleReport {
  result: CycleResult;
  /** The update the agent worked on, as it stood at the end of the cycle. */
  update?: Pick<UpdateRecord, 'version' | 'kind' | 'size' | 'fromSlot' | 'toSlot' | 'fromVersion' | 'failure'>;
  booted: Slot;
  boot: BootState;
  /** The agent ran its reboot command (here `touch reboot-requested` in the device folder). */
  rebootRequested: boolean;
}

export const SELFTEST_FAILURE = 'app-selftest: sensor bus not responding';

export class SimulatedDevice {
  private constructor(
    readonly id: string,
    readonly healthy: boolean,
    readonly disk: Device,
  ) {}

  static async provision(dir: string, spec: DeviceSpec): Promise<SimulatedDevice> {
    const selftest = spec.healthy ? ['true'] : ['sh', '-c', `echo '${SELFTEST_FAILURE}' >&2; exit 1`];
    const disk = await makeDevice(join(dir, spec.id), {
      server: spec.server,
      keys: { root: { publicKey: spec.rootPublicKey } },
      version: spec.version,
      image: spec.image,
      product: spec.product,
      board: spec.board,
      overrides: {
        deviceId: spec.id,
        // A real device gives its services minutes (300 s by default); a failing check is retried until the deadline.
        health: { deadlineSeconds: 1, intervalSeconds: 0.2, checks: [{ type: 'command', name: 'app-selftest', command: selftest, timeoutSeconds: 5 }] },
      },
    });
    return new SimulatedDevice(spec.id, spec.healthy, disk);
  }

  async enroll(token: string, signal?: AbortSignal): Promise<void> {
    await this.withAgent(async (agent) => {
      await agent.enroll(token, signal);
    });
  }

  /** One agent run: resume what the last run left (a reboot to check, a rollback to report), else check in and install. */
  async cycle(signal?: AbortSignal): Promise<CycleReport> {
    await this.disk.clearRebootRequest();
    return this.withAgent(async (agent) => {
      const result = await agent.cycle(signal);
      const u = agent.state.update;
      return {
        result,
        ...(u ? { update: { version: u.version, kind: u.kind, size: u.size, fromSlot: u.fromSlot, toSlot: u.toSlot, fromVersion: u.fromVersion, ...(u.failure ? { failure: u.failure } : {}) } } : {}),
        booted: agent.booted,
        boot: agent.boot,
        rebootRequested: await this.disk.rebootRequested(),
      };
    });
  }

  /** Power-cycles the device: the bootloader's decision (decideBoot) is applied to the boot env; says what it started. */
  async reboot(): Promise<{ slot: Slot; trial: boolean; triesLeft: number }> {
    await this.disk.clearRebootRequest();
    const slot = await this.disk.reboot();
    const boot = await this.disk.control.read();
    return { slot, trial: boot.trial && boot.active === slot, triesLeft: boot.triesLeft };
  }

  /** What `tandem-agent status` shows. */
  async status(): Promise<StatusReport> {
    const agent = await DeviceAgent.open(await this.disk.config(), { readOnly: true });
    try {
      return await agent.status();
    } finally {
      await agent.close();
    }
  }

  private async withAgent<T>(run: (agent: DeviceAgent) => Promise<T>): Promise<T> {
    const agent = await DeviceAgent.open(await this.disk.config());
    try {
      return await run(agent);
    } finally {
      await agent.close();
    }
  }
}
