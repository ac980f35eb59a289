import { Duration, RemovalPolicy } from 'aws-cdk-lib';
import * as batch from 'aws-cdk-lib/aws-batch';
import * as dynamodb from 'aws-cdk-lib/aws-dynamodb';
import { Construct } from 'constructs';

/** Props of {@link Teams}. */
export interface TeamsProps {
  /**
   * How long past usage counts against a share in Batch's fair-share scheduling: a team that just
   * ran a lot waits behind one that did not, for about this long.
   * @default Duration.hours(1)
   */
  readonly shareDecay?: Duration;
  /**
   * Percentage of the maximum vCPUs Batch holds back for share identifiers that are not running
   * (so a newcomer's first job starts while a busy team's backlog waits): 0-99.
   * @default 25
   */
  readonly computeReservation?: number;
}

/**
 * The team registry and the fair share of the GPUs.
 *
 * - `table`: one DynamoDB table (`pk`, `sk`; see lambdas/shared/teams.ts for the items) with team
 *   limits, counters, admission records, the waiting queue and the cost ledger. Encrypted, point-in-time
 *   recovery on, deletion protection on and RETAIN: it holds what teams spent.
 * - `schedulingPolicy`: a Batch fair-share policy for the job queue. Every GPU job carries its team
 *   as `shareIdentifier`; shares not listed get weight factor 1. Per-team weights live in the
 *   registry (`fairShareWeight`) and can be pushed with `UpdateSchedulingPolicy`, so adding a team
 *   needs no deploy. `maxVcpus` of the compute environments stays the hard ceiling.
 */
export class Teams extends Construct {
  /** The registry table. */
  public readonly table: dynamodb.Table;
  /** The fair-share policy to attach to the GPU job queue. */
  public readonly schedulingPolicy: batch.FairshareSchedulingPolicy;

  constructor(scope: Construct, id: string, props: TeamsProps = {}) {
    super(scope, id);
    const computeReservation = props.computeReservation ?? 25;
    if (!Number.isInteger(computeReservation) || computeReservation < 0 || computeReservation > 99) {
      throw new Error(`Teams: computeReservation must be an integer percentage 0-99, got ${computeReservation}`);
    }

    this.table = new dynamodb.Table(this, 'Table', {
      partitionKey: { name: 'pk', type: dynamodb.AttributeType.STRING },
      sortKey: { name: 'sk', type: dynamodb.AttributeType.STRING },
      billingMode: dynamodb.BillingMode.PAY_PER_REQUEST,
      encryption: dynamodb.TableEncryption.AWS_MANAGED,
      pointInTimeRecoverySpecification: { pointInTimeRecoveryEnabled: true },
      deletionProtection: true,
      // The job API's rate-limit windows (RATE#<start> items) expire by themselves.
      timeToLiveAttribute: 'expiresAt',
      removalPolicy: RemovalPolicy.RETAIN,
    });

    this.schedulingPolicy = new batch.FairshareSchedulingPolicy(this, 'FairShare', {
      shareDecay: props.shareDecay ?? Duration.hours(1),
      computeReservation,
      shares: [],
    });
  }

  /**
   * Puts the GPU job queue under the fair-share policy and makes the job definitions propagate
   * their tags (team, job, stage from SubmitJob) to the ECS tasks. Through the L1 resources, so
   * the GPU construct needs no change: its L2 job definition has no `propagateTags` option.
   */
  attachTo(jobQueue: batch.JobQueue, jobDefinitions: batch.IJobDefinition[]): void {
    (jobQueue.node.defaultChild as batch.CfnJobQueue).schedulingPolicyArn = this.schedulingPolicy.schedulingPolicyArn;
    for (const definition of jobDefinitions) {
      (definition.node.defaultChild as batch.CfnJobDefinition).propagateTags = true;
    }
  }
}
