/**
 * Isolation by credentials, evaluated offline with @cloud-copilot/iam-simulate (AGPL-3.0, a test-only
 * dev dependency): the synthesized template's GPU stage role policies, together with the job-scoped
 * session policy (lambdas/shared/session-policy.ts), for job J of team A against its own folders,
 * another stage's folder, job K of team A and team B. Only the expected cells may be allowed.
 *
 * Scope: the three GPU stage roles and the artifacts bucket (object actions and train's listing).
 * No resource policy is evaluated: the bucket policy only denies non-TLS requests.
 */
import { runSimulation } from '@cloud-copilot/iam-simulate';
import { beforeAll, describe, expect, it } from 'vitest';
import { type GpuStage, jobSessionPolicy } from '../../lambdas/shared/session-policy';
import { logicalId, type Synthesized, statementsOf, synth } from './helpers';

const ACCOUNT = '123456789012';
const BUCKET = 'arn:aws:s3:::artifacts';
const ROLE = (stage: string) => `arn:aws:iam::${ACCOUNT}:role/${stage}-job-role`;

let s: Synthesized;
let artifactsId: string;
beforeAll(() => {
  s = synth();
  artifactsId = logicalId(s.stack, s.stack.storage.artifacts.bucketName);
});

/** A template value with the artifacts bucket's tokens as `arn:aws:s3:::artifacts`. */
function resolve(value: unknown): unknown {
  if (Array.isArray(value)) return value.map(resolve);
  if (value === null || typeof value !== 'object') return value;
  const v = value as Record<string, any>;
  if (v['Fn::Join']) return (v['Fn::Join'][1] as unknown[]).map((p) => String(resolve(p))).join(v['Fn::Join'][0]);
  if (v['Fn::GetAtt']) return v['Fn::GetAtt'][0] === artifactsId && v['Fn::GetAtt'][1] === 'Arn' ? BUCKET : `arn:aws:s3:::other-${v['Fn::GetAtt'][0]}`;
  if (v.Ref) return ({ 'AWS::Partition': 'aws', 'AWS::Region': 'us-east-1', 'AWS::AccountId': ACCOUNT } as Record<string, string>)[v.Ref] ?? `ref-${v.Ref}`;
  return Object.fromEntries(Object.entries(v).map(([k, x]) => [k, resolve(x)]));
}

/** The stage's job role policies from the template (the role the container definition runs as). */
function rolePolicy(stage: GpuStage): object {
  return { Version: '2012-10-17', Statement: statementsOf(s, s.stack.gpu[stage].container.jobRole!).map((st) => resolve(st)) };
}

type Cell = { what: string; action: string; resource: string; prefix?: string; allowed: boolean };

const job = (team: string, id: string, rest: string) => `${BUCKET}/teams/${team}/jobs/${id}/${rest}`;

/** The matrix for `stage` working on job j of team a: what must be allowed, and what must not. */
function matrix(stage: GpuStage): Cell[] {
  const reads: Record<GpuStage, string[]> = {
    train: ['normalize/x.png', 'caption/x.txt', 'train/ckpt.safetensors'],
    evaluate: ['train/ckpt.safetensors', 'normalize/plan.json'],
  };
  // The train job runs the caption stage first: caption/ is its own folder too.
  const own: Record<GpuStage, string[]> = { train: ['caption', 'train'], evaluate: ['evaluate'] };
  const others = (['caption', 'train', 'evaluate', 'normalize', 'validate', 'finalize'] as const).filter((o) => !own[stage].includes(o));
  const models = true;
  const cells: Cell[] = [
    { what: 'own status read', action: 's3:GetObject', resource: job('a', 'j', 'status.json'), allowed: true },
    { what: 'own status write', action: 's3:PutObject', resource: job('a', 'j', 'status.json'), allowed: true },
    ...reads[stage].map((r) => ({ what: `own read ${r}`, action: 's3:GetObject', resource: job('a', 'j', r), allowed: true })),
    ...own[stage].map((f) => ({ what: `own folder write (${f})`, action: 's3:PutObject', resource: job('a', 'j', `${f}/out.bin`), allowed: true })),
    ...others.map((o) => ({ what: `another stage's folder write (${o})`, action: 's3:PutObject', resource: job('a', 'j', `${o}/out.bin`), allowed: false })),
    // IAM's * matches /: the role's teams/*/jobs/*/<stage>/* also matches this key in another stage's folder.
    ...others.map((o) => ({ what: `nested key in ${o}'s folder`, action: 's3:PutObject', resource: job('a', 'j', `${o}/${stage}/out.bin`), allowed: false })),
    { what: 'the spec and photos (inbox copy in artifacts)', action: 's3:GetObject', resource: job('a', 'j', 'job.json'), allowed: false },
    ...reads[stage].map((r) => ({ what: `job K read ${r}`, action: 's3:GetObject', resource: job('a', 'k', r), allowed: false })),
    { what: 'job K write', action: 's3:PutObject', resource: job('a', 'k', `${stage}/out.bin`), allowed: false },
    { what: 'job K status write', action: 's3:PutObject', resource: job('a', 'k', 'status.json'), allowed: false },
    ...reads[stage].map((r) => ({ what: `team B read ${r}`, action: 's3:GetObject', resource: job('b', 'j', r), allowed: false })),
    { what: 'team B write', action: 's3:PutObject', resource: job('b', 'j', `${stage}/out.bin`), allowed: false },
    { what: 'team B status write', action: 's3:PutObject', resource: job('b', 'j', 'status.json'), allowed: false },
    { what: 'shared models read', action: 's3:GetObject', resource: `${BUCKET}/models/sd15/base.safetensors`, allowed: models },
    { what: 'shared models write', action: 's3:PutObject', resource: `${BUCKET}/models/sd15/base.safetensors`, allowed: false },
  ];
  if (stage === 'train') {
    cells.push(
      { what: 'own state delete', action: 's3:DeleteObject', resource: job('a', 'j', 'train/state/old/x'), allowed: true },
      { what: 'job K state delete', action: 's3:DeleteObject', resource: job('a', 'k', 'train/state/old/x'), allowed: false },
      { what: 'list own train folder', action: 's3:ListBucket', resource: BUCKET, prefix: 'teams/a/jobs/j/train/', allowed: true },
      { what: 'list own caption folder', action: 's3:ListBucket', resource: BUCKET, prefix: 'teams/a/jobs/j/caption/2_tok/', allowed: true },
      { what: 'list team B', action: 's3:ListBucket', resource: BUCKET, prefix: 'teams/b/jobs/', allowed: false },
    );
  }
  return cells;
}

async function evaluate(stage: GpuStage, cell: Cell, sessionPolicy: object | undefined): Promise<boolean> {
  const result = await runSimulation(
    {
      identityPolicies: [{ name: `${stage}-role`, policy: rolePolicy(stage) }],
      serviceControlPolicies: [],
      resourceControlPolicies: [],
      ...(sessionPolicy ? { sessionPolicy } : {}),
      request: {
        principal: ROLE(stage),
        action: cell.action,
        resource: { resource: cell.resource, accountId: ACCOUNT },
        contextVariables: cell.prefix ? { 's3:prefix': cell.prefix } : {},
      },
    },
    {},
  );
  if (result.resultType !== 'single') throw new Error(`simulation of ${cell.what} failed: ${JSON.stringify(result)}`);
  return result.result.analysis.result === 'Allowed';
}

/** Cells whose outcome differs from the expected one, as readable lines. */
async function mismatches(stage: GpuStage, session: object | undefined): Promise<string[]> {
  const out: string[] = [];
  for (const cell of matrix(stage)) {
    const allowed = await evaluate(stage, cell, session);
    if (allowed !== cell.allowed) out.push(`${stage}: ${cell.what} (${cell.action} ${cell.resource}) is ${allowed ? 'ALLOWED' : 'denied'}`);
  }
  return out;
}

describe('isolation by credentials (iam-simulate)', () => {
  it.each(['train', 'evaluate'] as const)('%s on job J of team A, with its session policy, reaches only its own cells', async (stage) => {
    expect(await mismatches(stage, jobSessionPolicy(stage, 'a', 'j', BUCKET))).toEqual([]);
  });

  it("the stage roles alone are too wide: they reach job K, team B and nested keys in other stages' folders", async () => {
    const gaps = (await Promise.all((['train', 'evaluate'] as const).map((st) => mismatches(st, undefined)))).flat();
    // Every gap is an over-grant (nothing expected is denied), and each kind of gap is present.
    expect(gaps.every((g) => g.endsWith('ALLOWED'))).toBe(true);
    expect(gaps.some((g) => g.includes('team B read'))).toBe(true);
    expect(gaps.some((g) => g.includes('job K write'))).toBe(true);
    expect(gaps.some((g) => g.includes('nested key in'))).toBe(true);
  });

  it('fails when the session policy is widened (team-wide instead of job-wide)', async () => {
    const widened = JSON.parse(JSON.stringify(jobSessionPolicy('train', 'a', 'j', BUCKET)).replaceAll('/teams/a/jobs/j/', '/teams/a/jobs/*/'));
    const gaps = await mismatches('train', widened);
    expect(gaps).toContain(`train: job K read normalize/x.png (s3:GetObject ${job('a', 'k', 'normalize/x.png')}) is ALLOWED`);
  });

  it('refuses ids that could escape the job prefix', () => {
    expect(() => jobSessionPolicy('train', 'a', '../b', BUCKET)).toThrow();
    expect(() => jobSessionPolicy('train', 'a/*', 'j', BUCKET)).toThrow();
  });
});
