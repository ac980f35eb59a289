import { App, type Stack } from 'aws-cdk-lib';
import { Template } from 'aws-cdk-lib/assertions';
import type * as iam from 'aws-cdk-lib/aws-iam';
import { loadConfig } from '../../infra/config';
import { AvatarStack } from '../../infra/stack';

export interface Synthesized {
  readonly app: App;
  readonly stack: AvatarStack;
  readonly template: Template;
  readonly json: { Resources: Record<string, CfnResource>; Outputs?: Record<string, unknown> };
}

export interface CfnResource {
  readonly Type: string;
  readonly Properties: Record<string, any>;
  readonly Metadata?: Record<string, unknown>;
}

/** Builds the real stack from raw config, with Lambda bundling skipped (fast, no esbuild run). */
export function synth(rawConfig: unknown = {}, appProps: { outdir?: string } = {}): Synthesized {
  const app = new App({ ...appProps, context: { 'aws:cdk:bundling-stacks': [] } });
  const stack = new AvatarStack(app, 'AvatarStack', { config: loadConfig(rawConfig) });
  const template = Template.fromStack(stack);
  return { app, stack, template, json: template.toJSON() as Synthesized['json'] };
}

export function resourcesOfType(json: Synthesized['json'], type: string): [string, CfnResource][] {
  return Object.entries(json.Resources).filter(([, r]) => r.Type === type);
}

export function logicalId(stack: Stack, token: string): string {
  const resolved = stack.resolve(token) as { Ref?: string; 'Fn::GetAtt'?: [string, string] };
  const id = resolved.Ref ?? resolved['Fn::GetAtt']?.[0];
  if (!id) throw new Error(`not a reference: ${JSON.stringify(resolved)}`);
  return id;
}

export interface Statement {
  readonly Effect: string;
  readonly Action: string | string[];
  readonly Resource: unknown;
  readonly Condition?: Record<string, Record<string, unknown>>;
}

/** Every statement of every AWS::IAM::Policy attached to `role`. */
export function statementsOf(s: Synthesized, role: iam.IRole): Statement[] {
  const roleId = logicalId(s.stack, role.roleName);
  return resourcesOfType(s.json, 'AWS::IAM::Policy')
    .filter(([, p]) => (p.Properties.Roles as { Ref: string }[]).some((r) => r.Ref === roleId))
    .flatMap(([, p]) => p.Properties.PolicyDocument.Statement as Statement[]);
}

export function actionsOf(statement: Statement): string[] {
  return ([] as string[]).concat(statement.Action);
}

/**
 * Flattens a resource (string, Fn::Join, Fn::GetAtt, Ref) to text with `<LogicalId>` placeholders,
 * e.g. `<StorageArtifacts1234>/teams/*\/jobs/*\/status.json`.
 */
export function flatten(value: unknown): string {
  if (typeof value === 'string') return value;
  const v = value as Record<string, any>;
  if (v['Fn::Join']) return (v['Fn::Join'][1] as unknown[]).map(flatten).join(v['Fn::Join'][0]);
  if (v['Fn::GetAtt']) return `<${v['Fn::GetAtt'][0]}>`;
  if (v.Ref) return `<${v.Ref}>`;
  return JSON.stringify(value);
}

/** S3 grants of a role: `action -> sorted flattened resources`. */
export function s3Grants(s: Synthesized, role: iam.IRole): Record<string, string[]> {
  const grants: Record<string, string[]> = {};
  for (const statement of statementsOf(s, role)) {
    for (const action of actionsOf(statement).filter((a) => a.startsWith('s3:'))) {
      const resources = ([] as unknown[]).concat(statement.Resource).map(flatten);
      grants[action] = [...(grants[action] ?? []), ...resources].sort();
    }
  }
  return grants;
}

/**
 * The state machine definition with every CloudFormation token replaced by a placeholder string
 * (`<LogicalId>`), parsed as JSON.
 */
export function definitionOf(s: Synthesized): any {
  const [, machine] = resourcesOfType(s.json, 'AWS::StepFunctions::StateMachine')[0]!;
  const raw = machine.Properties.DefinitionString;
  const text = typeof raw === 'string' ? raw : (raw['Fn::Join'][1] as unknown[]).map((p) => (typeof p === 'string' ? p : flatten(p))).join('');
  return JSON.parse(text);
}
