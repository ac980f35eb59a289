/**
 * Per-job webhooks: a signed POST of a job state change to the customer's https URL.
 *
 * - Signature: header `X-Avatar-Signature: t=<unix seconds>,v1=<hex HMAC-SHA256(secret, "<t>.<body>")>`;
 *   receivers recompute it and refuse old timestamps ({@link verifyWebhookSignature}).
 * - SSRF: https only, no redirects, and every address the name resolves to must be public. The check
 *   runs in the https agent's `lookup`, i.e. on the address the socket connects to, so a name that
 *   resolves to a public address when validated and to 169.254.169.254 at connect time (DNS
 *   rebinding) is still refused. IP literals skip DNS and are checked before connecting.
 * - Retries with exponential backoff and full jitter on network errors, 408, 429 and 5xx; every
 *   attempt is handed to `record` (the caller stores them, e.g. next to the job in S3).
 */
import { createHmac, timingSafeEqual } from 'node:crypto';
import { lookup as dnsLookup, type LookupAddress } from 'node:dns';
import { Agent, request } from 'node:https';
import { BlockList, isIP, type LookupFunction } from 'node:net';

/**
 * Address ranges a webhook may never reach (IANA special-purpose registries). Two lists: a BlockList
 * checks an IPv4 address against IPv6 rules too (as ::ffff:a.b.c.d), so ::ffff:0:0/96 in one list
 * would refuse every IPv4 address.
 */
const REFUSED_V4 = new BlockList();
const REFUSED_V6 = new BlockList();
for (const [net, bits] of [
  ['0.0.0.0', 8],
  ['10.0.0.0', 8],
  ['100.64.0.0', 10],
  ['127.0.0.0', 8],
  ['169.254.0.0', 16],
  ['172.16.0.0', 12],
  ['192.0.0.0', 24],
  ['192.0.2.0', 24],
  ['192.88.99.0', 24],
  ['192.168.0.0', 16],
  ['198.18.0.0', 15],
  ['198.51.100.0', 24],
  ['203.0.113.0', 24],
  ['224.0.0.0', 4],
  ['240.0.0.0', 4],
] as const)
  REFUSED_V4.addSubnet(net, bits, 'ipv4');
for (const [net, bits] of [
  ['::', 96],
  ['::ffff:0:0', 96],
  ['64:ff9b::', 96],
  ['64:ff9b:1::', 48],
  ['100::', 64],
  ['2001::', 23],
  ['2001:db8::', 32],
  ['2002::', 16],
  ['fc00::', 7],
  ['fe80::', 10],
  ['fec0::', 10],
  ['ff00::', 8],
] as const)
  REFUSED_V6.addSubnet(net, bits, 'ipv6');

/** True when `ip` is a public unicast address a webhook may connect to. */
export function isPublicAddress(ip: string): boolean {
  const family = isIP(ip);
  if (family === 0) return false;
  if (family === 4) return !REFUSED_V4.check(ip, 'ipv4');
  // IPv4-mapped and -compatible (::ffff:0:0/96, ::/96, which includes ::1) are refused outright.
  return !REFUSED_V6.check(ip, 'ipv6');
}

export class WebhookRefused extends Error {
  constructor(message: string) {
    super(message);
    this.name = 'WebhookRefused';
  }
}

/**
 * Test and local-only switch: lets a webhook reach loopback (a receiver started by a test, or by a
 * developer with `npm run api -- --webhook-loopback`). A symbol, so it cannot come from JSON
 * configuration or the environment; the Lambda handlers never set it.
 */
export const ALLOW_LOOPBACK_FOR_TESTS = Symbol('allow loopback webhooks (tests only)');

function allowed(ip: string, loopbackForTests: boolean): boolean {
  if (isPublicAddress(ip)) return true;
  return loopbackForTests && (ip === '::1' || ip.startsWith('127.'));
}

/** A `lookup` for net/tls that refuses non-public addresses: runs for every connection the agent makes. */
export function guardedLookup(resolve: LookupFunction = dnsLookup as LookupFunction, loopbackForTests = false): LookupFunction {
  return (hostname, options, callback) => {
    resolve(hostname, { ...options, all: true }, (error, addresses) => {
      if (error) return callback(error, '', 0);
      const list = addresses as unknown as LookupAddress[];
      const refused = list.find((a) => !allowed(a.address, loopbackForTests));
      if (refused || list.length === 0) {
        return callback(
          Object.assign(new WebhookRefused(`webhook host ${hostname} resolves to ${refused?.address ?? 'nothing'}, which is not a public address`), {
            code: 'EWEBHOOKREFUSED',
          }),
          '',
          0,
        );
      }
      if (options.all) return (callback as unknown as (e: null, a: LookupAddress[]) => void)(null, list);
      callback(null, list[0].address, list[0].family);
    });
  };
}

export function signature(secret: string, timestamp: number, body: string): string {
  return createHmac('sha256', secret).update(`${timestamp}.${body}`).digest('hex');
}

/** What a receiver runs: true when the header signs this body and is at most `toleranceSeconds` old. */
export function verifyWebhookSignature(secret: string, header: string, body: string, now = new Date(), toleranceSeconds = 300): boolean {
  const parts = Object.fromEntries(header.split(',').map((p) => p.split('=', 2) as [string, string]));
  const t = Number(parts.t);
  if (!Number.isInteger(t) || !parts.v1 || Math.abs(now.getTime() / 1000 - t) > toleranceSeconds) return false;
  const expected = Buffer.from(signature(secret, t, body), 'hex');
  const given = Buffer.from(parts.v1, 'hex');
  return given.length === expected.length && timingSafeEqual(given, expected);
}

export interface DeliveryAttempt {
  readonly attempt: number;
  readonly at: string;
  readonly status?: number;
  readonly error?: string;
  /** Milliseconds waited before the next attempt; absent on the last. */
  readonly retryInMs?: number;
}

export interface DeliveryResult {
  readonly delivered: boolean;
  readonly attempts: DeliveryAttempt[];
}

export interface WebhookOptions {
  readonly secret: string;
  /** Attempts in all (default 5). */
  readonly maxAttempts?: number;
  readonly baseDelayMs?: number;
  readonly maxDelayMs?: number;
  readonly timeoutMs?: number;
  /** DNS resolver (tests inject one); the guard checks what it returns. */
  readonly resolve?: LookupFunction;
  /** Extra trusted CA (a receiver with a private CA; tests). */
  readonly ca?: string | Buffer;
  readonly now?: () => Date;
  readonly sleep?: (ms: number) => Promise<void>;
  readonly random?: () => number;
  /** Called after each attempt with every attempt so far (store them). */
  readonly record?: (attempts: DeliveryAttempt[]) => Promise<void>;
  readonly [ALLOW_LOOPBACK_FOR_TESTS]?: boolean;
}

function post(url: URL, body: string, headers: Record<string, string>, agent: Agent, timeoutMs: number): Promise<number> {
  return new Promise((resolve, reject) => {
    const req = request(
      url,
      {
        method: 'POST',
        agent,
        headers: { 'content-type': 'application/json', 'content-length': String(Buffer.byteLength(body)), ...headers },
        timeout: timeoutMs,
      },
      (res) => {
        res.resume(); // the body is not read: only the status counts
        res.on('end', () => resolve(res.statusCode ?? 0));
        res.on('error', reject);
      },
    );
    req.on('timeout', () => req.destroy(new Error(`no answer within ${timeoutMs} ms`)));
    req.on('error', reject);
    req.end(body);
  });
}

const RETRYABLE = (status: number) => status === 408 || status === 429 || status >= 500;

/** Sends one event to a webhook, retrying with backoff; never throws for the receiver's failures. */
export async function deliverWebhook(target: string, payload: unknown, options: WebhookOptions): Promise<DeliveryResult> {
  const now = options.now ?? (() => new Date());
  const sleep = options.sleep ?? ((ms: number) => new Promise<void>((r) => setTimeout(r, ms)));
  const random = options.random ?? Math.random;
  const maxAttempts = options.maxAttempts ?? 5;
  const loopback = options[ALLOW_LOOPBACK_FOR_TESTS] === true;
  const attempts: DeliveryAttempt[] = [];
  const finish = async (attempt: DeliveryAttempt, delivered: boolean) => {
    attempts.push(attempt);
    await options.record?.([...attempts]);
    return { delivered, attempts };
  };

  let url: URL;
  try {
    url = new URL(target);
  } catch {
    return finish({ attempt: 1, at: now().toISOString(), error: 'the webhook url is not a URL' }, false);
  }
  if (url.protocol !== 'https:') return finish({ attempt: 1, at: now().toISOString(), error: 'webhooks are sent over https only' }, false);
  if (url.username || url.password) return finish({ attempt: 1, at: now().toISOString(), error: 'a webhook url must not carry credentials' }, false);
  const host = url.hostname.replace(/^\[|\]$/g, '');
  // An IP literal never reaches `lookup`: check it here.
  if (isIP(host) && !allowed(host, loopback)) {
    return finish({ attempt: 1, at: now().toISOString(), error: `webhook address ${host} is not a public address` }, false);
  }
  const agent = new Agent({ lookup: guardedLookup(options.resolve, loopback), ca: options.ca, keepAlive: false, maxSockets: 1 });
  const body = JSON.stringify(payload);
  try {
    for (let attempt = 1; ; attempt++) {
      const timestamp = Math.floor(now().getTime() / 1000);
      const at = now().toISOString();
      let status: number | undefined;
      let error: string | undefined;
      try {
        status = await post(
          url,
          body,
          { 'x-avatar-signature': `t=${timestamp},v1=${signature(options.secret, timestamp, body)}` },
          agent,
          options.timeoutMs ?? 10_000,
        );
      } catch (e) {
        if ((e as { code?: string }).code === 'EWEBHOOKREFUSED' || e instanceof WebhookRefused) {
          return await finish({ attempt, at, error: (e as Error).message }, false);
        }
        error = (e as Error).message;
      }
      if (status !== undefined && status >= 200 && status < 300) return await finish({ attempt, at, status }, true);
      const retry = attempt < maxAttempts && (status === undefined || RETRYABLE(status));
      if (!retry) return await finish({ attempt, at, ...(status !== undefined ? { status } : {}), ...(error ? { error } : {}) }, false);
      // Equal jitter (half fixed, half random): spreads retries of many jobs; the ceiling doubles each attempt.
      const ceiling = Math.min(options.maxDelayMs ?? 60_000, (options.baseDelayMs ?? 1000) * 2 ** (attempt - 1));
      const retryInMs = Math.round(ceiling / 2 + (random() * ceiling) / 2);
      attempts.push({ attempt, at, ...(status !== undefined ? { status } : {}), ...(error ? { error } : {}), retryInMs });
      await options.record?.([...attempts]);
      await sleep(retryInMs);
    }
  } finally {
    agent.destroy();
  }
}
