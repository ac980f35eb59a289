import { beforeAll, describe, expect, it } from 'vitest';
import { logicalId, resourcesOfType, type Synthesized, synth } from './helpers';

let s: Synthesized;
beforeAll(() => {
  s = synth({ urlExpirySeconds: 900 });
});

const fnProps = (fn: { functionArn: string }) => s.json.Resources[logicalId(s.stack, fn.functionArn)]!.Properties;

describe('stage functions', () => {
  it('run Node.js 22 on x86_64 with active tracing, every one of them', () => {
    const fns = resourcesOfType(s.json, 'AWS::Lambda::Function');
    // 5 stages, admit, reconcile, the job API, its webhook sender (infra/constructs/api.ts), announce (infra/constructs/announce.ts), mint (infra/constructs/job-credentials.ts)
    expect(fns).toHaveLength(11);
    for (const [, fn] of fns) {
      expect(fn.Properties).toMatchObject({ Runtime: 'nodejs22.x', Architectures: ['x86_64'], TracingConfig: { Mode: 'Active' } });
      expect(fn.Properties.Environment.Variables).toMatchObject({ SERVICE_NAME: 'avatar', NODE_OPTIONS: '--enable-source-maps' });
    }
  });

  it('log to their own log group with a retention', () => {
    for (const [, fn] of resourcesOfType(s.json, 'AWS::Lambda::Function')) {
      const groupId = fn.Properties.LoggingConfig.LogGroup.Ref as string;
      expect(s.json.Resources[groupId]!.Properties.RetentionInDays).toBe(30);
    }
  });

  it('size memory and timeout per stage', () => {
    const f = s.stack.functions;
    expect(fnProps(f.validate)).toMatchObject({ MemorySize: 2048, Timeout: 600 });
    expect(fnProps(f.normalize)).toMatchObject({ MemorySize: 2048, Timeout: 900 });
    expect(fnProps(f.finalize).MemorySize).toBe(512);
    expect(fnProps(f.markFailed).MemorySize).toBe(256);
    expect(fnProps(f.reconcile)).toMatchObject({ MemorySize: 256, Timeout: 30 });
    expect(fnProps(f.admit)).toMatchObject({ MemorySize: 256, Timeout: 30 });
  });

  it('name the stack for the SystemFailures metric in mark-failed and reconcile', () => {
    for (const fn of [s.stack.functions.markFailed, s.stack.functions.reconcile]) {
      expect(fnProps(fn).Environment.Variables.METRICS_STACK_NAME).toBe('AvatarStack');
    }
  });

  it('tell every stage where the buckets are, and finalize how long URLs live', () => {
    const inbox = { Ref: logicalId(s.stack, s.stack.storage.inbox.bucketName) };
    const artifacts = { Ref: logicalId(s.stack, s.stack.storage.artifacts.bucketName) };
    for (const fn of [s.stack.functions.validate, s.stack.functions.normalize, s.stack.functions.finalize, s.stack.functions.markFailed]) {
      expect(fnProps(fn).Environment.Variables).toMatchObject({ INBOX_BUCKET: inbox, ARTIFACTS_BUCKET: artifacts });
    }
    expect(fnProps(s.stack.functions.finalize).Environment.Variables.URL_EXPIRY_SECONDS).toBe('900');
  });

  it('use dedicated roles without AWS managed policies', () => {
    for (const [, role] of resourcesOfType(s.json, 'AWS::IAM::Role').filter(([, r]) =>
      JSON.stringify(r.Properties.AssumeRolePolicyDocument).includes('lambda.amazonaws.com'),
    )) {
      expect(role.Properties.ManagedPolicyArns).toBeUndefined();
    }
  });
});
