import { createHmac } from 'node:crypto';
import { createServer, type Server } from 'node:https';
import type { AddressInfo, LookupFunction } from 'node:net';
import { afterAll, beforeAll, expect, it } from 'vitest';
import { ALLOW_LOOPBACK_FOR_TESTS, type DeliveryAttempt, deliverWebhook, isPublicAddress, verifyWebhookSignature } from '../../lambdas/shared/webhook';
import { describeNeeding } from '../helpers/suites';
import { opensslMissing, selfSignedCertificate } from './tls';

const SECRET = 'whsec-test-secret';
let server: Server;
let port: number;
let ca: Buffer;
/** What the receiver answers next (then 200), and what it received. */
let answers: number[] = [];
const received: Array<{ at: number; body: string; signature: string }> = [];

const event = { detailType: 'Avatar Job State Change', teamId: 'alpha', jobId: 'j1', state: 'failed' };
const resolveTo = (address: string, family: 4 | 6 = 4): LookupFunction =>
  ((_host: string, _opts: unknown, cb: (e: null, a: unknown) => void) => cb(null, [{ address, family }])) as unknown as LookupFunction;

describeNeeding('webhook sender', opensslMissing(), () => {
  beforeAll(async () => {
    // A receiver with its own certificate for 127.0.0.1 and the test name hooks.test.
    const tls = selfSignedCertificate('IP:127.0.0.1,DNS:hooks.test');
    ca = tls.cert;
    server = createServer(tls, (req, res) => {
      let body = '';
      req.on('data', (c) => (body += c));
      req.on('end', () => {
        received.push({ at: Date.now(), body, signature: String(req.headers['x-avatar-signature']) });
        res.statusCode = answers.shift() ?? 200;
        res.end();
      });
    });
    await new Promise<void>((r) => server.listen(0, '127.0.0.1', r));
    port = (server.address() as AddressInfo).port;
  });
  afterAll(() => new Promise<void>((r) => server.close(() => r())));

  it('signs timestamp.body with HMAC-SHA256; the receiver verifies it', async () => {
    received.length = 0;
    const result = await deliverWebhook(`https://127.0.0.1:${port}/hook`, event, { secret: SECRET, ca, [ALLOW_LOOPBACK_FOR_TESTS]: true });
    expect(result.delivered).toBe(true);
    expect(received).toHaveLength(1);
    const { body, signature } = received[0];
    expect(JSON.parse(body)).toEqual(event);
    // The receiver's own computation, from the documented format.
    const [, t, v1] = /^t=(\d+),v1=([0-9a-f]{64})$/.exec(signature)!;
    expect(v1).toBe(createHmac('sha256', SECRET).update(`${t}.${body}`).digest('hex'));
    expect(Math.abs(Number(t) - Date.now() / 1000)).toBeLessThan(60);
    expect(verifyWebhookSignature(SECRET, signature, body)).toBe(true);
    expect(verifyWebhookSignature('another-secret', signature, body)).toBe(false);
    expect(verifyWebhookSignature(SECRET, signature, body.replace('failed', 'succeeded'))).toBe(false);
    expect(verifyWebhookSignature(SECRET, signature, body, new Date(Date.now() + 3600_000))).toBe(false); // replayed an hour later
  });

  const refused: Array<[string, string, LookupFunction | undefined, RegExp]> = [
    ['127.0.0.1', `https://127.0.0.1:PORT/hook`, undefined, /127\.0\.0\.1 is not a public address/],
    ['10.0.0.1', 'https://10.0.0.1/hook', undefined, /10\.0\.0\.1 is not a public address/],
    ['169.254.169.254 (instance metadata)', 'https://169.254.169.254/latest/meta-data/', undefined, /169\.254\.169\.254 is not a public address/],
    ['[::1]', 'https://[::1]:PORT/hook', undefined, /::1 is not a public address/],
    ['[::ffff:127.0.0.1] (IPv4-mapped)', 'https://[::ffff:127.0.0.1]:PORT/hook', undefined, /not a public address/],
    ['a name resolving to a private address', 'https://hooks.test:PORT/hook', resolveTo('10.1.2.3'), /hooks\.test resolves to 10\.1\.2\.3/],
    ['a name resolving to loopback (the receiver is there)', 'https://hooks.test:PORT/hook', resolveTo('127.0.0.1'), /hooks\.test resolves to 127\.0\.0\.1/],
    ['a name resolving to a unique-local IPv6 address', 'https://hooks.test/hook', resolveTo('fd12::1', 6), /resolves to fd12::1/],
    ['plain http', 'http://example.com/hook', undefined, /https only/],
  ];
  for (const [name, url, resolve, message] of refused) {
    it(`refuses ${name} without connecting`, async () => {
      received.length = 0;
      const attempts: DeliveryAttempt[][] = [];
      const result = await deliverWebhook(url.replace('PORT', String(port)), event, {
        secret: SECRET,
        ca,
        resolve,
        record: async (a) => void attempts.push(a),
      });
      expect(result.delivered).toBe(false);
      expect(result.attempts).toHaveLength(1); // refused, not retried
      expect(result.attempts[0].error).toMatch(message);
      expect(attempts.at(-1)).toEqual(result.attempts); // recorded
      expect(received).toHaveLength(0);
    });
  }

  it('checks the address at connect time: the test-only switch lets the same name reach the local receiver', async () => {
    // Same name and resolver as the refused case above: only the address guard differs.
    received.length = 0;
    const result = await deliverWebhook(`https://hooks.test:${port}/hook`, event, {
      secret: SECRET,
      ca,
      resolve: resolveTo('127.0.0.1'),
      [ALLOW_LOOPBACK_FOR_TESTS]: true,
    });
    expect(result.delivered).toBe(true);
    expect(received).toHaveLength(1);
  });

  it('retries a failing receiver with growing backoff and records every attempt', async () => {
    received.length = 0;
    answers = [503, 500, 429];
    const recorded: DeliveryAttempt[][] = [];
    const result = await deliverWebhook(`https://127.0.0.1:${port}/hook`, event, {
      secret: SECRET,
      ca,
      [ALLOW_LOOPBACK_FOR_TESTS]: true,
      baseDelayMs: 100,
      random: () => 1,
      record: async (a) => void recorded.push(a),
    });
    expect(result.delivered).toBe(true);
    expect(result.attempts.map((a) => [a.status, a.retryInMs])).toEqual([
      [503, 100],
      [500, 200],
      [429, 400],
      [200, undefined],
    ]);
    expect(recorded.map((r) => r.length)).toEqual([1, 2, 3, 4]);
    expect(received).toHaveLength(4);
    // The receiver saw the waits (lower bounds only: no timing target).
    const gaps = received.slice(1).map((r, i) => r.at - received[i].at);
    expect(gaps[0]).toBeGreaterThanOrEqual(95);
    expect(gaps[1]).toBeGreaterThanOrEqual(195);
    expect(gaps[2]).toBeGreaterThanOrEqual(395);
    for (const r of received) expect(verifyWebhookSignature(SECRET, r.signature, r.body)).toBe(true);
  });

  it('gives up after maxAttempts, and never retries a 4xx', async () => {
    answers = [500, 500, 500];
    const failing = await deliverWebhook(`https://127.0.0.1:${port}/hook`, event, {
      secret: SECRET,
      ca,
      [ALLOW_LOOPBACK_FOR_TESTS]: true,
      maxAttempts: 3,
      baseDelayMs: 1,
    });
    expect(failing).toMatchObject({ delivered: false });
    expect(failing.attempts.map((a) => a.status)).toEqual([500, 500, 500]);
    answers = [400];
    const bad = await deliverWebhook(`https://127.0.0.1:${port}/hook`, event, { secret: SECRET, ca, [ALLOW_LOOPBACK_FOR_TESTS]: true, baseDelayMs: 1 });
    expect(bad.attempts.map((a) => a.status)).toEqual([400]);
    answers = [];
  });

  it('classifies addresses', () => {
    const cases: Record<string, boolean> = {
      '8.8.8.8': true,
      '1.1.1.1': true,
      '2606:4700:4700::1111': true,
      '127.0.0.1': false,
      '10.0.0.1': false,
      '172.16.0.1': false,
      '172.31.255.255': false,
      '192.168.1.1': false,
      '169.254.169.254': false,
      '100.64.0.1': false,
      '0.0.0.0': false,
      '224.0.0.1': false,
      '::1': false,
      '::': false,
      'fd00::1': false,
      'fc00::1': false,
      'fe80::1': false,
      '::ffff:10.0.0.1': false,
      '::ffff:8.8.8.8': false,
      '64:ff9b::a00:1': false,
      'not-an-ip': false,
    };
    expect(Object.fromEntries(Object.keys(cases).map((ip) => [ip, isPublicAddress(ip)]))).toEqual(cases);
    expect(isPublicAddress('172.32.0.1')).toBe(true); // just outside 172.16/12
  });
});
