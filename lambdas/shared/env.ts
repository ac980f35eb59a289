/** Environment read once per cold start; a missing variable is a deployment bug, named here. */
export function requireEnv(name: string): string {
  const value = process.env[name];
  if (!value) throw new Error(`environment variable ${name} is not set (it is set by the CDK stack)`);
  return value;
}
