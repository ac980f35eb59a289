/**
 * bench:load (issue 8 item 8): 100 jobs submitted at once through the local harness. Each job's
 * photos and job.json go to moto's S3; its "Object Created" event goes to the real `start` handler
 * (some events twice: at once, and replayed later), which starts the synthesized state machine
 * locally; the Lambda stages run their handlers, the GPU stages go through the Batch emulator with
 * fast in-process stand-ins (scripts/local/standins.ts), not torch. A few jobs get injected faults
 * (a Spot reclaim, an image pull failure once, an image that never pulls) and a few a bad job.json,
 * so the terminal codes are not all one. Meanwhile every job's status.json is read over and over
 * and parsed with the contract's StatusSchema.
 *
 * Admission is real: the Admit state invokes the admit handler against a team registry in moto's
 * DynamoDB (serialised, as real DynamoDB's conditional writes are) and waits for its task token.
 * Two of the four teams have fewer slots than jobs in flight, so some jobs wait in
 * CONCURRENCY_LIMIT; every one of them must be resumed by a job ending and still reach its planned
 * terminal state.
 *
 * Prints jobs, wall time, terminal states by code, lost, duplicated, status reads and parse
 * failures; exits 1 if a job is lost, started twice, ends other than planned, a status.json read
 * does not parse, or anything is left running.
 *
 * Photos: 10 synthetic 512 px photos of an `object` job (the smallest set the intake accepts), the
 * same bytes for every job; the intake's own tests use the real-photo corpus.
 */
import { performance } from 'node:perf_hooks';
import '../scripts/local/polyfill';
import { StatusSchema } from '../lambdas/shared/contract';
import { type JobRef, keys } from '../lambdas/shared/keys';
import { getBytes, putBytes, putJson } from '../lambdas/shared/s3';
import { start } from '../lambdas/start/handler';
import { type AttemptFault, BatchEmulator, functionContainer } from '../scripts/local/batch';
import { stateMachineDefinition, synthesizeTemplate } from '../scripts/local/definition';
import { syntheticPhotos } from '../scripts/local/demo-photos';
import { configureHandlers, startMoto } from '../scripts/local/moto';
import { LocalStepFunctions } from '../scripts/local/sfn';
import { gpuStandIn } from '../scripts/local/standins';
import { localTeams } from '../scripts/local/teams';

const JOBS = Number(process.env.BENCH_LOAD_JOBS ?? 100);
const DEADLINE_MS = Number(process.env.BENCH_LOAD_DEADLINE_S ?? 420) * 1000;
const INBOX = 'load-inbox';
const ARTIFACTS = 'load-artifacts';
const SPEC = { token: 'zwxmug', classWord: 'mug', kind: 'object', training: { epochs: 3, repeats: 1 } };
/** Jobs go to team-<i % 4>; team-0 and team-1 have fewer slots than jobs, so admission makes some wait. */
const TEAMS = [
  { teamId: 'team-0', maxConcurrentJobs: 10 },
  { teamId: 'team-1', maxConcurrentJobs: 20 },
  { teamId: 'team-2', maxConcurrentJobs: 30 },
  { teamId: 'team-3', maxConcurrentJobs: 30 },
];

/** What happens to job i, and the terminal status it must end with. */
interface Plan {
  readonly job: JobRef;
  readonly fault?: AttemptFault & { stage: string; attempts: 'first' | 'all' };
  readonly badSpec?: boolean;
  readonly events: 'once' | 'twice-at-once' | 'replayed-later';
  readonly expect: string;
}

function plan(i: number): Plan {
  const job = { teamId: `team-${i % 4}`, jobId: `load-${String(i).padStart(3, '0')}` };
  const events = i % 10 === 3 ? 'twice-at-once' : i % 10 === 7 ? 'replayed-later' : 'once';
  if (i % 20 === 5)
    return {
      job,
      events,
      fault: { kind: 'spotReclaim', at: () => new Promise((r) => setTimeout(r, 50)), stage: 'train', attempts: 'first' },
      expect: 'succeeded',
    };
  if (i % 20 === 9) return { job, events, fault: { kind: 'imagePull', stage: 'train', attempts: 'first' }, expect: 'succeeded' };
  if (i % 25 === 12) return { job, events, fault: { kind: 'imagePull', stage: 'evaluate', attempts: 'all' }, expect: 'BATCH_JOB_FAILED' };
  if (i % 25 === 17) return { job, events, badSpec: true, expect: 'INVALID_JOB_SPEC' };
  return { job, events, expect: 'succeeded' };
}

async function main(): Promise<number> {
  const moto = await startMoto({ serializeDynamoDb: true });
  let stopTeams: () => Promise<void> = async () => undefined;
  try {
    await moto.createBucket(INBOX);
    await moto.createBucket(ARTIFACTS);
    configureHandlers(moto.endpoint, { inboxBucket: INBOX, artifactsBucket: ARTIFACTS, urlExpirySeconds: 600 });
    const teams = await localTeams(moto.endpoint, TEAMS);
    stopTeams = () => teams.stop();
    const template = synthesizeTemplate();
    const definition = stateMachineDefinition(template);
    const photos = await syntheticPhotos(10, 512);
    const plans = Array.from({ length: JOBS }, (_, i) => plan(i));
    const byJob = new Map(plans.map((p) => [`${p.job.teamId}/${p.job.jobId}`, p]));

    const batch = new BatchEmulator(template, {
      launch: functionContainer(gpuStandIn({ s3: () => moto.s3(), artifactsBucket: ARTIFACTS, epochMs: 200 })),
      faults: ({ stage, attempt, env }) => {
        const f = byJob.get(`${env.AVATAR_TEAM_ID}/${env.AVATAR_JOB_ID}`)?.fault;
        return f && f.stage === stage && (f.attempts === 'all' || attempt === 1) ? f : undefined;
      },
      env: { AVATAR_INBOX_BUCKET: INBOX, AVATAR_ARTIFACTS_BUCKET: ARTIFACTS },
      stopTimeoutMs: 2_000,
    });
    const sfn = new LocalStepFunctions(definition, 'arn:aws:states:us-east-1:123456789012:stateMachine:load', {
      batch: batch.runner(),
      taskTokens: teams.taskTokens,
    });
    const deps = sfn.startDeps(moto.s3(), { inbox: INBOX, artifacts: ARTIFACTS });
    const event = (job: JobRef) => ({
      'detail-type': 'Object Created',
      source: 'aws.s3',
      detail: { bucket: { name: INBOX }, object: { key: keys.spec(job) } },
    });

    // The handlers log a JSON line per transition; 100 jobs of them would bury the result.
    // (The SDK's socket-queue warnings too: 100 jobs share one process here, not 100 Lambda sandboxes.)
    const quiet = { log: console.log, error: console.error, warn: console.warn };
    console.log = () => undefined;
    console.error = () => undefined;
    console.warn = () => undefined;

    let reads = 0;
    let parseFailures = 0;
    /** Jobs seen waiting for a slot of their team (status.json queued with CONCURRENCY_LIMIT). */
    const waited = new Set<string>();
    const failures: string[] = [];
    const terminal = new Map<string, string>();
    let polling = true;
    const poll = (async () => {
      const s3 = moto.s3();
      while (polling) {
        for (const p of plans) {
          let bytes: Uint8Array;
          try {
            bytes = await getBytes(s3, ARTIFACTS, keys.status(p.job));
          } catch {
            continue; // not written yet
          }
          reads++;
          let parsed: ReturnType<typeof StatusSchema.safeParse>;
          try {
            parsed = StatusSchema.safeParse(JSON.parse(Buffer.from(bytes).toString('utf8')));
          } catch (error) {
            parsed = { success: false, error: error as never } as never;
          }
          if (!parsed.success) {
            parseFailures++;
            failures.push(`${keys.status(p.job)}: ${String(parsed.error).slice(0, 200)}`);
          } else if (parsed.data.state === 'queued' && parsed.data.error?.code === 'CONCURRENCY_LIMIT') {
            waited.add(`${p.job.teamId}/${p.job.jobId}`);
          }
        }
        await new Promise((r) => setTimeout(r, 1_000)); // a client polling its job: one sweep, then a pause
      }
    })();

    const began = performance.now();
    const submitted = await Promise.allSettled(
      plans.map(async (p) => {
        const s3 = moto.s3();
        for (const photo of photos) await putBytes(s3, INBOX, `${keys.photosPrefix(p.job)}${photo.name}`, photo.bytes, 'image/jpeg');
        await putJson(s3, INBOX, keys.spec(p.job), p.badSpec ? { ...SPEC, learningRate: 0.1 } : SPEC);
        const deliveries = [start(event(p.job), deps)];
        if (p.events === 'twice-at-once') deliveries.push(start(event(p.job), deps));
        await Promise.all(deliveries);
        if (p.events === 'replayed-later') setTimeout(() => void start(event(p.job), deps).catch(() => undefined), 2_000 + Math.random() * 5_000);
      }),
    );
    const startErrors = submitted.filter((s) => s.status === 'rejected').map((s) => String((s as PromiseRejectedResult).reason));

    // Every execution that started, to its end (or the deadline).
    const deadline = new Promise<'deadline'>((r) => setTimeout(() => r('deadline'), DEADLINE_MS).unref());
    await Promise.race([Promise.all([...sfn.executions.values()].map((e) => e.finished)), deadline]);
    await new Promise((r) => setTimeout(r, 7_500)); // let the late replays arrive
    const wallS = (performance.now() - began) / 1000;
    polling = false;
    await poll;

    const s3 = moto.s3();
    let unexpected = 0;
    const unexpectedDetail: string[] = [];
    for (const p of plans) {
      const status = StatusSchema.safeParse(
        JSON.parse(Buffer.from(await getBytes(s3, ARTIFACTS, keys.status(p.job)).catch(() => new Uint8Array(Buffer.from('null')))).toString('utf8')),
      );
      const state = status.success ? status.data.state : undefined;
      const outcome = !status.success
        ? 'no status'
        : state === 'queued' || state === 'running'
          ? `still ${state}`
          : state === 'succeeded'
            ? 'succeeded'
            : (status.data.error?.code ?? `${state} without code`);
      terminal.set(`${p.job.teamId}/${p.job.jobId}`, outcome);
      if (outcome !== p.expect) {
        unexpected++;
        unexpectedDetail.push(`${p.job.teamId}/${p.job.jobId}: expected ${p.expect}, got ${outcome}`);
      }
    }
    const lost = plans.filter((p) => {
      const outcome = terminal.get(`${p.job.teamId}/${p.job.jobId}`)!;
      return outcome === 'no status' || outcome.startsWith('still ');
    }).length;
    const duplicated = [...sfn.launches.values()].filter((n) => n > 1).length;
    const notStarted = plans.filter((p) => !sfn.launches.has(`${p.job.teamId}_${p.job.jobId}`)).length;
    let leftRunning = 'none';
    try {
      await batch.settled(10_000);
    } catch (error) {
      leftRunning = (error as Error).message;
    }
    const byCode = new Map<string, number>();
    for (const outcome of terminal.values()) byCode.set(outcome, (byCode.get(outcome) ?? 0) + 1);
    const jobs = [...batch.jobs.values()];
    const deliveries = plans.length + plans.filter((p) => p.events !== 'once').length;

    console.log = quiet.log;
    console.error = quiet.error;
    console.warn = quiet.warn;
    console.log(
      `bench:load: ${JOBS} jobs through start -> state machine -> Lambda stages -> Batch emulator (GPU stages as in-process stand-ins), ${photos.length} photos each`,
    );
    console.log(
      `  jobs                 ${JOBS} (${deliveries} job.json events delivered; ${plans.filter((p) => p.events === 'twice-at-once').length} twice at once, ${plans.filter((p) => p.events === 'replayed-later').length} replayed 2-7 s later)`,
    );
    console.log(`  wall time            ${wallS.toFixed(1)} s (includes a 7.5 s wait for late replays)`);
    console.log(
      `  terminal states      ${[...byCode]
        .sort((a, b) => b[1] - a[1])
        .map(([code, n]) => `${code}=${n}`)
        .join(', ')}`,
    );
    console.log(`  planned outcomes     ${JOBS - unexpected}/${JOBS} as planned${unexpected ? `; ${unexpectedDetail.slice(0, 5).join('; ')}` : ''}`);
    const waitedBy = TEAMS.map((t) => `${t.teamId} (max ${t.maxConcurrentJobs}) ${[...waited].filter((j) => j.startsWith(`${t.teamId}/`)).length}`).join(', ');
    console.log(
      `  admission waits      ${waited.size} jobs seen queued in CONCURRENCY_LIMIT: ${waitedBy}; all resumed: ${[...waited].every((j) => !terminal.get(j)!.startsWith('still '))}`,
    );
    console.log(
      `  executions started   ${sfn.launches.size} (not started: ${notStarted}; start errors: ${startErrors.length}${startErrors.length ? `: ${startErrors[0]}` : ''})`,
    );
    console.log(`  lost = ${lost}`);
    console.log(`  duplicated = ${duplicated}`);
    console.log(
      `  Batch jobs           ${jobs.length} (attempts ${jobs.reduce((n, j) => n + j.detail.Attempts.length, 0)}; retried by the retry strategy ${jobs.filter((j) => j.detail.Attempts.length > 1).length})`,
    );
    console.log(`  status.json reads    ${reads}, parse failures ${parseFailures}${failures.length ? `: ${failures.slice(0, 3).join('; ')}` : ''}`);
    console.log(`  left running         ${leftRunning}`);
    const ok =
      lost === 0 && duplicated === 0 && parseFailures === 0 && unexpected === 0 && notStarted === 0 && startErrors.length === 0 && leftRunning === 'none';
    console.log(ok ? 'bench:load: OK' : 'bench:load: FAILED');
    return ok ? 0 : 1;
  } finally {
    await stopTeams();
    await moto.stop();
  }
}

main().then(
  (code) => process.exit(code),
  (error) => {
    console.error(error);
    process.exit(1);
  },
);
