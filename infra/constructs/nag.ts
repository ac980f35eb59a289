import { Stack } from 'aws-cdk-lib';
import type { IConstruct } from 'constructs';

/**
 * The AwsSolutions-IAM5 finding id cdk-nag reports for the resource `<arn><suffix>`, where `arn`
 * is a `Fn::GetAtt` token of a resource in this stack (e.g. a function ARN and suffix `:*`).
 * cdk-nag 3 acknowledges findings by exact id only, so the id is derived rather than spelled out.
 */
export function iam5ResourceFinding(scope: IConstruct, arn: string, suffix: string): string {
  const resolved = Stack.of(scope).resolve(arn) as { 'Fn::GetAtt'?: [string, string] };
  const getAtt = resolved['Fn::GetAtt'];
  if (!getAtt) throw new Error(`iam5ResourceFinding: expected a Fn::GetAtt token, got ${JSON.stringify(resolved)}`);
  return `AwsSolutions-IAM5[Resource::<${getAtt[0]}.${getAtt[1]}>${suffix}]`;
}
