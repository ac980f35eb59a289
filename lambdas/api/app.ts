/**
 * The job API as one hono app: routes declared from zod schemas (the OpenAPI 3.1 document comes from
 * the same declarations), bearer auth and a per-team rate limit in front of every /jobs route. It runs
 * in Lambda (handler.ts) and locally (scripts/api.ts).
 */
import { createRoute, OpenAPIHono, type RouteConfig, z } from '@hono/zod-openapi';
import type { Context } from 'hono';
import { describeIssues } from '../shared/contract';
import { monthToDate } from '../shared/cost';
import type { TeamRegistry } from '../shared/teams';
import { type AuthConfig, AuthError, authenticate, type Caller } from './auth';
import { type ApiDeps, ApiError, cancelJob, createJob, deleteJob, getJob, listJobs, results, startJob } from './jobs';
import { type GlobalRateLimit, type RateLimit, TokenBuckets } from './rate-limit';
import {
  CreateJobRequestSchema,
  CreateJobResponseSchema,
  DeleteResponseSchema,
  ErrorResponseSchema,
  JobIdParamSchema,
  JobListSchema,
  JobSchema,
  ListQuerySchema,
  ResultsSchema,
  UsageSchema,
} from './schemas';

export interface AppOptions {
  readonly deps: ApiDeps;
  readonly auth: AuthConfig;
  readonly rateLimit: RateLimit;
  /** The team's allowance across every instance (the registry's windows); only the in-memory buckets without it. */
  readonly globalRateLimit?: GlobalRateLimit;
  /**
   * The team registry: a team it does not know gets 403 TEAM_UNKNOWN, and /usage reads its counters.
   * Absent (only to print the OpenAPI document): any team with a valid token, no usage.
   */
  readonly teams?: Pick<TeamRegistry, 'get'>;
}

type Env = { Variables: { caller: Caller } };

const json = <T extends z.ZodType>(schema: T, description: string) => ({ content: { 'application/json': { schema } }, description });
const errors = {
  400: json(ErrorResponseSchema, 'Invalid request: the message names the field and what to do'),
  401: json(ErrorResponseSchema, 'Missing or invalid bearer token'),
  404: json(ErrorResponseSchema, "No such job for your team (also for another team's job)"),
  409: json(ErrorResponseSchema, 'The job is not in a state that allows this'),
  429: json(ErrorResponseSchema, 'Rate limit: retry after the Retry-After seconds'),
};
const security = [{ bearer: [] }];

/** Every route, exported so a test can check each is in the OpenAPI document. */
export const routes = {
  createJob: createRoute({
    method: 'post',
    path: '/jobs',
    summary: 'Create a job: returns its id and one presigned upload target per photo',
    security,
    request: {
      headers: z.object({ 'idempotency-key': z.string().optional().openapi({ description: 'Same key and body: the same job is returned' }) }),
      body: { content: { 'application/json': { schema: CreateJobRequestSchema } }, required: true },
    },
    responses: { 201: json(CreateJobResponseSchema, 'Created (or replayed for a known Idempotency-Key)'), ...errors },
  }),
  listJobs: createRoute({
    method: 'get',
    path: '/jobs',
    summary: "List the team's jobs, a page at a time",
    security,
    request: { query: ListQuerySchema },
    responses: { 200: json(JobListSchema, 'A page of jobs'), ...errors },
  }),
  getJob: createRoute({
    method: 'get',
    path: '/jobs/{id}',
    summary: 'A job and its status',
    security,
    request: { params: JobIdParamSchema },
    responses: { 200: json(JobSchema, 'The job'), ...errors },
  }),
  startJob: createRoute({
    method: 'post',
    path: '/jobs/{id}/start',
    summary: 'Start the job once every declared photo is uploaded',
    security,
    request: { params: JobIdParamSchema },
    responses: { 202: json(JobSchema, 'Started (job.json written to the inbox)'), 413: json(ErrorResponseSchema, 'A photo is over the size limit'), ...errors },
  }),
  cancelJob: createRoute({
    method: 'post',
    path: '/jobs/{id}/cancel',
    summary: 'Cancel: stop the execution and its GPU job; status becomes cancelled',
    security,
    request: { params: JobIdParamSchema },
    responses: { 200: json(JobSchema, 'Cancelled'), ...errors },
  }),
  results: createRoute({
    method: 'get',
    path: '/jobs/{id}/results',
    summary: 'Result links signed now; urlExpiresAt is when they stop working',
    security,
    request: { params: JobIdParamSchema },
    responses: { 200: json(ResultsSchema, 'The artifacts and their links'), ...errors },
  }),
  deleteJob: createRoute({
    method: 'delete',
    path: '/jobs/{id}',
    summary: 'Erase the job: every object and version in every bucket; 404 afterwards',
    security,
    request: { params: JobIdParamSchema },
    responses: { 200: json(DeleteResponseSchema, 'Erased'), ...errors },
  }),
  usage: createRoute({
    method: 'get',
    path: '/usage',
    summary: "The team's month-to-date cost and GPU hours against its budget",
    security,
    responses: { 200: json(UsageSchema, 'Month to date'), ...errors },
  }),
} satisfies Record<string, RouteConfig>;

function errorBody(code: string, message: string, input?: string) {
  return { error: { code, message, ...(input ? { input } : {}) } };
}

export function createApp(options: AppOptions): OpenAPIHono<Env> {
  const { deps } = options;
  const buckets = new TokenBuckets(options.rateLimit);
  const app = new OpenAPIHono<Env>({
    // Request validation failures: 400 with the field named, the same shape as every other error.
    defaultHook: (result, c) => {
      if (!result.success) return c.json(errorBody('INVALID_REQUEST', describeIssues(result.error as never, 'request')), 400);
    },
  });

  app.openAPIRegistry.registerComponent('securitySchemes', 'bearer', {
    type: 'http',
    scheme: 'bearer',
    bearerFormat: 'JWT',
    description: 'OIDC access token with exactly one "avatar/team:<teamId>" scope (Cognito client credentials)',
  });

  // Every route but the document: a verified team, then its rate limit.
  app.use('*', async (c, next) => {
    if (c.req.path === '/openapi.json') return next();
    const caller = await authenticate(c.req.header('authorization'), options.auth);
    if (options.teams && !(await options.teams.get(caller.teamId))) {
      throw new ApiError(403, 'TEAM_UNKNOWN', `team "${caller.teamId}" is not registered: ask the operator to add it`);
    }
    const wait = buckets.take(caller.teamId) || ((await options.globalRateLimit?.take(caller.teamId)) ?? 0);
    if (wait > 0) {
      c.header('Retry-After', String(wait));
      throw new ApiError(429, 'RATE_LIMITED', `too many requests for team "${caller.teamId}": retry in ${wait} s`);
    }
    c.set('caller', caller);
    await next();
  });

  const team = (c: Context<Env>) => c.get('caller').teamId;

  app.openapi(routes.createJob, async (c) => {
    const out = await createJob(deps, team(c), c.req.valid('json'), c.req.valid('header')['idempotency-key']);
    return c.json(out, 201);
  });
  app.openapi(routes.listJobs, async (c) => c.json(await listJobs(deps, team(c), c.req.valid('query')), 200));
  app.openapi(routes.getJob, async (c) => c.json(await getJob(deps, team(c), c.req.valid('param').id), 200));
  app.openapi(routes.startJob, async (c) => c.json(await startJob(deps, team(c), c.req.valid('param').id), 202));
  app.openapi(routes.cancelJob, async (c) => c.json(await cancelJob(deps, team(c), c.req.valid('param').id), 200));
  app.openapi(routes.results, async (c) => c.json(await results(deps, team(c), c.req.valid('param').id), 200));
  app.openapi(routes.deleteJob, async (c) => c.json(await deleteJob(deps, team(c), c.req.valid('param').id), 200));

  app.openapi(routes.usage, async (c) => {
    const usage = options.teams ? await monthToDate(options.teams as TeamRegistry, team(c)) : undefined;
    if (!usage) throw new ApiError(404, 'TEAM_UNKNOWN', 'no usage for your team: it is not in the team registry');
    return c.json({ teamId: team(c), ...usage }, 200);
  });

  app.doc31('/openapi.json', openApiInfo);

  app.notFound((c) => c.json(errorBody('NOT_FOUND', `no route ${c.req.method} ${c.req.path}: see /openapi.json`), 404));
  app.onError((error, c) => {
    if (error instanceof AuthError) return c.json(errorBody('UNAUTHORIZED', error.message), 401);
    if (error instanceof ApiError) return c.json(errorBody(error.code, error.message, error.input), error.status);
    console.error(JSON.stringify({ level: 'error', message: 'unhandled', error: String(error), stack: (error as Error).stack }));
    return c.json(errorBody('INTERNAL', 'the server failed; retry later'), 500);
  });
  return app;
}

export const openApiInfo = {
  openapi: '3.1.0',
  info: {
    title: 'avatar-lora job API',
    version: '1.0.0',
    description: 'Create photo-to-LoRA training jobs, upload photos, watch, fetch results, cancel and erase.',
  },
};
