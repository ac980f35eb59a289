/**
 * Isolation by credentials, evaluated offline with @cloud-copilot/iam-simulate (AGPL-3.0, a test-only
 * dev dependency): each data stage's role policies from the synthesized template, together with the
 * session policy mint sends for job J of team A (lambdas/shared/session-policy.ts), against the job's
 * own keys, other stages' folders (and nested keys inside them), job K of team A and team B. The
 * expected cells are written out here, not derived from lambdas/shared/access.ts.
 *
 * Then the wiring in the template: the stages' own roles hold no S3 grant on job data and may only
 * invoke mint; only mint may assume the data roles; the GPU jobs and Lambda stages get what they need
 * to ask mint. No resource policy is evaluated: the bucket policies only deny non-TLS requests.
 */
import { runSimulation } from '@cloud-copilot/iam-simulate';
import type * as iam from 'aws-cdk-lib/aws-iam';
import { beforeAll, describe, expect, it } from 'vitest';
import { DATA_STAGES, type DataStage, jobSessionPolicy, SESSION_POLICY_MAX_CHARS } from '../../lambdas/shared/session-policy';
import { actionsOf, definitionOf, flatten, logicalId, resourcesOfType, type Synthesized, s3Grants, statementsOf, synth } from './helpers';

const ACCOUNT = '123456789012';
const ARTIFACTS = 'arn:aws:s3:::artifacts';
const INBOX = 'arn:aws:s3:::inbox';
const BUCKETS = { artifacts: ARTIFACTS, inbox: INBOX };
const ROLE = (stage: string) => `arn:aws:iam::${ACCOUNT}:role/${stage}-data-role`;

let s: Synthesized;
let artifactsId: string;
let inboxId: string;
beforeAll(() => {
  s = synth();
  artifactsId = logicalId(s.stack, s.stack.storage.artifacts.bucketName);
  inboxId = logicalId(s.stack, s.stack.storage.inbox.bucketName);
});

/** A template value with the buckets' tokens as `arn:aws:s3:::artifacts` and `arn:aws:s3:::inbox`. */
function resolve(value: unknown): unknown {
  if (Array.isArray(value)) return value.map(resolve);
  if (value === null || typeof value !== 'object') return value;
  const v = value as Record<string, any>;
  if (v['Fn::Join']) return (v['Fn::Join'][1] as unknown[]).map((p) => String(resolve(p))).join(v['Fn::Join'][0]);
  if (v['Fn::GetAtt']) {
    const [id, attr] = v['Fn::GetAtt'] as [string, string];
    if (attr === 'Arn' && id === artifactsId) return ARTIFACTS;
    if (attr === 'Arn' && id === inboxId) return INBOX;
    return `arn:aws:s3:::other-${id}`;
  }
  if (v.Ref) return ({ 'AWS::Partition': 'aws', 'AWS::Region': 'us-east-1', 'AWS::AccountId': ACCOUNT } as Record<string, string>)[v.Ref] ?? `ref-${v.Ref}`;
  return Object.fromEntries(Object.entries(v).map(([k, x]) => [k, resolve(x)]));
}

/** The stage's data role policies from the template (the role mint assumes for it). */
function rolePolicy(stage: DataStage): object {
  return { Version: '2012-10-17', Statement: statementsOf(s, s.stack.credentials.dataRoles[stage]).map((st) => resolve(st)) };
}

type Cell = { what: string; action: string; resource: string; prefix?: string; allowed: boolean };
type Bucket = 'inbox' | 'artifacts';
const arn = (bucket: Bucket) => (bucket === 'inbox' ? INBOX : ARTIFACTS);
const key = (bucket: Bucket, team: string, id: string, rest: string) => `${arn(bucket)}/teams/${team}/jobs/${id}/${rest}`;

/** What each stage must reach in job J of team A (besides status.json, which every stage reads and writes). */
interface Expected {
  /** Object keys it reads, relative to the job. */
  readonly reads: ReadonlyArray<[Bucket, string]>;
  /** Object keys it writes, relative to the job (a folder's sample key, or a file). */
  readonly writes: readonly string[];
  /** The listing it gets: bucket and a prefix inside the job. */
  readonly lists?: ReadonlyArray<[Bucket, string]>;
  readonly models?: boolean;
  readonly deletes?: readonly string[];
}

const EXPECTED: Record<DataStage, Expected> = {
  validate: {
    reads: [
      ['inbox', 'job.json'],
      ['inbox', 'photos/1.jpg'],
    ],
    writes: ['validate/report.json', 'validate/crops/1.png'],
    lists: [
      ['inbox', ''],
      ['inbox', 'photos/'],
    ],
  },
  normalize: {
    reads: [
      ['inbox', 'captions/1.txt'],
      ['artifacts', 'validate/report.json'],
    ],
    writes: ['normalize/plan.json', 'normalize/10_tok/1.png'],
  },
  admit: { reads: [['artifacts', 'normalize/plan.json']], writes: [] },
  // One GPU job runs the caption stage first: caption/ is its own folder too.
  train: {
    reads: [
      ['artifacts', 'normalize/x.png'],
      ['artifacts', 'caption/x.txt'],
      ['artifacts', 'train/ckpt.safetensors'],
    ],
    writes: ['caption/out.txt', 'train/out.bin'],
    lists: [
      ['artifacts', 'train/'],
      ['artifacts', 'caption/2_tok/'],
    ],
    models: true,
    deletes: ['train/state/old/x'],
  },
  evaluate: {
    reads: [
      ['artifacts', 'train/ckpt.safetensors'],
      ['artifacts', 'normalize/plan.json'],
    ],
    writes: ['evaluate/grid.png'],
    models: true,
  },
  finalize: {
    reads: [
      ['artifacts', 'train/ckpt.safetensors'],
      ['artifacts', 'evaluate/grid.png'],
      ['artifacts', 'validate/report.json'],
    ],
    writes: ['manifest.json'],
    lists: [['artifacts', '']],
  },
  'mark-failed': { reads: [], writes: [] },
};

const FOLDERS = ['validate', 'normalize', 'caption', 'train', 'evaluate', 'notify'] as const;

/** The matrix for `stage` working on job j of team a: what must be allowed, and what must not. */
function matrix(stage: DataStage): Cell[] {
  const e = EXPECTED[stage];
  const ownFolders = new Set(e.writes.filter((w) => w.includes('/')).map((w) => w.split('/')[0]));
  const others = FOLDERS.filter((f) => !ownFolders.has(f));
  const writes = [...e.writes, 'status.json'];
  const cells: Cell[] = [
    { what: 'own status read', action: 's3:GetObject', resource: key('artifacts', 'a', 'j', 'status.json'), allowed: true },
    { what: 'own status write', action: 's3:PutObject', resource: key('artifacts', 'a', 'j', 'status.json'), allowed: true },
    ...e.reads.map(([b, r]) => ({ what: `own read ${b}:${r}`, action: 's3:GetObject', resource: key(b, 'a', 'j', r), allowed: true })),
    ...e.writes.map((w) => ({ what: `own write ${w}`, action: 's3:PutObject', resource: key('artifacts', 'a', 'j', w), allowed: true })),
    ...others.map((o) => ({
      what: `another stage's folder write (${o})`,
      action: 's3:PutObject',
      resource: key('artifacts', 'a', 'j', `${o}/out.bin`),
      allowed: false,
    })),
    // IAM's * matches /: the role's teams/*/jobs/*/<key> also matches <key> nested in another stage's folder.
    ...others.flatMap((o) =>
      writes.map((w) => ({ what: `nested ${w} in ${o}'s folder`, action: 's3:PutObject', resource: key('artifacts', 'a', 'j', `${o}/${w}`), allowed: false })),
    ),
    { what: 'no write to the inbox', action: 's3:PutObject', resource: key('inbox', 'a', 'j', 'job.json'), allowed: false },
    { what: 'no delete of status', action: 's3:DeleteObject', resource: key('artifacts', 'a', 'j', 'status.json'), allowed: false },
    ...(stage === 'finalize'
      ? []
      : [{ what: 'no manifest write', action: 's3:PutObject', resource: key('artifacts', 'a', 'j', 'manifest.json'), allowed: false }]),
    ...[
      ['a', 'k', 'job K'],
      ['b', 'j', 'team B'],
    ].flatMap(([team, id, who]) => [
      ...e.reads.map(([b, r]) => ({ what: `${who} read ${b}:${r}`, action: 's3:GetObject', resource: key(b, team, id, r), allowed: false })),
      ...writes.map((w) => ({ what: `${who} write ${w}`, action: 's3:PutObject', resource: key('artifacts', team, id, w), allowed: false })),
      { what: `${who} status read`, action: 's3:GetObject', resource: key('artifacts', team, id, 'status.json'), allowed: false },
      ...(e.deletes ?? []).map((d) => ({ what: `${who} delete ${d}`, action: 's3:DeleteObject', resource: key('artifacts', team, id, d), allowed: false })),
      ...(e.lists ?? []).map(([b, p]) => ({
        what: `${who} list ${b}:${p}`,
        action: 's3:ListBucket',
        resource: arn(b),
        prefix: `teams/${team}/jobs/${id}/${p}`,
        allowed: false,
      })),
    ]),
    ...(e.deletes ?? []).map((d) => ({ what: `own delete ${d}`, action: 's3:DeleteObject', resource: key('artifacts', 'a', 'j', d), allowed: true })),
    ...(e.lists ?? []).map(([b, p]) => ({
      what: `own list ${b}:${p}`,
      action: 's3:ListBucket',
      resource: arn(b),
      prefix: `teams/a/jobs/j/${p}`,
      allowed: true,
    })),
    { what: 'list every team', action: 's3:ListBucket', resource: ARTIFACTS, prefix: 'teams/', allowed: false },
    { what: 'list every team (inbox)', action: 's3:ListBucket', resource: INBOX, prefix: 'teams/', allowed: false },
    { what: 'shared models read', action: 's3:GetObject', resource: `${ARTIFACTS}/models/sd15/base.safetensors`, allowed: !!e.models },
    { what: 'shared models write', action: 's3:PutObject', resource: `${ARTIFACTS}/models/sd15/base.safetensors`, allowed: false },
  ];
  return cells;
}

async function evaluate(stage: DataStage, cell: Cell, sessionPolicy: object | undefined): Promise<boolean> {
  const result = await runSimulation(
    {
      identityPolicies: [{ name: `${stage}-data-role`, policy: rolePolicy(stage) }],
      serviceControlPolicies: [],
      resourceControlPolicies: [],
      ...(sessionPolicy ? { sessionPolicy } : {}),
      request: {
        principal: ROLE(stage),
        action: cell.action,
        resource: { resource: cell.resource, accountId: ACCOUNT },
        contextVariables: cell.prefix !== undefined ? { 's3:prefix': cell.prefix } : {},
      },
    },
    {},
  );
  if (result.resultType !== 'single') throw new Error(`simulation of ${cell.what} failed: ${JSON.stringify(result)}`);
  return result.result.analysis.result === 'Allowed';
}

/** Cells whose outcome differs from the expected one, as readable lines. */
async function mismatches(stage: DataStage, session: object | undefined): Promise<string[]> {
  const out: string[] = [];
  for (const cell of matrix(stage)) {
    const allowed = await evaluate(stage, cell, session);
    if (allowed !== cell.allowed)
      out.push(`${stage}: ${cell.what} (${cell.action} ${cell.resource}${cell.prefix ? ` ${cell.prefix}` : ''}) is ${allowed ? 'ALLOWED' : 'denied'}`);
  }
  return out;
}

describe('isolation by credentials (iam-simulate)', () => {
  it.each(DATA_STAGES)('%s on job J of team A, with its minted session policy, reaches only its own cells', async (stage) => {
    expect(await mismatches(stage, jobSessionPolicy(stage, 'a', 'j', BUCKETS))).toEqual([]);
  });

  it("the data roles alone are too wide: they reach job K, team B and nested keys in other stages' folders", async () => {
    const gaps = (await Promise.all((['validate', 'train', 'evaluate', 'mark-failed'] as const).map((st) => mismatches(st, undefined)))).flat();
    // Every gap is an over-grant (nothing expected is denied), and each kind of gap is present.
    expect(gaps.every((g) => g.endsWith('ALLOWED'))).toBe(true);
    expect(gaps.some((g) => g.includes('team B read'))).toBe(true);
    expect(gaps.some((g) => g.includes('job K write'))).toBe(true);
    expect(gaps.some((g) => g.includes('nested'))).toBe(true);
    expect(gaps.some((g) => g.startsWith('mark-failed: team B status read'))).toBe(true);
  });

  it('fails when the session policy is widened (team-wide instead of job-wide)', async () => {
    const widened = JSON.parse(JSON.stringify(jobSessionPolicy('train', 'a', 'j', BUCKETS)).replaceAll('/teams/a/jobs/j/', '/teams/a/jobs/*/'));
    const gaps = await mismatches('train', widened);
    expect(gaps).toContain(`train: job K read artifacts:normalize/x.png (s3:GetObject ${key('artifacts', 'a', 'k', 'normalize/x.png')}) is ALLOWED`);
  });

  it('fails when a data role is widened to another bucket (the session policy names any bucket, the role names the bucket)', async () => {
    const widened = { Version: '2012-10-17', Statement: [{ Effect: 'Allow', Action: 's3:PutObject', Resource: `${INBOX}/*` }] };
    const session = jobSessionPolicy('validate', 'a', 'j', BUCKETS);
    const result = await runSimulation(
      {
        identityPolicies: [
          { name: 'validate-data-role', policy: rolePolicy('validate') },
          { name: 'widened', policy: widened },
        ],
        serviceControlPolicies: [],
        resourceControlPolicies: [],
        sessionPolicy: session,
        request: {
          principal: ROLE('validate'),
          action: 's3:PutObject',
          resource: { resource: key('inbox', 'a', 'j', 'validate/x'), accountId: ACCOUNT },
          contextVariables: {},
        },
      },
      {},
    );
    expect(result.resultType === 'single' && result.result.analysis.result).toBe('Allowed');
  });

  it('keeps every session policy under STS’s 2,048 characters, even for two 63-character ids', () => {
    const id = 'a'.repeat(63);
    const long = { artifacts: `arn:aws-us-gov:s3:::${'b'.repeat(63)}`, inbox: `arn:aws-us-gov:s3:::${'c'.repeat(63)}` };
    for (const stage of DATA_STAGES) expect(JSON.stringify(jobSessionPolicy(stage, id, id, long)).length).toBeLessThanOrEqual(SESSION_POLICY_MAX_CHARS);
  });

  it('refuses ids that could escape the job prefix', () => {
    expect(() => jobSessionPolicy('train', 'a', '../b', BUCKETS)).toThrow();
    expect(() => jobSessionPolicy('validate', 'a/*', 'j', BUCKETS)).toThrow();
  });
});

/** Where a stage's secret is kept in the execution: `$.stageSecrets.<stage, camelCase>`. */
const stageSecretOf = (stage: DataStage) => `$.stageSecrets.${stage.replace(/-([a-z])/g, (_m, c: string) => c.toUpperCase())}`;

describe('credentials wiring (template)', () => {
  const mintArn = () => `<${logicalId(s.stack, s.stack.credentials.mint.functionArn)}>`;
  const mintRoleId = () => logicalId(s.stack, s.stack.credentials.mint.executionRole.roleArn);
  /** The roles the data stages run as: the workflow's Lambda stages and the GPU job roles. */
  const stageRoles = (): Record<DataStage, iam.IRole> => ({
    validate: s.stack.functions.validate.executionRole,
    normalize: s.stack.functions.normalize.executionRole,
    admit: s.stack.functions.admit.executionRole,
    finalize: s.stack.functions.finalize.executionRole,
    'mark-failed': s.stack.functions.markFailed.executionRole,
    train: s.stack.gpu.train.container.jobRole!,
    evaluate: s.stack.gpu.evaluate.container.jobRole!,
  });

  it.each(DATA_STAGES)('the %s stage role holds no S3 or STS grant and may invoke mint only', (stage) => {
    const role = stageRoles()[stage];
    expect(s3Grants(s, role)).toEqual({});
    const statements = statementsOf(s, role);
    expect(statements.flatMap(actionsOf).filter((a) => a.startsWith('sts:'))).toEqual([]);
    const invoke = statements.filter((st) => actionsOf(st).some((a) => a.startsWith('lambda:')));
    expect(invoke.map((st) => [actionsOf(st), ([] as unknown[]).concat(st.Resource).map(flatten)])).toEqual([[['lambda:InvokeFunction'], [mintArn()]]]);
  });

  it.each(DATA_STAGES)('the %s data role trusts mint’s role only', (stage) => {
    const [, role] = resourcesOfType(s.json, 'AWS::IAM::Role').find(([id]) => id === logicalId(s.stack, s.stack.credentials.dataRoles[stage].roleArn))!;
    expect(role.Properties.AssumeRolePolicyDocument.Statement).toEqual([
      { Effect: 'Allow', Action: 'sts:AssumeRole', Principal: { AWS: { 'Fn::GetAtt': [mintRoleId(), 'Arn'] } } },
    ]);
  });

  it('mint may assume the data roles and read the registry, nothing else', () => {
    const statements = statementsOf(s, s.stack.credentials.mint.executionRole);
    const sts = statements.filter((st) => actionsOf(st).some((a) => a.startsWith('sts:')));
    expect(sts.flatMap(actionsOf)).toEqual(['sts:AssumeRole']);
    const dataRoles = DATA_STAGES.map((stage) => `<${logicalId(s.stack, s.stack.credentials.dataRoles[stage].roleArn)}>`).sort();
    expect(([] as unknown[]).concat(sts[0]!.Resource).map(flatten).sort()).toEqual(dataRoles);
    expect(s3Grants(s, s.stack.credentials.mint.executionRole)).toEqual({});
    const dynamo = statements.filter((st) => actionsOf(st).some((a) => a.startsWith('dynamodb:')));
    expect(dynamo.flatMap(actionsOf)).toEqual(['dynamodb:GetItem']);
  });

  it('no role but mint may assume any role of the stack, except the job API assuming its read-only results signing role', () => {
    const mintPolicies = new Set(statementsOf(s, s.stack.credentials.mint.executionRole));
    const apiPolicies = new Set(statementsOf(s, s.stack.api.function.role!));
    const signingRole = flatten({ 'Fn::GetAtt': [logicalId(s.stack, s.stack.api.resultsSigningRole.roleArn), 'Arn'] });
    const assumers: string[] = [];
    for (const [, policy] of resourcesOfType(s.json, 'AWS::IAM::Policy')) {
      for (const st of policy.Properties.PolicyDocument.Statement) {
        if (!actionsOf(st).some((a) => a.startsWith('sts:'))) continue;
        if (mintPolicies.has(st)) assumers.push('mint');
        else if (apiPolicies.has(st) && [st.Resource].flat().map(flatten).join() === signingRole) assumers.push('api -> results signing');
        else assumers.push(`unexpected: ${JSON.stringify(st)}`);
      }
    }
    expect(new Set(assumers)).toEqual(new Set(['mint', 'api -> results signing']));
  });

  it('the GPU job definitions name mint in AVATAR_MINT_FUNCTION', () => {
    for (const stage of ['train', 'evaluate'] as const) {
      const [, def] = resourcesOfType(s.json, 'AWS::Batch::JobDefinition').find(([id]) => id === logicalId(s.stack, s.stack.gpu[stage].jobDefinitionArn))!;
      const env = def.Properties.ContainerProperties.Environment as Array<{ Name: string; Value: unknown }>;
      expect(env.filter((e) => e.Name === 'AVATAR_MINT_FUNCTION').map((e) => flatten(e.Value))).toEqual([
        `<${logicalId(s.stack, s.stack.credentials.mint.functionName)}>`,
      ]);
    }
  });

  it('the Lambda stages name mint in MINT_FUNCTION', () => {
    for (const fn of [
      s.stack.functions.validate,
      s.stack.functions.normalize,
      s.stack.functions.admit,
      s.stack.functions.finalize,
      s.stack.functions.markFailed,
    ]) {
      const [, res] = resourcesOfType(s.json, 'AWS::Lambda::Function').find(([id]) => id === logicalId(s.stack, fn.functionArn))!;
      expect(flatten(res.Properties.Environment.Variables.MINT_FUNCTION)).toBe(`<${logicalId(s.stack, s.stack.credentials.mint.functionName)}>`);
    }
  });

  it('the state machine creates the secret, registers its SHA-256 itself, and hands it to every stage', () => {
    const asl = definitionOf(s);
    expect(asl.StartAt).toBe('CreateJobSecret');
    // One fresh UUID per data stage, and nothing else carried over from the input but the ids.
    expect(asl.States.CreateJobSecret).toEqual({
      Type: 'Pass',
      Parameters: {
        'teamId.$': '$.teamId',
        'jobId.$': '$.jobId',
        stageSecrets: Object.fromEntries(DATA_STAGES.map((st) => [`${stageSecretOf(st).split('.').at(-1)}.$`, 'States.UUID()'])),
      },
      Next: 'RegisterJobSecret',
    });
    expect(asl.States.RegisterJobSecret).toMatchObject({
      Type: 'Task',
      Resource: expect.stringMatching(/:states:::dynamodb:putItem$/),
      Parameters: {
        TableName: `<${logicalId(s.stack, s.stack.teams.table.tableName)}>`,
        Item: {
          pk: { 'S.$': "States.Format('TEAM#{}', $.teamId)" },
          sk: { 'S.$': "States.Format('SECRET#{}', $.jobId)" },
          // By stage name, as mint looks them up.
          stageSecrets: { M: Object.fromEntries(DATA_STAGES.map((st) => [st, { 'S.$': `States.Hash(${stageSecretOf(st)}, 'SHA-256')` }])) },
        },
      },
      ResultPath: null,
      Next: 'Validate',
    });
    // Each stage gets its own secret, and no other's.
    const lambdas = { Validate: 'validate', Normalize: 'normalize', Admit: 'admit', Finalize: 'finalize', MarkFailed: 'mark-failed' } as const;
    for (const [state, stage] of Object.entries(lambdas)) expect(asl.States[state].Parameters.Payload['jobSecret.$']).toBe(stageSecretOf(stage));
    for (const [state, stage] of [
      ['Train', 'train'],
      ['Evaluate', 'evaluate'],
    ] as const) {
      expect(asl.States[state].Parameters.ContainerOverrides.Environment).toContainEqual({ Name: 'AVATAR_JOB_SECRET', 'Value.$': stageSecretOf(stage) });
    }
    // Each secret is read twice: hashed at registration and handed to its stage.
    for (const st of DATA_STAGES)
      expect(JSON.stringify(asl).split(new RegExp(`${stageSecretOf(st).replaceAll('.', '\\.').replace('$', '\\$')}(?![A-Za-z])`))).toHaveLength(3);
    expect(JSON.stringify(asl)).not.toContain('"$.stageSecrets"');
  });
});
