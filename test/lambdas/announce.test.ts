import { createHash } from 'node:crypto';
import { EventBridgeClient, PutRuleCommand, PutTargetsCommand } from '@aws-sdk/client-eventbridge';
import { PutBucketVersioningCommand, PutObjectCommand, type S3Client } from '@aws-sdk/client-s3';
import { CreateQueueCommand, DeleteMessageCommand, GetQueueAttributesCommand, ReceiveMessageCommand, SQSClient } from '@aws-sdk/client-sqs';
import { afterAll, beforeAll, expect, it, vi } from 'vitest';
import { type AnnounceDeps, announce, CLAIM_LEASE_MS, handler, LastStateSchema, lastStateKey } from '../../lambdas/announce/handler';
import type { Status } from '../../lambdas/shared/contract';
import { EVENT_SOURCE, JOB_STATE_CHANGE, JobStateChangeSchema } from '../../lambdas/shared/events';
import { getJson } from '../../lambdas/shared/s3';
import { LOCAL_CREDENTIALS, LOCAL_REGION, type Moto, startMoto } from '../helpers/moto';
import { describeWithMoto } from '../helpers/suites';

// Real components: moto's S3 (versioning, conditional writes) and moto's EventBridge. The events
// announce publishes on the default bus reach an SQS queue through a rule with the documented pattern,
// and the test reads them there, so "exactly one event" is what EventBridge accepted and routed.
// moto does not send S3's own "Object Created" events to EventBridge, so each test builds the event S3
// would send for the write it makes (bucket, key, etag, version-id, as in S3's EventBridge schema).
const BUCKET = 'announce-artifacts';
const T0 = Date.parse('2026-12-01T10:00:00.000Z');
const at = (minutes: number) => new Date(T0 + minutes * 60_000).toISOString();

describeWithMoto('announce: job state change events from status.json writes', () => {
  let moto: Moto;
  let events: EventBridgeClient;
  let sqs: SQSClient;
  let queueUrl: string;
  let deps: AnnounceDeps;

  beforeAll(async () => {
    moto = await startMoto();
    await moto.createBucket(BUCKET);
    await moto.s3().send(new PutBucketVersioningCommand({ Bucket: BUCKET, VersioningConfiguration: { Status: 'Enabled' } }));
    const client = { endpoint: moto.endpoint, region: LOCAL_REGION, credentials: LOCAL_CREDENTIALS };
    events = new EventBridgeClient(client);
    sqs = new SQSClient(client);
    queueUrl = (await sqs.send(new CreateQueueCommand({ QueueName: 'job-events' }))).QueueUrl!;
    const queueArn = (await sqs.send(new GetQueueAttributesCommand({ QueueUrl: queueUrl, AttributeNames: ['QueueArn'] }))).Attributes!.QueueArn!;
    await events.send(
      new PutRuleCommand({ Name: 'job-state-changes', EventPattern: JSON.stringify({ source: [EVENT_SOURCE], 'detail-type': [JOB_STATE_CHANGE] }) }),
    );
    await events.send(new PutTargetsCommand({ Rule: 'job-state-changes', Targets: [{ Id: 'queue', Arn: queueArn }] }));
    deps = { s3: moto.s3(), events, artifactsBucket: BUCKET, now: () => new Date(T0 + 3_600_000) };
  });
  afterAll(() => moto?.stop());

  /** Every event the rule delivered since the last call (removed from the queue). */
  async function delivered(): Promise<Array<{ source: string; 'detail-type': string; detail: unknown }>> {
    const out = [];
    for (;;) {
      const page = await sqs.send(new ReceiveMessageCommand({ QueueUrl: queueUrl, MaxNumberOfMessages: 10, WaitTimeSeconds: 0 }));
      if (!page.Messages?.length) return out;
      for (const m of page.Messages) {
        out.push(JSON.parse(m.Body!));
        await sqs.send(new DeleteMessageCommand({ QueueUrl: queueUrl, ReceiptHandle: m.ReceiptHandle! }));
      }
    }
  }

  const status = (jobId: string, fields: Partial<Status> & Pick<Status, 'state' | 'stage' | 'updatedAt'>): Status => ({
    teamId: 'alpha',
    jobId,
    createdAt: at(0),
    ...fields,
  });

  /** Writes status.json as a writer would, and returns the "Object Created" event S3 sends for it. */
  async function write(value: unknown, key = `teams/alpha/jobs/${(value as Status).jobId}/status.json`) {
    const out = await moto.s3().send(new PutObjectCommand({ Bucket: BUCKET, Key: key, Body: JSON.stringify(value), ContentType: 'application/json' }));
    return {
      version: '0',
      source: 'aws.s3',
      'detail-type': 'Object Created',
      detail: {
        bucket: { name: BUCKET },
        object: { key, size: 1, etag: out.ETag!.replace(/"/g, ''), 'version-id': out.VersionId, sequencer: '0' },
        reason: 'PutObject',
      },
    };
  }

  const eventId = (s: Status) => createHash('sha256').update(`alpha/${s.jobId}/${s.state}/${s.stage}/${s.updatedAt}`).digest('hex').slice(0, 32);

  it('a state change emits exactly one event with the documented source, detail type and schema', async () => {
    const queued = status('j1', { state: 'queued', stage: 'validate', updatedAt: at(1) });
    expect((await announce(await write(queued), deps)).action).toBe('published');
    const running = status('j1', { state: 'running', stage: 'train', updatedAt: at(2), progress: { fraction: 0, message: 'starting' } });
    expect((await announce(await write(running), deps)).action).toBe('published');

    const got = await delivered();
    expect(got.map((e) => [e.source, e['detail-type']])).toEqual([
      ['avatar.jobs', 'Avatar Job State Change'],
      ['avatar.jobs', 'Avatar Job State Change'],
    ]);
    expect(got.map((e) => JobStateChangeSchema.parse(e.detail))).toEqual([
      { version: 1, eventId: eventId(queued), teamId: 'alpha', jobId: 'j1', state: 'queued', stage: 'validate', at: at(1) },
      { version: 1, eventId: eventId(running), teamId: 'alpha', jobId: 'j1', state: 'running', stage: 'train', previousState: 'queued', at: at(2) },
    ]);
    const record = LastStateSchema.parse(await getJson(moto.s3(), BUCKET, lastStateKey({ teamId: 'alpha', jobId: 'j1' })));
    expect(record).toMatchObject({
      state: 'running',
      stage: 'train',
      updatedAt: at(2),
      announcement: { change: { eventId: eventId(running) }, publishedAt: expect.any(String) },
    });
  });

  it('a terminal write carries its error in the event', async () => {
    const failed = status('j2', { state: 'failed', stage: 'caption', updatedAt: at(3), error: { code: 'GPU_UNAVAILABLE', message: 'no GPU' } });
    await announce(await write(failed), deps);
    const [event] = await delivered();
    expect(event!.detail).toMatchObject({ state: 'failed', error: { code: 'GPU_UNAVAILABLE', message: 'no GPU' } });
  });

  it('a progress-only write (same state and stage) emits none', async () => {
    await announce(await write(status('j3', { state: 'running', stage: 'train', updatedAt: at(1) })), deps);
    await delivered();
    const progress = status('j3', {
      state: 'running',
      stage: 'train',
      updatedAt: at(2),
      progress: { fraction: 0.5, message: 'epoch 5/10', epoch: 5, loss: 0.08 },
    });

    expect(await announce(await write(progress), deps)).toEqual({ action: 'unchanged', job: { teamId: 'alpha', jobId: 'j3' } });
    expect(await delivered()).toEqual([]);
  });

  it('a duplicate S3 event emits none', async () => {
    const event = await write(status('j4', { state: 'queued', stage: 'validate', updatedAt: at(1) }));
    await announce(event, deps);
    expect(await delivered()).toHaveLength(1);

    expect((await announce(event, deps)).action).toBe('duplicate');
    expect(await delivered()).toEqual([]);
  });

  it('an older write delivered late emits none', async () => {
    const older = await write(status('j5', { state: 'running', stage: 'caption', updatedAt: at(1) }));
    const newer = await write(status('j5', { state: 'succeeded', stage: 'finalize', updatedAt: at(2), finishedAt: at(2) }));
    await announce(newer, deps);

    expect((await announce(older, deps)).action).toBe('stale');
    expect((await delivered()).map((e) => (e.detail as { state: string }).state)).toEqual(['succeeded']);
  });

  it('a second invocation for a change being published does not publish it again', async () => {
    const event = await write(status('j6', { state: 'cancelled', stage: 'train', updatedAt: at(1) }));
    // Holds the first invocation between its claim and PutEvents (the real client then sends it).
    let release!: () => void;
    const gate = new Promise<void>((r) => (release = r));
    let claimed!: () => void;
    const reached = new Promise<void>((r) => (claimed = r));
    const held: AnnounceDeps = {
      ...deps,
      events: {
        send: (async (command: never) => {
          claimed();
          await gate;
          return events.send(command);
        }) as EventBridgeClient['send'],
      },
    };

    const first = announce(event, held);
    await reached;
    await expect(announce(event, deps)).rejects.toMatchObject({ code: 'ANNOUNCE_IN_PROGRESS' }); // retried by Lambda
    release();
    expect((await first).action).toBe('published');
    expect((await announce(event, deps)).action).toBe('duplicate'); // the retry
    expect(await delivered()).toHaveLength(1);
  });

  it('two concurrent invocations that read the same record: the conditional write lets only one announce', async () => {
    const older = await write(status('j13', { state: 'running', stage: 'caption', updatedAt: at(1) }));
    const newer = await write(status('j13', { state: 'running', stage: 'train', updatedAt: at(2) }));
    // The first invocation is held after reading notify/last-state.json (none yet), before its claim.
    let release!: () => void;
    const gate = new Promise<void>((r) => (release = r));
    let claimed!: () => void;
    const reached = new Promise<void>((r) => (claimed = r));
    const s3 = moto.s3();
    const held = {
      send: async (command: unknown) => {
        if (command instanceof PutObjectCommand && command.input.Key?.endsWith('last-state.json')) {
          claimed();
          await gate;
        }
        return s3.send(command as never);
      },
    } as unknown as S3Client;

    const first = announce(older, { ...deps, s3: held });
    await reached;
    expect((await announce(newer, deps)).action).toBe('published');
    release();
    // Its claim fails (the record exists now); it reads the record again and finds a newer write.
    expect((await first).action).toBe('stale');
    expect((await delivered()).map((e) => (e.detail as { stage: string }).stage)).toEqual(['train']);
  });

  it('a claim left by a failed invocation is published by its retry after the lease, once, with the same eventId', async () => {
    const s = status('j7', { state: 'running', stage: 'validate', updatedAt: at(1) });
    const event = await write(s);
    // A real EventBridge client with nothing listening on its endpoint: PutEvents fails.
    const down = new EventBridgeClient({ endpoint: 'http://127.0.0.1:9', region: LOCAL_REGION, credentials: LOCAL_CREDENTIALS, maxAttempts: 1 });
    await expect(announce(event, { ...deps, events: down })).rejects.toThrow();
    expect(await delivered()).toEqual([]);

    const later = { ...deps, now: () => new Date(deps.now().getTime() + CLAIM_LEASE_MS + 1000) };
    expect((await announce(event, later)).action).toBe('published');
    expect((await announce(event, later)).action).toBe('duplicate');
    const got = await delivered();
    expect(got.map((e) => (e.detail as { eventId: string }).eventId)).toEqual([eventId(s)]);
  });

  it('a change whose publication failed is not lost to a later progress write: published once, before it is recorded', async () => {
    const change = status('j14', { state: 'running', stage: 'train', updatedAt: at(1) });
    const changeEvent = await write(change);
    const down = new EventBridgeClient({ endpoint: 'http://127.0.0.1:9', region: LOCAL_REGION, credentials: LOCAL_CREDENTIALS, maxAttempts: 1 });
    await expect(announce(changeEvent, { ...deps, events: down })).rejects.toThrow();
    const progress = await write(status('j14', { state: 'running', stage: 'train', updatedAt: at(2), progress: { fraction: 0.1, message: 'epoch 1/10' } }));

    // Within the failed claim's lease the progress write waits (Lambda retries it)...
    await expect(announce(progress, deps)).rejects.toMatchObject({ code: 'ANNOUNCE_IN_PROGRESS' });
    // ...after it, the progress write's retry publishes the pending change, then records itself.
    const later = { ...deps, now: () => new Date(deps.now().getTime() + CLAIM_LEASE_MS + 1000) };
    expect((await announce(progress, later)).action).toBe('unchanged');
    expect((await announce(changeEvent, later)).action).toBe('stale'); // the failed invocation's own retry
    const got = await delivered();
    expect(got.map((e) => (e.detail as { eventId: string }).eventId)).toEqual([eventId(change)]);
    const record = LastStateSchema.parse(await getJson(moto.s3(), BUCKET, lastStateKey({ teamId: 'alpha', jobId: 'j14' })));
    expect(record).toMatchObject({ updatedAt: at(2), state: 'running', stage: 'train' });
    expect(record.announcement).toBeUndefined();
  });

  it('a write erased before its event arrives emits none', async () => {
    const event = await write(status('j8', { state: 'queued', stage: 'validate', updatedAt: at(1) }));
    event.detail.object['version-id'] = 'no-such-version';
    expect((await announce(event, deps)).action).toBe('ignored');
    expect(await delivered()).toEqual([]);
  });

  it.each([
    'teams/alpha/jobs/j9/train/status.json', // the rule's wildcard also matches nested keys
    'teams/Alpha Team/jobs/j9/status.json',
    'teams/alpha/jobs/../../x/status.json',
  ])('ignores the malformed key %s with a log line, touching nothing', async (key) => {
    const lines: string[] = [];
    const spy = vi.spyOn(console, 'log').mockImplementation((line: string) => void lines.push(line));
    let result: unknown;
    try {
      result = await announce(await write(status('j9', { state: 'queued', stage: 'validate', updatedAt: at(1) }), key), deps);
    } finally {
      spy.mockRestore();
    }
    expect(result).toEqual({ action: 'ignored', reason: expect.stringContaining(`${key} is not a job status key`) });
    expect(lines.map((l) => JSON.parse(l))).toEqual([expect.objectContaining({ level: 'warn', message: 'status event ignored' })]);
    expect(await delivered()).toEqual([]);
  });

  it('refuses an event from another bucket, and a status.json naming another job', async () => {
    const event = await write(status('j10', { state: 'queued', stage: 'validate', updatedAt: at(1) }));
    await expect(announce({ ...event, detail: { ...event.detail, bucket: { name: 'other' } } }, deps)).rejects.toMatchObject({ code: 'BAD_EVENT' });
    const foreign = await write(status('j11', { state: 'queued', stage: 'validate', updatedAt: at(1) }), 'teams/alpha/jobs/j12/status.json');
    await expect(announce(foreign, deps)).rejects.toMatchObject({ code: 'BAD_STATUS' });
    expect(await delivered()).toEqual([]);
  });

  it('the Lambda handler reports a bad event as a named error', async () => {
    process.env.ARTIFACTS_BUCKET = BUCKET;
    await expect(handler({ 'detail-type': 'Object Created', detail: {} })).rejects.toMatchObject({ name: 'InvalidInputError' });
  });
});
