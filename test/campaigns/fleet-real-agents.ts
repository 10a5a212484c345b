/**
 * The real agents that run alongside the simulated fleet: DeviceAgent
 * (agent/agent.ts) with real file slots, a JSON boot environment and the
 * state folder, as in test/agent/agent-server-e2e.test.ts. They download and
 * apply real payloads, verify every byte, and commit or roll back after
 * health checks. Faked, because it cannot happen here: the reboot (the agent
 * is closed, the boot environment goes through simulateReboot as the
 * bootloader would leave it, and a new agent opens the same state folder),
 * and the application a health check probes (a marker file the command
 * `test ! -e` looks at, set when this device's health fails on the failing
 * release, by the same rule as the simulated devices).
 *
 * Their traffic is counted in the same ledger as the simulated devices', by
 * a pass-through on loopback between them and the server (CountingProxy):
 * each check-in and event batch the server answered with a 2xx, parsed from
 * the request and the response bytes the agent itself received.
 */
import { mkdir, rm, writeFile } from 'node:fs/promises';
import { Agent as HttpAgent, createServer, request as httpRequest, type IncomingMessage, type Server, type ServerResponse } from 'node:http';
import type { AddressInfo, Socket } from 'node:net';
import { join } from 'node:path';
import { DeviceAgent, type CycleResult } from '../../agent/agent.ts';
import { backoffSeconds, pollSeconds } from '../../agent/backoff.ts';
import { toTandemError } from '../../shared/errors.ts';
import type { DeviceEvent } from '../../shared/schemas/protocol.ts';
import { makeDevice, type Device } from '../agent/harness.ts';
import { FleetLedger, healthFails, type AgentPollPolicy, type SimClock } from './fleet-device.ts';

export interface RealAgentOptions {
  dir: string;
  url: string;
  rootPublicKey: Buffer;
  /** The factory image in slot A, and its version. */
  image: Buffer;
  version: string;
  product: string;
  board: string;
  enrollToken: string;
  count: number;
  failingVersion: string;
  failBp: number;
}

/** Reboot time of a real agent's device, in policy seconds (what the compressed clock waits). */
const REBOOT_SECONDS = 60;

/** The agent's defaults, as loadConfig fills them in (poll policy, health deadline), from a probe device's config. */
export async function agentDefaults(dir: string, url: string, rootPublicKey: Buffer): Promise<{ poll: AgentPollPolicy; healthDeadlineSeconds: number }> {
  const probe = await makeDevice(join(dir, 'probe'), { server: url, keys: { root: { publicKey: rootPublicKey } }, version: '1.0.0', image: Buffer.alloc(4096), overrides: { poll: {}, health: {} } });
  const config = await probe.config();
  await rm(probe.dir, { recursive: true, force: true });
  return { poll: { ...config.poll }, healthDeadlineSeconds: config.health.deadlineSeconds };
}

/** Ids `fleet-agent-<k>`: the first whose health fails on the failing release, then passing ones, so both paths have a real agent. */
export function realAgentIds(count: number, failBp: number): string[] {
  const failing: string[] = [];
  const passing: string[] = [];
  for (let k = 0; failing.length + passing.length < count && k < 100_000; k++) {
    const id = `fleet-agent-${k}`;
    if (healthFails(id, failBp)) {
      if (failing.length === 0) failing.push(id);
    } else if (passing.length < count - 1 || failBp === 0) passing.push(id);
  }
  return [...failing, ...passing];
}

interface RealDevice {
  id: string;
  dev: Device;
  unhealthyMarker: string;
}

export class RealAgents {
  ledger: FleetLedger;
  /** Cycle results by kind, and failed cycles ("id: code: message"): the latter must stay empty. */
  readonly results: Record<string, number> = {};
  readonly errors: string[] = [];
  private readonly abort = new AbortController();
  readonly signal = this.abort.signal;
  private running: Promise<void[]> | undefined;

  private constructor(readonly options: RealAgentOptions, readonly devices: RealDevice[], readonly poll: AgentPollPolicy, private readonly proxy: CountingProxy) {
    this.ledger = new FleetLedger(options.failingVersion, () => NaN);
    proxy.ledger = this.ledger;
  }

  static async create(options: RealAgentOptions, poll: AgentPollPolicy): Promise<RealAgents> {
    const proxy = await new CountingProxy(options.url).start();
    const devices: RealDevice[] = [];
    for (const id of realAgentIds(options.count, options.failBp)) {
      const dir = join(options.dir, id);
      await mkdir(dir, { recursive: true });
      const unhealthyMarker = join(dir, 'app-unhealthy');
      const dev = await makeDevice(dir, {
        server: proxy.url,
        keys: { root: { publicKey: options.rootPublicKey } },
        version: options.version,
        image: options.image,
        product: options.product,
        board: options.board,
        overrides: {
          deviceId: id,
          // The agent's default poll policy: the compressed clock, not the config, makes it fast.
          poll: {},
          health: { deadlineSeconds: 0.5, intervalSeconds: 0.1, checks: [{ type: 'command', name: 'app', command: ['test', '!', '-e', unhealthyMarker] }] },
        },
      });
      const agent = await DeviceAgent.open(await dev.config());
      try {
        await agent.enroll(options.enrollToken);
      } finally {
        await agent.close();
      }
      devices.push({ id, dev, unhealthyMarker });
    }
    return new RealAgents(options, devices, poll, proxy);
  }

  get ids(): string[] {
    return this.devices.map((d) => d.id);
  }

  /** The clock must run on this instance's signal (`signal`). */
  start(clock: SimClock): void {
    this.ledger = new FleetLedger(this.options.failingVersion, () => clock.now());
    this.proxy.ledger = this.ledger;
    this.running = Promise.all(this.devices.map((d) => this.life(d, clock)));
  }

  async stop(): Promise<void> {
    this.abort.abort();
    await this.running;
    await this.proxy.close();
  }

  /** The agent daemon's loop (DeviceAgent.run), one cycle per agent process, with the reboots simulated. */
  private async life(device: RealDevice, clock: SimClock): Promise<void> {
    const { signal } = this.abort;
    await clock.sleep(Math.random() * this.poll.intervalSeconds);
    let errors = 0;
    while (!signal.aborted) {
      let result: CycleResult | undefined;
      const agent = await DeviceAgent.open(await device.dev.config());
      try {
        result = await agent.cycle();
        errors = 0;
      } catch (err) {
        errors++;
        const error = toTandemError(err);
        this.errors.push(`${device.id}: ${error.code}: ${error.message}`);
      } finally {
        await agent.close();
      }
      this.results[result?.result ?? 'failed'] = (this.results[result?.result ?? 'failed'] ?? 0) + 1;
      let wait: number;
      let reboot = false;
      switch (result?.result) {
        case undefined:
          wait = backoffSeconds(errors - 1, this.poll.errorBackoffBaseSeconds, this.poll.errorBackoffMaxSeconds);
          break;
        case 'noUpdate':
          wait = pollSeconds(result.pollAfterSeconds, this.poll);
          break;
        case 'installed':
        case 'rebootPending':
          // The application on the new slot: broken when this device fails the failing release.
          if (result.version === this.options.failingVersion && healthFails(device.id, this.options.failBp)) await writeFile(device.unhealthyMarker, '');
          else await rm(device.unhealthyMarker, { force: true });
          reboot = true;
          wait = REBOOT_SECONDS;
          break;
        case 'rollingBack':
          reboot = true;
          wait = REBOOT_SECONDS;
          break;
        case 'committed':
        case 'rolledBack':
          wait = pollSeconds(undefined, this.poll);
          break;
      }
      if (!(await clock.sleep(wait))) break;
      if (reboot) {
        await device.dev.clearRebootRequest();
        await device.dev.reboot();
      }
    }
  }
}

/**
 * A loopback pass-through between the real agents and the server that counts
 * what the server acknowledged: every request and response goes through
 * unchanged (payload downloads included, streamed), and each POST /v1/check
 * and /v1/events the server answered with a 2xx is fed to the ledger from
 * the request body and the response bytes the agent receives. Independent of
 * how the agent speaks HTTP.
 */
export class CountingProxy {
  url = '';
  private readonly server: Server;
  private readonly upstream = new HttpAgent({ keepAlive: true });
  private readonly sockets = new Set<Socket>();

  /** Where acknowledged traffic is counted. */
  ledger: FleetLedger | undefined;

  constructor(private readonly target: string) {
    this.server = createServer((req, res) => {
      void this.forward(req, res).catch(() => res.destroy());
    });
    this.server.on('connection', (socket) => {
      this.sockets.add(socket);
      socket.on('close', () => this.sockets.delete(socket));
    });
  }

  async start(): Promise<this> {
    await new Promise<void>((resolve) => this.server.listen(0, '127.0.0.1', resolve));
    this.url = `http://127.0.0.1:${(this.server.address() as AddressInfo).port}`;
    return this;
  }

  async close(): Promise<void> {
    for (const socket of this.sockets) socket.destroy();
    await new Promise<void>((resolve) => this.server.close(() => resolve()));
    this.upstream.destroy();
  }

  private async forward(req: IncomingMessage, res: ServerResponse): Promise<void> {
    const chunks: Buffer[] = [];
    for await (const chunk of req) chunks.push(chunk as Buffer);
    const body = Buffer.concat(chunks);
    const route = req.method === 'POST' ? new URL(req.url ?? '/', 'http://x').pathname : '';
    const counted = route === '/v1/check' || route === '/v1/events';
    const sentAt = Date.now();
    const headers = { ...req.headers };
    delete headers.host;
    delete headers.connection;
    const up = httpRequest(`${this.target}${req.url ?? '/'}`, { method: req.method, headers, agent: this.upstream });
    up.on('response', (answer) => {
      res.writeHead(answer.statusCode ?? 502, answer.headers);
      const received: Buffer[] = [];
      answer.on('data', (chunk: Buffer) => {
        if (counted) received.push(chunk);
        res.write(chunk);
      });
      answer.on('end', () => {
        res.end();
        if (counted) this.count(route, answer.statusCode ?? 0, body, Buffer.concat(received), sentAt);
      });
      answer.on('error', () => res.destroy());
    });
    up.on('error', (err) => {
      if (counted) this.ledger?.failed(`POST ${route} ${(err as NodeJS.ErrnoException).code ?? 'network'}`);
      res.destroy();
    });
    up.end(body);
  }

  private count(route: string, status: number, requestBytes: Buffer, responseBytes: Buffer, sentAt: number): void {
    const ledger = this.ledger;
    if (ledger === undefined) return;
    if (status < 200 || status >= 300) {
      ledger.failed(`POST ${route} ${status}`);
      return;
    }
    try {
      const request = JSON.parse(requestBytes.toString('utf8')) as { deviceId: string; version?: string; events?: DeviceEvent[] };
      const answer = JSON.parse(responseBytes.toString('utf8')) as { body?: { update?: { version?: string } }; accepted?: number; duplicates?: number };
      if (route === '/v1/check') ledger.checked(request.deviceId, request.version!, answer.body?.update?.version, sentAt);
      else ledger.acked(request.deviceId, request.events!, answer, false);
    } catch (err) {
      ledger.failed(`POST ${route} unparsable (${(err as Error).message})`);
    }
  }
}
