/**
 * Item 2 of the reliability work, on the synthesized definition run by aws-local-stepfunctions: a
 * stage that outlives its own TimeoutSeconds raises the catchable States.Timeout, so MarkFailed runs
 * and status.json ends `failed` with TIMEOUT naming the stage. The state's timeout is shortened to
 * one second in the test's copy of the definition (the real values are asserted on the template);
 * the stuck GPU job is a stand-in that never answers, a fault that cannot be caused here for real.
 */
import { SendTaskSuccessCommand, SFNClient } from '@aws-sdk/client-sfn';
import { afterAll, beforeAll, expect, it } from 'vitest';
import { readStatus, writeStatus } from '../../lambdas/shared/status';
import { type StateMachineDefinition, stateMachineDefinition, synthesizeTemplate } from '../../scripts/local/definition';
import { configureHandlers, type Moto, startMoto } from '../../scripts/local/moto';
import { type LocalTeams, localTeams } from '../../scripts/local/teams';
import { inProcessLambda, type LambdaRunner, runWorkflow } from '../../scripts/local/workflow';
import { describeWithMoto } from '../helpers/suites';

const INBOX = 'timeout-inbox';
const ARTIFACTS = 'timeout-artifacts';

describeWithMoto('state timeouts, executed locally', () => {
  let moto: Moto;
  let teams: LocalTeams;
  let definition: StateMachineDefinition;

  beforeAll(async () => {
    moto = await startMoto();
    await moto.createBucket(INBOX);
    await moto.createBucket(ARTIFACTS);
    configureHandlers(moto.endpoint, { inboxBucket: INBOX, artifactsBucket: ARTIFACTS, urlExpirySeconds: 600 });
    teams = await localTeams(moto.endpoint, ['team-t']);
    definition = stateMachineDefinition(synthesizeTemplate());
  });
  afterAll(async () => {
    await teams?.stop();
    await moto?.stop();
  });

  it('ends a GPU stage stuck past its TimeoutSeconds in MarkFailed with TIMEOUT naming the stage', async () => {
    expect(definition.States.Train!.TimeoutSeconds).toBeGreaterThan(3600);
    const shortened: StateMachineDefinition = { ...definition, States: { ...definition.States, Train: { ...definition.States.Train!, TimeoutSeconds: 1 } } };
    const job = { teamId: 'team-t', jobId: 'stuck-train' };
    await writeStatus(moto.s3(), ARTIFACTS, job, { state: 'running', stage: 'train' });
    // The intake stages are not under test: they answer at once; MarkFailed is the real handler.
    // Admit answers its task token at once, as the real one does for a team with a free slot.
    const lambda: LambdaRunner = async (stage, payload) => {
      if (stage === 'admit')
        await new SFNClient({}).send(new SendTaskSuccessCommand({ taskToken: (payload as { taskToken: string }).taskToken, output: '{}' }));
      return stage === 'mark-failed' ? inProcessLambda(stage, payload) : {};
    };
    const batchStages: string[] = [];

    const result = await runWorkflow(shortened, job, {
      taskTokens: teams.taskTokens,
      lambda,
      batch: async (stage) => {
        batchStages.push(stage);
        if (stage === 'train') return new Promise<never>(() => undefined); // the stuck job never ends
        return { JobId: `${stage}-job` };
      },
    });

    expect(result.succeeded).toBe(false);
    expect(result.error).toBe('JobFailed');
    expect(batchStages).toEqual(['train']); // caption+train is one GPU job
    expect(result.events).toContainEqual(expect.objectContaining({ type: 'StateFailed', state: 'Train', error: 'States.Timeout' }));
    expect(await readStatus(moto.s3(), ARTIFACTS, job)).toMatchObject({
      state: 'failed',
      stage: 'train',
      error: { code: 'TIMEOUT', message: expect.stringContaining('the train stage ran past its time limit') },
    });
  });
});
