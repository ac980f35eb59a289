/**
 * `npx tsx bench/bundled-validate.ts`: proves the validate Lambda bundle runs its face-detection
 * worker. Builds lambdas/validate/handler.ts with esbuild the way CDK's NodejsFunction does (one CJS
 * file, node22, source map, the validate function's nodeModules left external and copied beside it
 * with their dependencies, nothing else: no tsx), then invokes the bundled handler in a plain `node`
 * process against a local S3 (moto) holding a small character job, and checks that faces were found
 * and the process exited by itself.
 */
import { spawnSync } from 'node:child_process';
import { cpSync, existsSync, mkdtempSync, readFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { parseArgs } from 'node:util';
import { buildSync } from 'esbuild';
import { keys } from '../lambdas/shared/keys';
import { getJson } from '../lambdas/shared/s3';
import { ReportSchema } from '../lambdas/validate/report';
import { LOCAL_CREDENTIALS, LOCAL_REGION, startMoto } from '../scripts/local/moto';
import { buildCorpus } from '../test/fixtures/photos/build';
import { ARTIFACTS, context, INBOX, uploadJob } from '../test/lambdas/validate-fixtures';

const ROOT = join(__dirname, '..');
/** The validate function's nodeModules (infra/constructs/stage-functions.ts: DECODE_MODULES + FACE_MODULES). */
const NODE_MODULES = ['sharp', 'heic-decode', '@vladmandic/human', 'onnxruntime-node'];

/**
 * Copies `names` with their dependencies and peer dependencies (npm >= 7 installs peers too), hoisted
 * as npm installs them, from the repo's node_modules: what CDK's `npm install` of nodeModules yields.
 */
function copyModules(names: readonly string[], to: string, seen = new Set<string>()): void {
  for (const name of names) {
    const from = join(ROOT, 'node_modules', name);
    if (seen.has(name) || !existsSync(from)) continue; // optional platform packages may be absent
    seen.add(name);
    cpSync(from, join(to, 'node_modules', name), { recursive: true, dereference: true });
    const pkg = JSON.parse(readFileSync(join(from, 'package.json'), 'utf8')) as Record<
      'dependencies' | 'optionalDependencies' | 'peerDependencies',
      object | undefined
    >;
    copyModules(
      [pkg.dependencies, pkg.optionalDependencies, pkg.peerDependencies].flatMap((d) => Object.keys(d ?? {})),
      to,
      seen,
    );
  }
}

async function main(): Promise<void> {
  const out = mkdtempSync(join(tmpdir(), 'avatar-validate-bundle-'));
  buildSync({
    entryPoints: [join(ROOT, 'lambdas/validate/handler.ts')],
    bundle: true,
    platform: 'node',
    target: 'node22',
    format: 'cjs',
    sourcemap: true,
    outfile: join(out, 'index.js'),
    external: NODE_MODULES,
    logLevel: 'warning',
  });
  // `--also a,b`: packages to ship beyond NODE_MODULES (to try a fix of that list).
  const { values } = parseArgs({ options: { also: { type: 'string', default: '' } } });
  copyModules([...NODE_MODULES, ...values.also.split(',').filter(Boolean)], out);

  const [moto, corpus] = await Promise.all([startMoto(), buildCorpus()]);
  try {
    await moto.createBucket(INBOX);
    await moto.createBucket(ARTIFACTS);
    const ctx = context(moto.s3(), 'bundled');
    const files = ['subject-01.jpg', 'subject-02.jpg', 'subject-03.jpg', 'subject-04.jpg', 'subject-05.jpg', 'no-face.png', 'two-people.jpg'];
    await uploadJob(ctx, corpus, files);
    const started = performance.now();
    const run = spawnSync(process.execPath, ['-e', `require('./index.js').handler(${JSON.stringify(ctx.job)}).then((r) => console.log(JSON.stringify(r)))`], {
      cwd: out,
      encoding: 'utf8',
      timeout: 120_000,
      env: {
        PATH: process.env.PATH,
        INBOX_BUCKET: INBOX,
        ARTIFACTS_BUCKET: ARTIFACTS,
        AWS_ENDPOINT_URL: moto.endpoint,
        AWS_REGION: LOCAL_REGION,
        AWS_ACCESS_KEY_ID: LOCAL_CREDENTIALS.accessKeyId,
        AWS_SECRET_ACCESS_KEY: LOCAL_CREDENTIALS.secretAccessKey,
        AWS_SDK_JS_NODE_VERSION_SUPPORT_WARNING_DISABLED: 'true',
        VALIDATE_CHARACTER_MIN: '3',
      },
    });
    const seconds = ((performance.now() - started) / 1000).toFixed(1);
    if (run.status !== 0) throw new Error(`the bundled handler failed (exit ${run.status ?? run.signal}): ${run.stderr}`);
    const report = ReportSchema.parse(await getJson(moto.s3(), ARTIFACTS, keys.validateReport(ctx.job)));
    const codes = Object.fromEntries(report.photos.map((p) => [p.file, `${p.code} (${p.scores?.faceCount ?? '-'} faces)`]));
    console.log(`bundle: ${out}/index.js; handler result ${run.stdout.trim()}; exited by itself after ${seconds} s`);
    console.log(codes);
    if (!report.photos.some((p) => (p.scores?.faceCount ?? 0) > 0)) throw new Error('no face found: the detector did not run');
  } finally {
    await moto.stop();
  }
}

main().catch((error) => {
  console.error(error);
  process.exit(1);
});
