/** `tandem-server [--listen HOST:PORT] [--data DIR] [--config FILE]`: the update server (`npm start` runs it on the defaults). */
import { join } from 'node:path';
import { EXIT, parseCommandArgs, processIo, reportError } from './cli-kit.ts';
import { readConfigFile, startServer, type ServerConfigInput } from '../server/index.ts';

async function main(argv: string[]): Promise<number> {
  const { values } = parseCommandArgs(argv, {
    listen: { type: 'string' },
    data: { type: 'string' },
    config: { type: 'string' },
    help: { type: 'boolean', short: 'h' },
  }, false);
  if (values.help) {
    processIo.stdout.write('usage: tandem-server [--listen HOST:PORT] [--data DIR] [--config FILE]\n');
    return EXIT.ok;
  }
  const file: ServerConfigInput | undefined = values.config === undefined ? undefined : await readConfigFile(values.config);
  const server = await startServer({
    dataDir: values.data ?? file?.dataDir ?? './data',
    ...(values.listen === undefined ? {} : { listen: values.listen }),
    ...(file === undefined ? {} : { config: file }),
  });
  const k = server.keys;
  processIo.stderr.write(
    [
      '',
      `tandem-server listening on ${server.url}`,
      `  data:          ${server.config.dataDir}`,
      `  admin token:   ${join(server.config.dataDir, 'admin-token')} (bootstrap, role admin)`,
      `  root key:      ${k.rootPublicKeyPath}${k.created ? ' (development keys created now)' : ''}`,
      `  keyring:       ${k.keyringPath}`,
      '',
      'Enroll a device:',
      `  export TANDEM_SERVER=${server.url} TANDEM_TOKEN=$(cat ${join(server.config.dataDir, 'admin-token')})`,
      '  tandem token create --enroll --product PRODUCT --channel stable',
      `  then give the agent the server URL, that enrollment token and the root public key ${k.rootPublicKeyPath}`,
      '',
    ].join('\n'),
  );
  await new Promise<void>((resolve) => {
    const stop = () => resolve();
    process.once('SIGINT', stop);
    process.once('SIGTERM', stop);
  });
  await server.close();
  return EXIT.ok;
}

try {
  process.exitCode = await main(process.argv.slice(2));
} catch (err) {
  process.exitCode = reportError(err, processIo, false);
}
