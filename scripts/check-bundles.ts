/**
 * `tsx scripts/check-bundles.ts <cdk.out>`: checks the Lambda bundles a real `cdk synth` wrote.
 * Each zipped Lambda asset must stay under Lambda's 250 MB unzipped limit, and a shipped
 * onnxruntime-node must hold its linux-x64 runtime and nothing for other platforms (the bundling
 * hook in infra/constructs/lambda-function.ts prunes the rest), and only validate's bundle may ship
 * the image stack (sharp, heic-decode): normalize copies validate's crops. Prints one line per bundle.
 */
import { existsSync, readdirSync, readFileSync, statSync } from 'node:fs';
import { join, relative } from 'node:path';

/** Packages only the validate stage decodes photos with. */
const IMAGE_MODULES = ['sharp', 'heic-decode'];

/** Lambda's limit for a function's code, unzipped. */
const LAMBDA_UNZIPPED_LIMIT = 250 * 1024 * 1024;

interface AssetManifest {
  files: Record<string, { displayName?: string; source: { path: string; packaging?: string } }>;
}

function sizeOf(path: string): number {
  const stat = statSync(path);
  if (!stat.isDirectory()) return stat.size;
  return readdirSync(path).reduce((sum, name) => sum + sizeOf(join(path, name)), 0);
}

function filesUnder(dir: string): string[] {
  return readdirSync(dir, { withFileTypes: true }).flatMap((e) => (e.isDirectory() ? filesUnder(join(dir, e.name)) : [join(dir, e.name)]));
}

export function checkBundles(outDir: string): string[] {
  const manifests = readdirSync(outDir).filter((f) => f.endsWith('.assets.json'));
  if (manifests.length === 0) throw new Error(`${outDir} holds no *.assets.json: run cdk synth -o ${outDir} first`);
  const problems: string[] = [];
  for (const manifest of manifests) {
    const { files } = JSON.parse(readFileSync(join(outDir, manifest), 'utf8')) as AssetManifest;
    for (const asset of Object.values(files)) {
      const dir = join(outDir, asset.source.path);
      if (asset.source.packaging !== 'zip' || !existsSync(join(dir, 'index.js'))) continue; // not a Lambda bundle
      const name = asset.displayName ?? asset.source.path;
      const bytes = sizeOf(dir);
      console.log(`${name}: ${(bytes / 1024 / 1024).toFixed(1)} MB unzipped`);
      if (bytes > LAMBDA_UNZIPPED_LIMIT) problems.push(`${name} is ${(bytes / 1024 / 1024).toFixed(0)} MB unzipped, over Lambda's 250 MB limit`);
      const images = IMAGE_MODULES.filter((m) => existsSync(join(dir, 'node_modules', m)));
      if (images.length && !name.includes('/Validate/')) problems.push(`${name} ships ${images.join(', ')}, which only the validate stage needs`);
      const ort = join(dir, 'node_modules', 'onnxruntime-node', 'bin');
      if (existsSync(ort)) {
        const binaries = filesUnder(ort).map((f) => relative(ort, f));
        const foreign = binaries.filter((f) => !/^napi-v\d+\/linux\/x64\//.test(f));
        if (foreign.length) problems.push(`${name} ships onnxruntime-node binaries for other platforms: ${foreign.join(', ')}`);
        if (!binaries.some((f) => f.endsWith('/linux/x64/onnxruntime_binding.node'))) problems.push(`${name} lacks onnxruntime-node's linux-x64 binding`);
      }
    }
  }
  return problems;
}

if (require.main === module) {
  const problems = checkBundles(process.argv[2] ?? 'cdk.out');
  for (const p of problems) console.error(`bundle check: ${p}`);
  process.exit(problems.length ? 1 : 0);
}
