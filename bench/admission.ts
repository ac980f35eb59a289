/**
 * `npm run bench:admission`: 100 concurrent submissions across two teams (concurrency limits 3 and
 * 5; team B's budget runs out mid-way) against the local AWS endpoint (moto's DynamoDB, requests
 * serialised as DynamoDB's conditional writes are: see scripts/local/moto_serial.py).
 *
 * Running jobs "finish" after 0.1-0.6 s and are released with an actual cost below
 * their estimate; the jobs each release admits start in turn, until no job is left waiting.
 * 10 submissions are sent twice (duplicate events).
 *
 * Over-admission is checked three ways: our own bookkeeping of running jobs, the team counter, and the
 * admitted job items. A sampler reads the team's whole partition in one Query (one atomic snapshot:
 * counter, job items and queue together) as fast as it can while the run goes on.
 *
 * Prints the figures; exits 1 if any job is over-admitted or lost, or any counter disagrees.
 */
import { DynamoDBClient } from '@aws-sdk/client-dynamodb';
import { QueryCommand } from '@aws-sdk/lib-dynamodb';
import { type AdmissionRequest, type AdmissionResult, admit, release } from '../lambdas/shared/admission';
import { createTeamsTable, fromMicroUsd, TEAM_DEFAULTS, TeamRegistry, teamsDocumentClient } from '../lambdas/shared/teams';
import { LOCAL_CREDENTIALS, LOCAL_REGION, startMoto } from '../scripts/local/moto';
import { admissionRequest } from '../scripts/local/teams';

const JOBS = 100;
const DUPLICATES = 10;
const TEAMS = [
  { teamId: 'team-a', maxConcurrentJobs: 3, monthlyBudgetUsd: 500 },
  // 50 jobs of $1.00 estimated, ~$0.80 actual: the budget runs out after about 24 of them.
  { teamId: 'team-b', maxConcurrentJobs: 5, monthlyBudgetUsd: 20 },
] as const;
const ESTIMATE = { usd: 1, gpuSeconds: 900 };
const ACTUAL_FRACTION = 0.8;

interface TeamStats {
  submitted: number;
  admittedAtOnce: number;
  admittedAfterWaiting: number;
  waitedOnConcurrency: number;
  rejected: Record<string, number>;
  completed: number;
  running: Set<string>;
  maxRunningBookkeeping: number;
  maxRunningCounter: number;
  maxAdmittedItems: number;
  snapshots: number;
  inconsistentSnapshots: number;
  chargedMicroUsd: number;
}

async function main(): Promise<number> {
  const moto = await startMoto({ serializeDynamoDb: true });
  try {
    const clientConfig = { endpoint: moto.endpoint, region: LOCAL_REGION, credentials: LOCAL_CREDENTIALS };
    await createTeamsTable(new DynamoDBClient(clientConfig), 'bench-teams');
    const doc = teamsDocumentClient(clientConfig);
    const registry = new TeamRegistry(doc, 'bench-teams');
    for (const t of TEAMS) await registry.add({ ...TEAM_DEFAULTS, ...t, monthlyGpuHours: 1000 });

    const stats = new Map<string, TeamStats>(TEAMS.map((t) => [t.teamId, newStats()]));
    const limitOf = new Map<string, number>(TEAMS.map((t) => [t.teamId, t.maxConcurrentJobs]));
    const finalOutcome = new Map<string, string>();
    const violations: string[] = [];
    let inFlight = 0;
    let allSubmitted = false;
    let resolveDone!: () => void;
    const done = new Promise<void>((r) => (resolveDone = r));

    const key = (r: { teamId: string; jobId: string }) => `${r.teamId}/${r.jobId}`;
    const started = (r: AdmissionResult, afterWaiting: boolean) => {
      const s = stats.get(r.teamId)!;
      if (afterWaiting) s.admittedAfterWaiting++;
      else s.admittedAtOnce++;
      s.running.add(r.jobId);
      s.maxRunningBookkeeping = Math.max(s.maxRunningBookkeeping, s.running.size);
      if (s.running.size > limitOf.get(r.teamId)!) violations.push(`${key(r)} made ${s.running.size} running (limit ${limitOf.get(r.teamId)})`);
      inFlight++;
      // Long enough that several jobs of a team overlap in our own bookkeeping too.
      setTimeout(() => void finish(r), 100 + Math.random() * 500);
    };
    const rejected = (r: AdmissionResult) => {
      const s = stats.get(r.teamId)!;
      s.rejected[r.code!] = (s.rejected[r.code!] ?? 0) + 1;
      finalOutcome.set(key(r), `rejected ${r.code}`);
    };
    const finish = async (r: AdmissionResult) => {
      const s = stats.get(r.teamId)!;
      s.running.delete(r.jobId);
      const charge = { usd: ESTIMATE.usd * ACTUAL_FRACTION, gpuSeconds: Math.round(ESTIMATE.gpuSeconds * ACTUAL_FRACTION) };
      const freed = await release(registry, r.teamId, r.jobId, charge);
      if (!freed.released) violations.push(`${key(r)} was not released`);
      s.completed++;
      s.chargedMicroUsd += Math.round(charge.usd * 1e6);
      finalOutcome.set(key(r), 'completed');
      for (const next of freed.admitted) started(next, true);
      for (const no of freed.rejected) rejected(no);
      inFlight--;
      if (allSubmitted && inFlight === 0) resolveDone();
    };

    // The sampler: one Query per team returns counter, job items and queue in one snapshot.
    let sampling = true;
    const sampler = (async () => {
      while (sampling) {
        for (const t of TEAMS) {
          const out = await doc.send(
            new QueryCommand({
              TableName: 'bench-teams',
              KeyConditionExpression: 'pk = :pk',
              ExpressionAttributeValues: { ':pk': `TEAM#${t.teamId}` },
              ConsistentRead: true,
            }),
          );
          const items = out.Items ?? [];
          const teamItem = items.find((i) => i.sk === 'TEAM')!;
          const admittedItems = items.filter((i) => String(i.sk).startsWith('JOB#') && i.state === 'admitted').length;
          const waitingItems = items.filter((i) => String(i.sk).startsWith('JOB#') && i.state === 'waiting').length;
          const queued = items.filter((i) => String(i.sk).startsWith('WAIT#')).length;
          const s = stats.get(t.teamId)!;
          s.snapshots++;
          s.maxRunningCounter = Math.max(s.maxRunningCounter, teamItem.running as number);
          s.maxAdmittedItems = Math.max(s.maxAdmittedItems, admittedItems);
          if (teamItem.running !== admittedItems || waitingItems !== queued) s.inconsistentSnapshots++;
        }
        // Leave the (serialised) endpoint to the run between rounds.
        await new Promise((r) => setTimeout(r, 20));
      }
    })();

    const requests: AdmissionRequest[] = Array.from({ length: JOBS }, (_, i) =>
      admissionRequest(TEAMS[i % 2]!.teamId, `job-${String(i).padStart(3, '0')}`, { estimate: ESTIMATE }),
    );
    const t0 = performance.now();
    let duplicatesAnsweredAsDuplicate = 0;
    const submissions = [...requests, ...requests.slice(0, DUPLICATES)];
    const firstSeen = new Set<string>();
    await Promise.all(
      submissions.map(async (req) => {
        const r = await admit(registry, req);
        // Exactly one send of each job is decided; the other is answered as a duplicate.
        if (r.duplicate) {
          duplicatesAnsweredAsDuplicate++;
          return;
        }
        if (firstSeen.has(key(req))) violations.push(`${key(req)} decided twice`);
        firstSeen.add(key(req));
        stats.get(req.teamId)!.submitted++;
        if (r.outcome === 'admitted') started(r, false);
        else if (r.outcome === 'waiting') {
          stats.get(req.teamId)!.waitedOnConcurrency++;
          finalOutcome.set(key(r), 'waiting');
        } else rejected(r);
      }),
    );
    allSubmitted = true;
    if (inFlight === 0) resolveDone();
    await done;
    const seconds = (performance.now() - t0) / 1000;
    sampling = false;
    await sampler;

    // Final state from the table.
    const rows: string[] = [];
    let overAdmitted = 0;
    for (const t of TEAMS) {
      const s = stats.get(t.teamId)!;
      const record = (await registry.get(t.teamId))!;
      const waitingLeft = (await registry.items(t.teamId, 'WAIT#')).length;
      const over = Math.max(
        0,
        s.maxRunningBookkeeping - t.maxConcurrentJobs,
        s.maxRunningCounter - t.maxConcurrentJobs,
        s.maxAdmittedItems - t.maxConcurrentJobs,
      );
      overAdmitted += over;
      if (record.usage.running !== 0 || record.usage.reservedMicroUsd !== 0)
        violations.push(`${t.teamId} holds ${record.usage.running} slots / ${record.usage.reservedMicroUsd} µ$ after the run`);
      if (record.usage.spentMicroUsd !== s.chargedMicroUsd)
        violations.push(`${t.teamId} spent ${record.usage.spentMicroUsd} µ$ in the table, ${s.chargedMicroUsd} charged`);
      if (waitingLeft !== 0) violations.push(`${t.teamId} has ${waitingLeft} jobs still waiting`);
      if (s.inconsistentSnapshots !== 0) violations.push(`${t.teamId}: ${s.inconsistentSnapshots} snapshots where the counter disagreed with the job items`);
      const rejectedText =
        Object.entries(s.rejected)
          .map(([c, n]) => `${c} ${n}`)
          .join(', ') || 'none';
      rows.push(
        `${t.teamId}: limit ${t.maxConcurrentJobs} concurrent, budget $${t.monthlyBudgetUsd}\n` +
          `  submitted ${s.submitted}: admitted at once ${s.admittedAtOnce}, waited (CONCURRENCY_LIMIT) ${s.waitedOnConcurrency} -> admitted later ${s.admittedAfterWaiting}; rejected: ${rejectedText}\n` +
          `  completed ${s.completed}; spent $${fromMicroUsd(record.usage.spentMicroUsd).toFixed(2)} of $${t.monthlyBudgetUsd}; still running ${record.usage.running}, waiting ${waitingLeft}\n` +
          `  max running: bookkeeping ${s.maxRunningBookkeeping}, table counter ${s.maxRunningCounter}, admitted job items ${s.maxAdmittedItems} (over ${snapshotText(s)}); over-admitted ${over}`,
      );
    }
    const accounted = requests.filter((r) => {
      const o = finalOutcome.get(key(r));
      return o === 'completed' || o?.startsWith('rejected');
    }).length;
    const lost = JOBS - accounted;
    console.log(
      `bench:admission: ${JOBS} submissions (+${DUPLICATES} duplicate events) across ${TEAMS.length} teams against moto DynamoDB at ${moto.endpoint}`,
    );
    for (const row of rows) console.log(row);
    console.log(`duplicate events answered as duplicates: ${duplicatesAnsweredAsDuplicate} of ${DUPLICATES}`);
    console.log(`over-admitted = ${overAdmitted}, lost = ${lost} (every job completed or rejected with its code: ${accounted} of ${JOBS})`);
    console.log(`wall ${seconds.toFixed(2)} s, ${(JOBS / seconds).toFixed(1)} jobs/s decided and completed`);
    if (duplicatesAnsweredAsDuplicate !== DUPLICATES) violations.push(`${DUPLICATES - duplicatesAnsweredAsDuplicate} duplicate events were decided again`);
    for (const v of violations) console.log(`VIOLATION: ${v}`);
    return overAdmitted === 0 && lost === 0 && violations.length === 0 ? 0 : 1;
  } finally {
    await moto.stop();
  }
}

function newStats(): TeamStats {
  return {
    submitted: 0,
    admittedAtOnce: 0,
    admittedAfterWaiting: 0,
    waitedOnConcurrency: 0,
    rejected: {},
    completed: 0,
    running: new Set(),
    maxRunningBookkeeping: 0,
    maxRunningCounter: 0,
    maxAdmittedItems: 0,
    snapshots: 0,
    inconsistentSnapshots: 0,
    chargedMicroUsd: 0,
  };
}

function snapshotText(s: TeamStats): string {
  return `${s.snapshots} snapshots, ${s.inconsistentSnapshots} inconsistent`;
}

main().then(
  (code) => process.exit(code),
  (error: Error) => {
    console.error(`bench:admission failed: ${error.stack ?? error.message}`);
    process.exit(1);
  },
);
