import { Match } from 'aws-cdk-lib/assertions';
import { beforeAll, describe, expect, it } from 'vitest';
import { logicalId, resourcesOfType, type Synthesized, synth } from './helpers';

let s: Synthesized;
beforeAll(() => {
  s = synth({ rawPhotoRetentionDays: 7, jobDataRetentionDays: 14 });
});

const bucketIds = () => ({
  inbox: logicalId(s.stack, s.stack.storage.inbox.bucketName),
  artifacts: logicalId(s.stack, s.stack.storage.artifacts.bucketName),
  logs: logicalId(s.stack, s.stack.storage.logs.bucketName),
});

describe('storage', () => {
  it('creates exactly the inbox, artifacts and logs buckets', () => {
    expect(
      resourcesOfType(s.json, 'AWS::S3::Bucket')
        .map(([id]) => id)
        .sort(),
    ).toEqual(Object.values(bucketIds()).sort());
  });

  it('encrypts every bucket', () => {
    for (const [, bucket] of resourcesOfType(s.json, 'AWS::S3::Bucket')) {
      expect(bucket.Properties.BucketEncryption.ServerSideEncryptionConfiguration[0].ServerSideEncryptionByDefault.SSEAlgorithm).toBe('AES256');
    }
  });

  it('blocks all public access and disables ACLs on every bucket', () => {
    for (const [, bucket] of resourcesOfType(s.json, 'AWS::S3::Bucket')) {
      expect(bucket.Properties.PublicAccessBlockConfiguration).toEqual({
        BlockPublicAcls: true,
        BlockPublicPolicy: true,
        IgnorePublicAcls: true,
        RestrictPublicBuckets: true,
      });
      expect(bucket.Properties.OwnershipControls.Rules).toEqual([{ ObjectOwnership: 'BucketOwnerEnforced' }]);
      expect(bucket.Properties.AccessControl).toBeUndefined();
    }
  });

  it('denies non-TLS requests in every bucket policy', () => {
    const policies = resourcesOfType(s.json, 'AWS::S3::BucketPolicy');
    const covered = policies
      .filter(([, p]) =>
        (p.Properties.PolicyDocument.Statement as any[]).some(
          (st) => st.Effect === 'Deny' && st.Action === 's3:*' && st.Condition?.Bool?.['aws:SecureTransport'] === 'false',
        ),
      )
      .map(([, p]) => p.Properties.Bucket.Ref)
      .sort();
    expect(covered).toEqual(Object.values(bucketIds()).sort());
  });

  it('versions the artifacts bucket only', () => {
    const ids = bucketIds();
    expect(s.json.Resources[ids.artifacts]!.Properties.VersioningConfiguration).toEqual({ Status: 'Enabled' });
    expect(s.json.Resources[ids.inbox]!.Properties.VersioningConfiguration).toBeUndefined();
  });

  it('expires raw photos under teams/ after the configured retention', () => {
    const rules = s.json.Resources[bucketIds().inbox]!.Properties.LifecycleConfiguration.Rules;
    expect(rules).toContainEqual(expect.objectContaining({ Prefix: 'teams/', ExpirationInDays: 7, Status: 'Enabled' }));
  });

  it('expires everything the pipeline wrote for a job (crops, dataset, checkpoints, resume state) after jobDataRetentionDays, never the base models', () => {
    const rules = s.json.Resources[bucketIds().artifacts]!.Properties.LifecycleConfiguration.Rules as any[];
    const expiring = rules.filter((r) => r.ExpirationInDays !== undefined);
    expect(expiring).toEqual([expect.objectContaining({ Id: 'expire-job-data', Prefix: 'teams/', ExpirationInDays: 14, Status: 'Enabled' })]);
    // Expired current versions become noncurrent in the versioned bucket; this rule removes them.
    expect(rules).toContainEqual(expect.objectContaining({ NoncurrentVersionExpiration: { NoncurrentDays: 30 }, ExpiredObjectDeleteMarker: true }));
  });

  it('aborts incomplete multipart uploads after one day on every bucket', () => {
    for (const [, bucket] of resourcesOfType(s.json, 'AWS::S3::Bucket')) {
      expect(bucket.Properties.LifecycleConfiguration.Rules).toContainEqual(
        expect.objectContaining({ AbortIncompleteMultipartUpload: { DaysAfterInitiation: 1 } }),
      );
    }
  });

  it('expires noncurrent artifact versions and old logs', () => {
    const ids = bucketIds();
    expect(s.json.Resources[ids.artifacts]!.Properties.LifecycleConfiguration.Rules).toContainEqual(
      expect.objectContaining({ NoncurrentVersionExpiration: { NoncurrentDays: 30 } }),
    );
    expect(s.json.Resources[ids.logs]!.Properties.LifecycleConfiguration.Rules).toContainEqual(expect.objectContaining({ ExpirationInDays: 90 }));
  });

  it('sends server access logs of the data buckets to the logs bucket', () => {
    const ids = bucketIds();
    for (const id of [ids.inbox, ids.artifacts]) {
      expect(s.json.Resources[id]!.Properties.LoggingConfiguration.DestinationBucketName).toEqual({ Ref: ids.logs });
    }
  });

  it('lets S3 log delivery write to the logs bucket through its policy, not an ACL', () => {
    s.template.hasResourceProperties('AWS::S3::BucketPolicy', {
      Bucket: { Ref: bucketIds().logs },
      PolicyDocument: {
        Statement: Match.arrayWith([Match.objectLike({ Effect: 'Allow', Principal: { Service: 'logging.s3.amazonaws.com' }, Action: 's3:PutObject' })]),
      },
    });
  });

  it('enables EventBridge notifications on the inbox and the artifacts (status.json writes) without a custom resource', () => {
    for (const id of [bucketIds().inbox, bucketIds().artifacts]) {
      expect(s.json.Resources[id]!.Properties.NotificationConfiguration).toEqual({ EventBridgeConfiguration: { EventBridgeEnabled: true } });
    }
    expect(s.json.Resources[bucketIds().logs]!.Properties.NotificationConfiguration).toBeUndefined();
    expect(resourcesOfType(s.json, 'Custom::S3BucketNotifications')).toEqual([]);
  });

  it('retains the data buckets on stack deletion', () => {
    const ids = bucketIds();
    expect(s.json.Resources[ids.inbox]).toMatchObject({ DeletionPolicy: 'Retain', UpdateReplacePolicy: 'Retain' });
    expect(s.json.Resources[ids.artifacts]).toMatchObject({ DeletionPolicy: 'Retain', UpdateReplacePolicy: 'Retain' });
  });

  it('ends cdk destroy clean: only the three buckets (never empty) and the team registry (billing records) are retained, every log group and the alarm key go', () => {
    const retained = Object.entries(s.json.Resources as Record<string, any>)
      .filter(([, r]) => r.DeletionPolicy !== undefined && r.DeletionPolicy !== 'Delete')
      .map(([id]) => id)
      .sort();
    const registry = resourcesOfType(s.json, 'AWS::DynamoDB::Table').map(([id]) => id);
    expect(registry).toHaveLength(1);
    expect(retained).toEqual([...Object.values(bucketIds()), ...registry].sort());
    const logGroups = resourcesOfType(s.json, 'AWS::Logs::LogGroup');
    expect(logGroups.length).toBeGreaterThanOrEqual(8);
    for (const [id] of logGroups) expect(s.json.Resources[id]).toMatchObject({ DeletionPolicy: 'Delete' });
    for (const [id] of resourcesOfType(s.json, 'AWS::KMS::Key')) expect(s.json.Resources[id]).toMatchObject({ DeletionPolicy: 'Delete' });
    // No custom resource whose deletion could fail (e.g. auto-delete-objects Lambdas).
    expect(Object.values(s.json.Resources as Record<string, any>).filter((r) => r.Type.startsWith('Custom::'))).toEqual([]);
  });
});
