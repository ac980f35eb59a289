/**
 * S3's evaluation of a browser-based upload (POST) policy, for the conditions the API writes, from
 * the S3 documentation ("Creating a POST policy"): moto accepts any POST without checking the policy
 * or its signature, so the tests evaluate the signed policy document themselves.
 */
export interface PolicyUpload {
  readonly fields: Record<string, string>;
  readonly fileBytes: number;
  readonly now: Date;
}

type Condition = Record<string, string> | [string, string | number, string | number];

/** The reasons S3 would refuse this upload; empty when it would accept it. */
export function policyViolations(upload: PolicyUpload): string[] {
  const policy = JSON.parse(Buffer.from(upload.fields.Policy, 'base64').toString('utf8')) as { expiration: string; conditions: Condition[] };
  const problems: string[] = [];
  if (new Date(policy.expiration) <= upload.now) problems.push('policy expired');
  const covered = new Set<string>();
  const value = (name: string) => Object.entries(upload.fields).find(([k]) => k.toLowerCase() === name.toLowerCase())?.[1];
  for (const condition of policy.conditions) {
    if (!Array.isArray(condition)) {
      for (const [name, expected] of Object.entries(condition)) {
        covered.add(name.toLowerCase());
        if (name !== 'bucket' && value(name) !== expected) problems.push(`${name} must be ${expected}`);
      }
      continue;
    }
    const [op, a, b] = condition;
    if (op === 'content-length-range') {
      if (upload.fileBytes < Number(a) || upload.fileBytes > Number(b)) problems.push(`EntityTooLarge/Small: ${upload.fileBytes} bytes outside ${a}..${b}`);
    } else if (op === 'eq' || op === 'starts-with') {
      const name = String(a).replace(/^\$/, '');
      covered.add(name.toLowerCase());
      const actual = value(name) ?? '';
      if (op === 'eq' ? actual !== b : !actual.startsWith(String(b))) problems.push(`${name} fails ${op} ${b}`);
    } else problems.push(`unknown condition ${op}`);
  }
  for (const name of Object.keys(upload.fields)) {
    const lower = name.toLowerCase();
    if (['policy', 'x-amz-signature', 'file'].includes(lower) || lower.startsWith('x-ignore-')) continue;
    if (!covered.has(lower)) problems.push(`field ${name} is not covered by the policy`);
  }
  return problems;
}
