import { beforeAll, describe, expect, it } from 'vitest';
import { actionsOf, flatten, logicalId, resourcesOfType, s3Grants, statementsOf, synth, type Synthesized } from './helpers';

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

describe('least-privilege S3 access', () => {
  it('validate reads the job inbox, lists it by prefix, writes validate/ and status.json', () => {
    const role = s.stack.functions.validate.executionRole;
    expect(s3Grants(s, role)).toEqual({
      's3:GetObject': sorted([job(I, '*'), job(A, 'status.json')]),
      's3:PutObject': sorted([job(A, 'validate/*'), job(A, 'status.json')]),
      's3:ListBucket': [I],
    });
    const list = statementsOf(s, role).find((st) => actionsOf(st).includes('s3:ListBucket'))!;
    expect(list.Condition).toEqual({ StringLike: { 's3:prefix': ['teams/*'] } });
  });

  it('normalize reads photos and the validate report, writes normalize/ (dataset, plan) and status.json', () => {
    expect(s3Grants(s, s.stack.functions.normalize.executionRole)).toEqual({
      's3:GetObject': sorted([job(I, '*'), job(A, 'validate/*'), job(A, 'status.json')]),
      's3:PutObject': sorted([job(A, 'normalize/*'), job(A, 'status.json')]),
    });
  });

  it('finalize reads and lists the job artifacts, writes only manifest.json and status.json', () => {
    const role = s.stack.functions.finalize.executionRole;
    expect(s3Grants(s, role)).toEqual({
      's3:GetObject': [job(A, '*')],
      's3:ListBucket': [A],
      's3:PutObject': sorted([job(A, 'manifest.json'), job(A, 'status.json')]),
    });
    const list = statementsOf(s, role).find((st) => actionsOf(st).includes('s3:ListBucket'))!;
    expect(list.Condition).toEqual({ StringLike: { 's3:prefix': ['teams/*'] } });
  });

  it('mark-failed can only touch status.json', () => {
    expect(s3Grants(s, s.stack.functions.markFailed.executionRole)).toEqual({
      's3:GetObject': [job(A, 'status.json')],
      's3:PutObject': [job(A, 'status.json')],
    });
  });

  it('the caption+train job reads dataset, captions and models, writes caption/ and train/, prunes only its old state', () => {
    expect(s3Grants(s, s.stack.gpu.train.container.jobRole!)).toEqual({
      's3:GetObject': sorted([job(A, 'normalize/*'), job(A, 'caption/*'), `${A}/models/*`, job(A, 'train/*'), job(A, 'status.json')]),
      's3:PutObject': sorted([job(A, 'caption/*'), job(A, 'train/*'), job(A, 'status.json')]),
      's3:DeleteObject': [job(A, 'train/state/*')],
      's3:ListBucket': [A],
    });
  });

  it('the evaluate job reads checkpoints, dataset, models and the report inputs, writes evaluate/', () => {
    expect(s3Grants(s, s.stack.gpu.evaluate.container.jobRole!)).toEqual({
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
      const grants = Object.values(s3Grants(s, s.stack.gpu[stage].container.jobRole!)).flat();
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
