import type * as iam from 'aws-cdk-lib/aws-iam';
import { beforeAll, describe, expect, it } from 'vitest';
import { type AccessStage, stagePatterns } from '../../lambdas/shared/access';
import { fillKey, LAYOUT, type LayoutEntry } from '../../lambdas/shared/layout';
import { actionsOf, flatten, logicalId, resourcesOfType, type Synthesized, s3Grants, statementsOf, synth } from './helpers';

let s: Synthesized;
let I: string; // inbox logical id
let A: string; // artifacts logical id
beforeAll(() => {
  s = synth();
  I = `<${logicalId(s.stack, s.stack.storage.inbox.bucketName)}>`;
  A = `<${logicalId(s.stack, s.stack.storage.artifacts.bucketName)}>`;
});

const job = (bucket: string, rest: string) => `${bucket}/teams/*/jobs/*/${rest}`;
const sorted = (xs: string[]) => [...xs].sort();

describe('least-privilege S3 access (the data roles mint assumes per job)', () => {
  it('validate reads the job inbox, lists it by prefix, writes validate/ and status.json', () => {
    const role = s.stack.credentials.dataRoles.validate;
    expect(s3Grants(s, role)).toEqual({
      's3:GetObject': sorted([job(I, '*'), job(A, 'status.json')]),
      's3:PutObject': sorted([job(A, 'validate/*'), job(A, 'status.json')]),
      's3:ListBucket': [I],
    });
    const list = statementsOf(s, role).find((st) => actionsOf(st).includes('s3:ListBucket'))!;
    expect(list.Condition).toEqual({ StringLike: { 's3:prefix': ['teams/*'] } });
  });

  it('normalize reads photos and the validate report, writes normalize/ (dataset, plan) and status.json', () => {
    expect(s3Grants(s, s.stack.credentials.dataRoles.normalize)).toEqual({
      's3:GetObject': sorted([job(I, '*'), job(A, 'validate/*'), job(A, 'status.json')]),
      's3:PutObject': sorted([job(A, 'normalize/*'), job(A, 'status.json')]),
    });
  });

  it('finalize reads and lists the job artifacts, writes only manifest.json and status.json', () => {
    const role = s.stack.credentials.dataRoles.finalize;
    expect(s3Grants(s, role)).toEqual({
      's3:GetObject': [job(A, '*')],
      's3:ListBucket': [A],
      's3:PutObject': sorted([job(A, 'manifest.json'), job(A, 'status.json')]),
    });
    const list = statementsOf(s, role).find((st) => actionsOf(st).includes('s3:ListBucket'))!;
    expect(list.Condition).toEqual({ StringLike: { 's3:prefix': ['teams/*'] } });
  });

  it('mark-failed can only touch status.json', () => {
    expect(s3Grants(s, s.stack.credentials.dataRoles['mark-failed'])).toEqual({
      's3:GetObject': [job(A, 'status.json')],
      's3:PutObject': [job(A, 'status.json')],
    });
  });

  it('the caption+train job reads dataset, captions and models, writes caption/ and train/, prunes only its old state', () => {
    expect(s3Grants(s, s.stack.credentials.dataRoles.train)).toEqual({
      's3:GetObject': sorted([job(A, 'normalize/*'), job(A, 'caption/*'), `${A}/models/*`, job(A, 'train/*'), job(A, 'status.json')]),
      's3:PutObject': sorted([job(A, 'caption/*'), job(A, 'train/*'), job(A, 'status.json')]),
      's3:DeleteObject': [job(A, 'train/state/*')],
      's3:ListBucket': [A],
    });
  });

  it('the evaluate job reads checkpoints, dataset, models and the report inputs, writes evaluate/', () => {
    expect(s3Grants(s, s.stack.credentials.dataRoles.evaluate)).toEqual({
      's3:GetObject': sorted([
        job(A, 'train/*'),
        job(A, 'normalize/*'),
        job(A, 'validate/contact-sheet.png'),
        job(A, 'caption/captions.json'),
        `${A}/models/*`,
        job(A, 'status.json'),
      ]),
      's3:PutObject': sorted([job(A, 'evaluate/*'), job(A, 'status.json')]),
    });
  });

  it('no GPU job can read the inbox', () => {
    for (const stage of ['train', 'evaluate'] as const) {
      const grants = Object.values(s3Grants(s, s.stack.credentials.dataRoles[stage])).flat();
      expect(grants.filter((r) => r.startsWith(I))).toEqual([]);
    }
  });

  it('no identity policy grants s3:* or any S3 action on every resource', () => {
    for (const [, policy] of resourcesOfType(s.json, 'AWS::IAM::Policy')) {
      for (const st of policy.Properties.PolicyDocument.Statement) {
        const s3Actions = actionsOf(st).filter((a) => a.startsWith('s3:'));
        expect(s3Actions.filter((a) => a.includes('*'))).toEqual([]);
        if (s3Actions.length > 0) {
          expect(([] as unknown[]).concat(st.Resource).map(flatten)).not.toContain('*');
        }
      }
    }
  });
});

describe('batch roles', () => {
  it('the execution role only pulls images and writes logs', () => {
    const role = s.stack.gpu.train.container.executionRole;
    expect(s.stack.gpu.evaluate.container.executionRole).toBe(role);
    const actions = statementsOf(s, role).flatMap(actionsOf);
    expect(actions.filter((a) => !a.startsWith('ecr:') && !a.startsWith('logs:'))).toEqual([]);
    expect(actions).toContain('ecr:BatchGetImage');
    expect(actions).toContain('logs:PutLogEvents');
  });

  it('the instance role is the ECS container instance role', () => {
    const instanceRoles = resourcesOfType(s.json, 'AWS::IAM::Role').filter(([, r]) =>
      JSON.stringify(r.Properties.AssumeRolePolicyDocument).includes('ec2.amazonaws.com'),
    );
    expect(instanceRoles).toHaveLength(1);
    expect(JSON.stringify(instanceRoles[0]![1].Properties.ManagedPolicyArns)).toContain('service-role/AmazonEC2ContainerServiceforEC2Role');
  });
});

describe('IAM key patterns derived from the key layout (lambdas/shared/access.ts)', () => {
  const roles = (): Record<AccessStage, iam.IRole> => ({
    start: s.stack.trigger.startFunction.executionRole,
    validate: s.stack.credentials.dataRoles.validate,
    normalize: s.stack.credentials.dataRoles.normalize,
    finalize: s.stack.credentials.dataRoles.finalize,
    'mark-failed': s.stack.credentials.dataRoles['mark-failed'],
    reconcile: s.stack.functions.reconcile.executionRole,
    train: s.stack.credentials.dataRoles.train,
    evaluate: s.stack.credentials.dataRoles.evaluate,
    api: s.stack.api.function.executionRole,
    notify: s.stack.api.notifyFunction.executionRole,
    admit: s.stack.credentials.dataRoles.admit,
    announce: s.stack.announce.function.executionRole,
    results: s.stack.api.resultsSigningRole,
  });
  const derived = (stage: AccessStage) => {
    const grants: Record<string, string[]> = {};
    for (const action of ['s3:GetObject', 's3:GetObjectVersion', 's3:PutObject', 's3:DeleteObject', 's3:DeleteObjectVersion'] as const) {
      const resources = [
        ...stagePatterns(stage, 'inbox', action).map((p) => `${I}/${p}`),
        ...stagePatterns(stage, 'artifacts', action).map((p) => `${A}/${p}`),
      ];
      if (resources.length > 0) grants[action] = resources.sort();
    }
    return grants;
  };

  it.each([
    'start',
    'validate',
    'normalize',
    'finalize',
    'mark-failed',
    'reconcile',
    'train',
    'evaluate',
    'api',
    'notify',
    'admit',
    'announce',
    'results',
  ] as const)('the %s role is granted exactly the object keys its access entry derives from the layout', (stage) => {
    // The job API's erasure (s3:DeleteObject and DeleteObjectVersion on every version under teams/*)
    // is granted beside the table, in infra/constructs/api.ts.
    const { 's3:ListBucket': _list, 's3:ListBucketVersions': _versions, ...objects } = s3Grants(s, roles()[stage]);
    if (stage === 'api') {
      expect(objects['s3:DeleteObjectVersion']).toEqual([`${A}/teams/*`, `${I}/teams/*`].sort());
      delete objects['s3:DeleteObjectVersion'];
      delete objects['s3:DeleteObject'];
    }
    expect(objects).toEqual(derived(stage));
  });

  // An IAM wildcard: `*` matches any run of characters, "/" included.
  const matches = (pattern: string, key: string) =>
    new RegExp(
      `^${pattern
        .split('*')
        .map((p) => p.replace(/[.+?^${}()|[\]\\]/g, '\\$&'))
        .join('.*')}$`,
    ).test(key);
  const sample = {
    teamId: 'team-a',
    jobId: 'job-1',
    name: 'ohwx',
    folder: '10_ohwx',
    stem: 'ohwx-01',
    epoch: 3,
    state: 'ohwx-state',
    file: 'ohwx-01-seed1.png',
  };
  const writers = ['validate', 'normalize', 'train', 'evaluate'] as const;
  // The folder each role writes: its stage's, and the train job's role also caption's (it runs both).
  const folders = { validate: ['validate'], normalize: ['normalize'], train: ['caption', 'train'], evaluate: ['evaluate'] } as const;

  it('every key under a stage folder is writable by the role that runs that stage and by no other', () => {
    const entries = (Object.keys(LAYOUT) as LayoutEntry[]).filter((e) => writers.some((w) => folders[w].some((f) => LAYOUT[e].startsWith(`${f}/`))));
    expect(entries).toEqual(expect.arrayContaining(['plan', 'captions', 'checkpoint', 'finalModel', 'trainState', 'scores', 'report']));
    for (const entry of entries) {
      const key = fillKey(LAYOUT.jobPrefix + LAYOUT[entry], sample) + (LAYOUT[entry].endsWith('/') ? 'x' : '');
      const owners = writers.filter((w) => stagePatterns(w, 'artifacts', 's3:PutObject').some((p) => matches(p, key)));
      const folder = LAYOUT[entry].split('/')[0]!;
      expect({ entry, owners }).toEqual({ entry, owners: writers.filter((w) => (folders[w] as readonly string[]).includes(folder)) });
    }
  });

  it('status.json is writable by every stage (not by notify, announce and the results signing role), the manifest only by finalize', () => {
    const status = fillKey(LAYOUT.jobPrefix + LAYOUT.status, sample);
    const manifest = fillKey(LAYOUT.jobPrefix + LAYOUT.manifest, sample);
    for (const stage of Object.keys(roles()) as AccessStage[]) {
      expect(stagePatterns(stage, 'artifacts', 's3:PutObject').some((p) => matches(p, status))).toBe(!['notify', 'announce', 'results'].includes(stage));
      expect(stagePatterns(stage, 'artifacts', 's3:PutObject').some((p) => matches(p, manifest))).toBe(stage === 'finalize');
    }
  });
});
