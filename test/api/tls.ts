/** A throwaway certificate for a local https receiver (webhook tests), made with the openssl CLI. */
import { execFileSync, spawnSync } from 'node:child_process';
import { mkdtempSync, readFileSync } from 'node:fs';
import { createServer, type Server } from 'node:https';
import type { AddressInfo } from 'node:net';
import { tmpdir } from 'node:os';
import { join } from 'node:path';

/** Why a certificate cannot be made here, or undefined when it can. */
export function opensslMissing(): string | undefined {
  return spawnSync('openssl', ['version']).status === 0 ? undefined : 'the openssl command is not installed (apt-get install openssl)';
}

/** A self-signed certificate and key for `subjectAltName` (e.g. `IP:127.0.0.1,DNS:hooks.test`), valid a day. */
export function selfSignedCertificate(subjectAltName: string): { key: Buffer; cert: Buffer } {
  const dir = mkdtempSync(join(tmpdir(), 'test-tls-'));
  const [key, cert] = [join(dir, 'key.pem'), join(dir, 'cert.pem')];
  execFileSync(
    'openssl',
    [
      'req',
      '-x509',
      '-newkey',
      'rsa:2048',
      '-nodes',
      '-days',
      '1',
      '-subj',
      '/CN=test',
      '-addext',
      `subjectAltName=${subjectAltName}`,
      '-keyout',
      key,
      '-out',
      cert,
    ],
    {
      stdio: 'ignore',
    },
  );
  return { key: readFileSync(key), cert: readFileSync(cert) };
}

/** A webhook delivery as a receiver gets it. */
export interface Received {
  readonly body: string;
  readonly signature: string;
}

/**
 * An HTTPS webhook receiver on 127.0.0.1 with the certificate `tls`: it records each delivery's body
 * and signature header in `received` and answers 200. `url(path)` is its address.
 */
export async function startReceiver(tls: { key: Buffer; cert: Buffer }): Promise<{ server: Server; received: Received[]; url: (path: string) => string }> {
  const received: Received[] = [];
  const server = createServer(tls, (req, res) => {
    let body = '';
    req.on('data', (c) => {
      body += c;
    });
    req.on('end', () => {
      received.push({ body, signature: String(req.headers['x-avatar-signature']) });
      res.end();
    });
  });
  await new Promise<void>((r) => server.listen(0, '127.0.0.1', r));
  return { server, received, url: (path) => `https://127.0.0.1:${(server.address() as AddressInfo).port}${path}` };
}
