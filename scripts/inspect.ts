/**
 * `npm run inspect -- <dir> [--kind character|style|object] [--token <t>] [--out <dir>] [--json]`
 *
 * The validate checks and crops on a local folder, with no AWS: the same photo checks the validate
 * Lambda runs, with the file system as the adapter. Prints a table (or the report as JSON); with
 * --out writes report.json, contact-sheet.png and the cropped kohya dataset for review.
 * Exits 1 when too few photos are usable, 2 on bad arguments.
 */
import { mkdirSync, readdirSync, readFileSync, statSync, writeFileSync } from 'node:fs';
import { join, resolve } from 'node:path';
import { parseArgs } from 'node:util';
import { cleanCaption } from '../lambdas/normalize/caption';
import { DEFAULT_CLASS_WORDS, describeIssues, JobSpecSchema, type Kind } from '../lambdas/shared/contract';
import { checkPhotos, type PhotoSource, tooFewMessage } from '../lambdas/validate/analyze';
import { configFromEnv } from '../lambdas/validate/config';

async function main(): Promise<number> {
  const { values, positionals } = parseArgs({
    allowPositionals: true,
    options: {
      kind: { type: 'string', default: 'character' },
      token: { type: 'string', default: 'ohwx' },
      out: { type: 'string' },
      json: { type: 'boolean', default: false },
    },
  });
  const dir = positionals[0];
  if (!dir) {
    console.error('usage: npm run inspect -- <dir> [--kind character|style|object] [--token <t>] [--out <dir>] [--json]');
    return 2;
  }
  const kind = values.kind as Kind;
  // An unknown kind gets a placeholder class word so the spec's own error names the kind.
  const parsed = JobSpecSchema.safeParse({ token: values.token, classWord: DEFAULT_CLASS_WORDS[kind] ?? 'object', kind });
  if (!parsed.success) {
    console.error(describeIssues(parsed.error, 'arguments'));
    return 2;
  }
  const spec = parsed.data;
  const config = configFromEnv();
  const names = readdirSync(dir)
    .filter((n) => !n.startsWith('.') && statSync(join(dir, n)).isFile())
    .sort();
  const captions = new Map(names.filter((n) => n.toLowerCase().endsWith('.txt')).map((n) => [n.slice(0, -4), n]));
  const sources: PhotoSource[] = names
    .filter((n) => !n.toLowerCase().endsWith('.txt'))
    .map((file) => {
      const caption = captions.get(file.replace(/\.[^.]*$/, ''));
      return { file, bytes: statSync(join(dir, file)).size, ...(caption ? { caption } : {}), load: async () => readFileSync(join(dir, file)) };
    });
  const started = Date.now();
  const { report, contactSheet, images } = await checkPhotos(sources, { teamId: 'local', jobId: 'inspect', spec, now: new Date() }, config);
  const seconds = (Date.now() - started) / 1000;

  if (values.json) console.log(JSON.stringify(report, null, 2));
  else printTable(report, seconds);

  if (values.out) {
    const out = resolve(values.out);
    mkdirSync(out, { recursive: true });
    writeFileSync(join(out, 'report.json'), `${JSON.stringify(report, null, 2)}\n`);
    writeFileSync(join(out, 'contact-sheet.png'), contactSheet);
    if (report.plan) {
      const folder = join(out, report.plan.folder);
      mkdirSync(folder, { recursive: true });
      // The same PNGs validate writes for normalize to copy: no second decode.
      for (const [name, png] of images) writeFileSync(join(folder, name), png);
      for (const p of report.photos.filter((x) => x.status === 'accepted' && x.caption)) {
        writeFileSync(join(folder, p.output!.replace(/\.png$/, '.txt')), `${cleanCaption(readFileSync(join(dir, p.caption!)))}\n`);
      }
    }
    if (!values.json) console.log(`wrote ${out}/report.json, contact-sheet.png${report.plan ? ` and ${report.plan.folder}/` : ''}`);
  }
  if (!report.plan) {
    console.error(`TOO_FEW_PHOTOS: ${tooFewMessage(report)}`);
    return 1;
  }
  return 0;
}

function printTable(report: Awaited<ReturnType<typeof checkPhotos>>['report'], seconds: number): void {
  const rows = report.photos.map((p) => ({
    file: p.file,
    result: p.code,
    format: p.format ?? '-',
    size: p.width ? `${p.width}x${p.height}` : '-',
    sharp: p.scores ? String(Math.round(p.scores.sharpness)) : '-',
    bright: p.scores ? p.scores.brightness.toFixed(2) : '-',
    faces: p.scores?.faceCount === undefined ? '-' : String(p.scores.faceCount),
    crop: p.crop ? `${p.crop.width}@${p.crop.left},${p.crop.top}` : '-',
    output: p.output ?? '',
  }));
  const columns = Object.keys(rows[0] ?? { file: '' }) as Array<keyof (typeof rows)[number]>;
  const widths = columns.map((c) => Math.max(c.length, ...rows.map((r) => r[c].length)));
  const line = (cells: string[]) => cells.map((cell, i) => cell.padEnd(widths[i]!)).join('  ');
  console.log(line(columns));
  for (const r of rows) console.log(line(columns.map((c) => r[c])));
  console.log('');
  for (const p of report.photos.filter((x) => x.status === 'rejected')) console.log(`  ${p.code}: ${p.message}`);
  const s = report.summary;
  console.log(`\n${s.accepted} accepted, ${s.rejected} rejected of ${s.files} files in ${seconds.toFixed(1)} s; resolution ${report.resolution}`);
  if (report.plan) console.log(`plan: ${report.plan.arithmetic}; folder ${report.plan.folder}`);
  for (const w of s.warnings) console.log(`warning: ${w}`);
}

main().then(
  (code) => process.exit(code),
  (error) => {
    console.error(error);
    process.exit(1);
  },
);
