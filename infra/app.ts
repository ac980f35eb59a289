import { App, Validations } from 'aws-cdk-lib';
import { AwsSolutionsChecks } from 'cdk-nag';
import { CONFIG_CONTEXT_KEY, loadConfig } from './config';
import { AvatarStack } from './stack';

const app = new App();
const config = loadConfig(app.node.tryGetContext(CONFIG_CONTEXT_KEY));

// No env: the stack stays environment-agnostic (no lookups); the CLI's credentials pick the target.
new AvatarStack(app, 'AvatarStack', {
  config,
  description: 'Avatar LoRA training backend: S3 inbox -> Step Functions -> Lambda + Batch GPU',
});

// cdk-nag 3 is a policy-validation plugin: any unacknowledged finding makes synth fail.
Validations.of(app).addPlugins(new AwsSolutionsChecks(app));

app.synth();
