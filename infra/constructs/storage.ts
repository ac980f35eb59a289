import { Duration, RemovalPolicy, Validations } from 'aws-cdk-lib';
import * as s3 from 'aws-cdk-lib/aws-s3';
import { Construct } from 'constructs';
import { LAYOUT } from '../../lambdas/shared/layout';

/** Props of {@link Storage}. */
export interface StorageProps {
  /**
   * Days a raw upload under the inbox `teams/` prefix is kept before S3 deletes it.
   * Raw selfies are personal data: keep them no longer than a job needs.
   * @default 30
   */
  readonly rawPhotoRetentionDays?: number;
  /**
   * Days everything the pipeline writes under the artifacts `teams/` prefix is kept: status,
   * face crops, dataset, captions, checkpoints, resume state, LoRA, grid, manifest. Face crops are
   * personal data like the raw photos; job keys cannot be wildcarded in a lifecycle filter, so the
   * whole job prefix expires (`models/` is not touched).
   * @default 30
   */
  readonly jobDataRetentionDays?: number;
  /**
   * Days a superseded (noncurrent) artifact version is kept.
   * @default 30
   */
  readonly noncurrentVersionRetentionDays?: number;
  /**
   * Days server access logs (and VPC flow logs) are kept.
   * @default 90
   */
  readonly logRetentionDays?: number;
}

/**
 * The three buckets of the product: `inbox` (customer uploads, `teams/<team>/jobs/<job>/...`),
 * `artifacts` (everything the pipeline writes, plus the operator's `models/`) and `logs`
 * (server access logs of the other two, VPC flow logs).
 *
 * Every bucket is encrypted (SSE-S3), TLS-only, blocks all public access and disables ACLs.
 *
 * Clean-up: all three buckets use `RemovalPolicy.RETAIN`, so `cdk destroy` leaves them behind on
 * purpose and ends clean (CloudFormation cannot delete a bucket that still holds objects): the inbox
 * and artifacts hold customer data, the logs bucket the access logs of both. To remove them, empty
 * and delete them by hand, e.g. `aws s3 rb s3://<bucket> --force` (for the versioned artifacts
 * bucket delete all object versions first).
 */
export class Storage extends Construct {
  /** Customer uploads; EventBridge notifications enabled so `job.json` can start a run. */
  public readonly inbox: s3.Bucket;
  /** Pipeline outputs and base models; versioned; EventBridge notifications enabled so every status.json write is announced. */
  public readonly artifacts: s3.Bucket;
  /** Target of server access logs and VPC flow logs. */
  public readonly logs: s3.Bucket;

  constructor(scope: Construct, id: string, props: StorageProps = {}) {
    super(scope, id);
    const rawPhotoRetentionDays = props.rawPhotoRetentionDays ?? 30;
    const jobDataRetentionDays = props.jobDataRetentionDays ?? 30;
    const noncurrentDays = props.noncurrentVersionRetentionDays ?? 30;
    const logDays = props.logRetentionDays ?? 90;
    for (const [name, days] of Object.entries({ rawPhotoRetentionDays, jobDataRetentionDays })) {
      if (!Number.isInteger(days) || days < 1) throw new Error(`Storage: ${name} must be a positive integer, got ${days}`);
    }

    const abortUploads: s3.LifecycleRule = {
      id: 'abort-incomplete-multipart-uploads',
      abortIncompleteMultipartUploadAfter: Duration.days(1),
    };

    this.logs = new s3.Bucket(this, 'Logs', {
      ...secureDefaults(),
      // Log delivery only writes SSE-S3 objects; a KMS key would break server access logging.
      encryption: s3.BucketEncryption.S3_MANAGED,
      lifecycleRules: [abortUploads, { id: 'expire-logs', expiration: Duration.days(logDays) }],
      // Retained: it is never empty (DESTROY would end `cdk destroy` in DELETE_FAILED), and it holds
      // the access logs of the retained data buckets. Its lifecycle rule still expires them.
      removalPolicy: RemovalPolicy.RETAIN,
    });
    Validations.of(this.logs).acknowledge({
      id: 'AwsSolutions-S1',
      reason: 'This is the access-logs bucket itself; logging it into itself would recurse and logging it elsewhere adds a bucket with the same problem.',
    });

    this.inbox = new s3.Bucket(this, 'Inbox', {
      ...secureDefaults(),
      serverAccessLogsBucket: this.logs,
      serverAccessLogsPrefix: 'inbox/',
      lifecycleRules: [
        abortUploads,
        {
          id: 'expire-raw-photos',
          prefix: LAYOUT.teams,
          expiration: Duration.days(rawPhotoRetentionDays),
        },
      ],
      removalPolicy: RemovalPolicy.RETAIN,
    });

    // EventBridge delivery set on the CloudFormation resource itself: `eventBridgeEnabled: true`
    // would add a custom-resource Lambda (and its role) just to flip this one setting.
    (this.inbox.node.defaultChild as s3.CfnBucket).notificationConfiguration = {
      eventBridgeConfiguration: { eventBridgeEnabled: true },
    };

    this.artifacts = new s3.Bucket(this, 'Artifacts', {
      ...secureDefaults(),
      versioned: true,
      serverAccessLogsBucket: this.logs,
      serverAccessLogsPrefix: 'artifacts/',
      lifecycleRules: [
        abortUploads,
        {
          // The job's current objects become noncurrent here; the rule below then removes them.
          id: 'expire-job-data',
          prefix: LAYOUT.teams,
          expiration: Duration.days(jobDataRetentionDays),
        },
        {
          id: 'expire-noncurrent-versions',
          noncurrentVersionExpiration: Duration.days(noncurrentDays),
          expiredObjectDeleteMarker: true,
        },
      ],
      removalPolicy: RemovalPolicy.RETAIN,
    });
    // Every status.json write, whoever writes it, becomes an "Object Created" event that the announce
    // function turns into a job state change event (infra/constructs/announce.ts). Set like the inbox's.
    (this.artifacts.node.defaultChild as s3.CfnBucket).notificationConfiguration = {
      eventBridgeConfiguration: { eventBridgeEnabled: true },
    };
  }
}

function secureDefaults(): s3.BucketProps {
  return {
    encryption: s3.BucketEncryption.S3_MANAGED,
    enforceSSL: true,
    blockPublicAccess: s3.BlockPublicAccess.BLOCK_ALL,
    objectOwnership: s3.ObjectOwnership.BUCKET_OWNER_ENFORCED,
  };
}
