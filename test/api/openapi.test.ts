import { spawnSync } from 'node:child_process';
import SwaggerParser from '@apidevtools/swagger-parser';
import { describe, expect, it } from 'vitest';
import { routes } from '../../lambdas/api/app';
import { openApiDocument } from '../../scripts/openapi';

describe('OpenAPI document', () => {
  const doc = openApiDocument();

  it('is a valid OpenAPI 3.1 document', async () => {
    expect(doc.openapi).toBe('3.1.0');
    // validate() throws on a schema or reference error; it dereferences a copy.
    const api = await SwaggerParser.validate(structuredClone(doc) as never);
    expect(api.info.title).toBe('avatar-lora job API');
  });

  it('holds every route the app serves, with its method, auth and error responses', () => {
    const paths = doc.paths as Record<string, Record<string, { security?: unknown[]; responses: Record<string, unknown> }>>;
    const declared = Object.values(routes)
      .map((r) => `${r.method.toUpperCase()} ${r.path}`)
      .sort();
    const documented = Object.entries(paths)
      .flatMap(([path, ops]) => Object.keys(ops).map((m) => `${m.toUpperCase()} ${path}`))
      .sort();
    expect(documented).toEqual(declared);
    expect(declared).toEqual([
      'DELETE /jobs/{id}',
      'GET /jobs',
      'GET /jobs/{id}',
      'GET /jobs/{id}/results',
      'GET /usage',
      'POST /jobs',
      'POST /jobs/{id}/cancel',
      'POST /jobs/{id}/start',
    ]);
    for (const ops of Object.values(paths)) {
      for (const op of Object.values(ops)) {
        expect(op.security).toEqual([{ bearer: [] }]);
        expect(Object.keys(op.responses)).toEqual(expect.arrayContaining(['401', '404']));
      }
    }
  });

  it('describes the status document from the job contract', () => {
    const schemas = (doc.components as { schemas: Record<string, { properties?: Record<string, { enum?: string[] }> }> }).schemas;
    expect(schemas.Job.properties?.state.enum).toEqual(['created', 'queued', 'running', 'succeeded', 'failed', 'cancelled']);
    // The request's spec is described by the job contract's own input schema.
    const spec = schemas.JobSpecInput as { required?: string[]; properties?: Record<string, { enum?: string[] }>; additionalProperties?: unknown };
    expect(spec.required).toEqual(['token', 'classWord']);
    expect(spec.properties?.kind.enum).toEqual(['character', 'style', 'object']);
    expect(spec.additionalProperties).toBe(false);
  });

  it('is what `npm run -s openapi` prints', () => {
    const run = spawnSync('npm', ['run', '-s', 'openapi'], { encoding: 'utf8' });
    expect(run.status).toBe(0);
    expect(JSON.parse(run.stdout)).toEqual(doc);
  });
});
