import { describe, expect, it } from 'vitest';
import { loadConfig } from '../../infra/config';

describe('loadConfig', () => {
  it('fills every default when the context is absent', () => {
    expect(loadConfig(undefined)).toEqual({
      rawPhotoRetentionDays: 30,
      maxVcpus: 16,
      instanceTypes: ['g5.xlarge', 'g5.2xlarge'],
      spot: true,
      urlExpirySeconds: 3600,
      executionTimeoutHours: 12,
      rootVolumeGiB: 200,
      baseModelKey: 'models/sd15/v1-5-pruned-emaonly.safetensors',
    });
  });

  it('accepts the context as a JSON string, as `cdk -c avatar=...` passes it', () => {
    const config = loadConfig('{"spot":false,"maxVcpus":32,"alarmEmail":"ops@example.com"}');
    expect(config.spot).toBe(false);
    expect(config.maxVcpus).toBe(32);
    expect(config.alarmEmail).toBe('ops@example.com');
  });

  it('accepts other single-GPU families it supports', () => {
    expect(loadConfig({ instanceTypes: ['g6.xlarge', 'g6e.2xlarge'] }).instanceTypes).toEqual(['g6.xlarge', 'g6e.2xlarge']);
  });

  it.each([
    [{ maxVcpus: 2 }, /maxVcpus: Too small/],
    [{ instanceTypes: ['p3.2xlarge'] }, /instanceTypes\.0: must be a single-GPU instance type of family g5\/g6\/g6e/],
    [{ instanceTypes: ['g5.12xlarge'] }, /instanceTypes\.0: must be a single-GPU instance type/],
    [{ instanceTypes: [] }, /instanceTypes: Too small/],
    [{ urlExpirySeconds: 604_801 }, /urlExpirySeconds: Too big/],
    [{ alarmEmail: 'not-an-email' }, /alarmEmail: Invalid email/],
    [{ rawPhotoRetentionDays: 0 }, /rawPhotoRetentionDays: Too small/],
    [{ rawPhotoRetentionDays: 1.5 }, /rawPhotoRetentionDays: /],
    [{ executionTimeoutHours: 0 }, /executionTimeoutHours: Too small/],
    [{ rootVolumeGiB: 20 }, /rootVolumeGiB: Too small/],
    [{ baseModelKey: '/etc/passwd' }, /baseModelKey: must be an artifacts-bucket key under models\//],
    [{ spot: 'yes' }, /spot: Invalid input: expected boolean/],
    [{ maxVcpu: 8 }, /Unrecognized key: "maxVcpu"/],
  ])('rejects %j naming the field', (raw, message) => {
    expect(() => loadConfig(raw)).toThrow(message);
  });

  it('prefixes every error so the operator knows it is the avatar context', () => {
    expect(() => loadConfig({ maxVcpus: 2 })).toThrow(/^Invalid avatar config: /);
  });

  it('rejects a vCPU ceiling below the smallest instance, which would strand every job', () => {
    expect(() => loadConfig({ instanceTypes: ['g5.4xlarge'], maxVcpus: 8 })).toThrow(
      'Invalid avatar config: maxVcpus: must be at least 16, the vCPUs of the smallest configured instance type',
    );
  });

  it('reports malformed JSON context as such', () => {
    expect(() => loadConfig('{maxVcpus: 8}')).toThrow(/context "avatar" is not valid JSON/);
  });
});
