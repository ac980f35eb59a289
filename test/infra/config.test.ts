import { describe, expect, it } from 'vitest';
import { loadConfig } from '../../infra/config';

describe('loadConfig', () => {
  it('fills every default when the context is absent', () => {
    expect(loadConfig(undefined)).toEqual({
      rawPhotoRetentionDays: 30,
      jobDataRetentionDays: 30,
      maxVcpus: 16,
      minVcpus: 0,
      gpuWaitMinutes: 30,
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
    [{ gpuWaitMinutes: 5 }, /gpuWaitMinutes: Too small/],
    [{ gpuWaitMinutes: 24 * 60 + 1 }, /gpuWaitMinutes: Too big/],
    [{ gpuWaitMinutes: 30.5 }, /gpuWaitMinutes: /],
    [{ jobDataRetentionDays: 0 }, /jobDataRetentionDays: Too small/],
  ])('rejects %j naming the field', (raw, message) => {
    expect(() => loadConfig(raw)).toThrow(message);
  });

  it('prefixes every error so the operator knows it is the avatar context', () => {
    expect(() => loadConfig({ maxVcpus: 2 })).toThrow(/^Invalid avatar config: /);
  });

  it('rejects a vCPU ceiling below the smallest instance, which would strand every job', () => {
    expect(() => loadConfig({ instanceTypes: ['g5.4xlarge'], maxVcpus: 8, spot: false })).toThrow(
      'Invalid avatar config: maxVcpus: must be at least 16, the vCPUs of the smallest configured instance type',
    );
  });

  it('with spot, needs room for one instance in each of the two environments the ceiling is split between', () => {
    expect(() => loadConfig({ maxVcpus: 4 })).toThrow(
      /^Invalid avatar config: maxVcpus: must be at least 8: with spot on, the ceiling is split between the Spot and on-demand environments/,
    );
    expect(loadConfig({ maxVcpus: 8 }).maxVcpus).toBe(8);
    expect(loadConfig({ maxVcpus: 4, spot: false }).maxVcpus).toBe(4);
  });

  it('keeps job data at least as long as the longest job plus the life of its download links', () => {
    expect(() => loadConfig({ jobDataRetentionDays: 1, executionTimeoutHours: 48 })).toThrow(
      'Invalid avatar config: jobDataRetentionDays: must cover executionTimeoutHours plus urlExpirySeconds (3 days), or outputs expire before the job ends or its links do',
    );
    expect(loadConfig({ jobDataRetentionDays: 3, executionTimeoutHours: 48 }).jobDataRetentionDays).toBe(3);
  });

  it('reports malformed JSON context as such', () => {
    expect(() => loadConfig('{maxVcpus: 8}')).toThrow(/context "avatar" is not valid JSON/);
  });

  it("keeps no warm GPU by default and refuses a warm floor above the first environment's ceiling", () => {
    expect(loadConfig({ minVcpus: 4 }).minVcpus).toBe(4);
    // spot on: maxVcpus 16 gives the Spot environment 8.
    expect(() => loadConfig({ minVcpus: 12 })).toThrow(/minVcpus: must be at most 8, the ceiling of the Spot environment/);
    expect(loadConfig({ minVcpus: 12, spot: false }).minVcpus).toBe(12);
    expect(() => loadConfig({ minVcpus: -4 })).toThrow(/minVcpus/);
  });
});
