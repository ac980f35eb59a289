/**
 * The state machine definition exactly as `cdk synth` writes it, with its CloudFormation references
 * resolved to placeholder ARNs so it can run locally. Bundling is skipped: only the definition is used.
 */
import { App } from 'aws-cdk-lib';
import { loadConfig } from '../../infra/config';
import { AvatarStack } from '../../infra/stack';

export const PLACEHOLDER_ACCOUNT = '123456789012';
export const PLACEHOLDER_REGION = 'us-east-1';

type Template = { Resources: Record<string, { Type: string; Properties?: Record<string, unknown> }> };

/** Synthesizes the stack in-process (no bundling, no Docker) and returns its CloudFormation template. */
export function synthesizeTemplate(config: unknown = {}): Template {
  const app = new App({ context: { 'aws:cdk:bundling-stacks': [] } });
  const stack = new AvatarStack(app, 'AvatarStack', { config: loadConfig(config) });
  return app.synth().getStackArtifact(stack.artifactId).template as Template;
}

function placeholderArn(template: Template, logicalId: string): string {
  const type = template.Resources[logicalId]?.Type ?? 'Unknown';
  const service = type.split('::')[1]?.toLowerCase() ?? 'unknown';
  return `arn:aws:${service}:${PLACEHOLDER_REGION}:${PLACEHOLDER_ACCOUNT}:${logicalId}`;
}

/** Resolves the intrinsics CDK puts in a DefinitionString: Fn::Join, Ref, Fn::GetAtt and pseudo parameters. */
function resolve(template: Template, value: unknown): string {
  if (typeof value === 'string') return value;
  const node = value as Record<string, unknown>;
  if ('Fn::Join' in node) {
    const [separator, parts] = node['Fn::Join'] as [string, unknown[]];
    return parts.map((p) => resolve(template, p)).join(separator);
  }
  if ('Ref' in node) {
    const ref = node.Ref as string;
    const pseudo: Record<string, string> = {
      'AWS::Partition': 'aws',
      'AWS::Region': PLACEHOLDER_REGION,
      'AWS::AccountId': PLACEHOLDER_ACCOUNT,
      'AWS::URLSuffix': 'amazonaws.com',
    };
    return pseudo[ref] ?? placeholderArn(template, ref);
  }
  if ('Fn::GetAtt' in node) {
    const [logicalId] = node['Fn::GetAtt'] as [string, string];
    return placeholderArn(template, logicalId);
  }
  throw new Error(`unsupported intrinsic in the state machine definition: ${JSON.stringify(value)}`);
}

export interface StateMachineDefinition {
  StartAt: string;
  States: Record<string, { Type: string; Resource?: string; Next?: string; Retry?: unknown[]; Catch?: unknown[]; [key: string]: unknown }>;
  [key: string]: unknown;
}

/** The one state machine's definition from a synthesized template. */
export function stateMachineDefinition(template: Template): StateMachineDefinition {
  const machines = Object.values(template.Resources).filter((r) => r.Type === 'AWS::StepFunctions::StateMachine');
  if (machines.length !== 1) throw new Error(`expected one state machine in the template, found ${machines.length}`);
  return JSON.parse(resolve(template, machines[0].Properties!.DefinitionString)) as StateMachineDefinition;
}
