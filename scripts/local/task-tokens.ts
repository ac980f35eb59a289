/**
 * Step Functions' task-token API, locally: an HTTP endpoint speaking the service's JSON protocol
 * (`X-Amz-Target: AWSStepFunctions.SendTaskSuccess` / `SendTaskFailure` / `SendTaskHeartbeat`), so
 * the real SDK client in the handlers and in `npm run team` (AWS_ENDPOINT_URL_SFN) answers the
 * tokens of a locally running execution waiting in a `.waitForTaskToken` state. Answers follow
 * Step Functions: an unknown token is `TaskDoesNotExist`, an answered one `TaskTimedOut`.
 */
import { randomUUID } from 'node:crypto';
import { createServer, type Server } from 'node:http';

export interface TaskTokens {
  readonly endpoint: string;
  /** A new open token. */
  open(): string;
  /** Resolves with the parsed output of SendTaskSuccess; rejects with the error of SendTaskFailure. */
  wait(token: string): Promise<unknown>;
  stop(): Promise<void>;
}

/** The error a task fails with after SendTaskFailure: its name matches Retry/Catch, its message is the Cause. */
export class TaskFailed extends Error {
  constructor(error: string, cause?: string) {
    super(cause ?? error);
    this.name = error;
  }
}

interface Pending {
  promise: Promise<unknown>;
  resolve: (value: unknown) => void;
  reject: (error: Error) => void;
  closed: boolean;
}

export async function startTaskTokens(): Promise<TaskTokens> {
  const pending = new Map<string, Pending>();
  const fail = (status: number, type: string, message: string) => ({ status, body: { __type: `com.amazonaws.swf.service.v2.model#${type}`, message } });

  const handle = (target: string, input: { taskToken?: string; output?: string; error?: string; cause?: string }) => {
    const entry = input.taskToken ? pending.get(input.taskToken) : undefined;
    if (!entry) return fail(400, 'TaskDoesNotExist', 'Task Does Not Exist');
    if (entry.closed) return fail(400, 'TaskTimedOut', 'Task Timed Out');
    if (target === 'SendTaskHeartbeat') return { status: 200, body: {} };
    entry.closed = true;
    if (target === 'SendTaskSuccess') {
      let output: unknown;
      try {
        output = JSON.parse(input.output ?? '');
      } catch {
        entry.closed = false;
        return fail(400, 'InvalidOutput', 'output is not valid JSON');
      }
      entry.resolve(output);
    } else {
      entry.reject(new TaskFailed(input.error ?? 'States.TaskFailed', input.cause));
    }
    return { status: 200, body: {} };
  };

  const server: Server = createServer((req, res) => {
    let text = '';
    req.on('data', (chunk) => (text += chunk));
    req.on('end', () => {
      const target = String(req.headers['x-amz-target'] ?? '').replace(/^AWSStepFunctions\./, '');
      const known = ['SendTaskSuccess', 'SendTaskFailure', 'SendTaskHeartbeat'].includes(target);
      const { status, body } = known ? handle(target, JSON.parse(text || '{}')) : fail(400, 'UnknownOperationException', `${target} is not emulated locally`);
      res.writeHead(status, { 'content-type': 'application/x-amz-json-1.0' });
      res.end(JSON.stringify(body));
    });
  });
  await new Promise<void>((resolve) => server.listen(0, '127.0.0.1', resolve));
  const { port } = server.address() as { port: number };
  server.unref();

  return {
    endpoint: `http://127.0.0.1:${port}`,
    open() {
      const token = `local-task-token-${randomUUID()}`;
      const entry = { closed: false } as Pending;
      entry.promise = new Promise((resolve, reject) => Object.assign(entry, { resolve, reject }));
      entry.promise.catch(() => undefined); // awaited by wait(); never an unhandled rejection
      pending.set(token, entry);
      return token;
    },
    wait(token) {
      const entry = pending.get(token);
      if (!entry) throw new Error(`unknown task token ${token}`);
      return entry.promise;
    },
    async stop() {
      await new Promise<void>((resolve) => server.close(() => resolve()));
    },
  };
}
