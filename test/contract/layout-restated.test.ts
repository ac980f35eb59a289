/**
 * No source file restates a key the layout defines (lambdas/shared/layout.ts): the string literals of
 * every file under lambdas/, infra/ and containers/<image>/src are read (comments, docstrings and
 * import specifiers are not: prose may name a file) and checked for
 * - a layout folder at the start of a path (`normalize/…`, `'/train/state/'`, `${prefix}/caption/…`),
 * - a whole literal that is a job-level file name (`'status.json'`),
 * - kohya's checkpoint naming (`….safetensors` after an interpolation, `{epoch:06d}`, `\d{6}`).
 * Only the layout modules (layout.ts and the generated layout.json with its Python reader) may.
 */
import { existsSync, readdirSync, readFileSync, statSync } from 'node:fs';
import { join, relative } from 'node:path';
import { describe, expect, it } from 'vitest';
import { LAYOUT } from '../../lambdas/shared/layout';

const root = join(__dirname, '..', '..');
const LAYOUT_MODULES = ['lambdas/shared/layout.ts', 'containers/common/src/avatar_job/layout.py'];
/** Stands for an interpolation (`${…}`, `{…}` in an f-string) inside a literal. */
const HOLE = '\u0000';

/** Folders the layout defines (`train/`, `photos/`, `models/`, `teams/` …), without the slash. */
const FOLDERS = [
  ...new Set(
    Object.values(LAYOUT)
      .filter((t) => t.includes('/'))
      .map((t) => t.split('/')[0]!),
  ),
];
/** Job-level files (`status.json`, `job.json`, `manifest.json`). */
const FILES: string[] = Object.values(LAYOUT).filter((t) => !t.includes('/'));

// A folder starts a path at the start of the literal, after a space, quote or bracket, or after an
// interpolation; `/opt/models/…` (a folder of a local path) does not count.
const folderAtPathStart = new RegExp(`(?:^|^/|[\\s'"\`(\\[^${HOLE}]|${HOLE}/)(${FOLDERS.join('|')})/`);
const checkpointNaming = new RegExp(`${HOLE}\\.safetensors|^\\.safetensors$|:06d\\}|\\\\d\\{6\\}`);

/** What a literal restates, or undefined. */
function restated(literal: string): string | undefined {
  if (FILES.includes(literal)) return `the job-level file ${literal}`;
  const folder = folderAtPathStart.exec(literal);
  if (folder) return `the layout folder ${folder[1]}/`;
  const checkpoint = checkpointNaming.exec(literal);
  if (checkpoint) return `kohya's checkpoint naming (${checkpoint[0].replace(HOLE, '…')})`;
  return undefined;
}

/** String (and regular expression) literals of a TypeScript file, template literals with holes. */
function tsLiterals(source: string): { line: number; text: string }[] {
  const out: { line: number; text: string }[] = [];
  let i = 0;
  let lastSignificant = '';
  const lineAt = (pos: number) => source.slice(0, pos).split('\n').length;
  const readQuoted = (quote: string): string => {
    let text = '';
    i++;
    while (i < source.length && source[i] !== quote) {
      if (source[i] === '\\') {
        text += source[i + 1] === '/' ? '/' : source.slice(i, i + 2);
        i += 2;
        continue;
      }
      if (quote === '`' && source.startsWith('${', i)) {
        text += HOLE;
        skipBraces();
        continue;
      }
      text += source[i++];
    }
    i++;
    return text;
  };
  // Inside `${…}`: nested literals are collected too.
  const skipBraces = () => {
    i += 2;
    let depth = 1;
    while (i < source.length && depth > 0) {
      const c = source[i]!;
      if (c === '{') depth++;
      else if (c === '}') depth--;
      if (depth === 0) break;
      if (c === "'" || c === '"' || c === '`') {
        const start = i;
        out.push({ line: lineAt(start), text: readQuoted(c) });
        continue;
      }
      i++;
    }
    i++;
  };
  while (i < source.length) {
    const c = source[i]!;
    if (source.startsWith('//', i)) {
      i = source.indexOf('\n', i) === -1 ? source.length : source.indexOf('\n', i);
    } else if (source.startsWith('/*', i)) {
      i = source.indexOf('*/', i) + 2;
    } else if (c === "'" || c === '"' || c === '`') {
      const start = i;
      const text = readQuoted(c);
      // Import and re-export specifiers name modules, not keys.
      const before = source.slice(source.lastIndexOf('\n', start) + 1, start);
      if (!/^\s*(import|export)\b.*\bfrom\s*$|\brequire\(\s*$|^\s*import\s*$|\bimport\(\s*$|^\s*\}\s*from\s*$/.test(before)) {
        out.push({ line: lineAt(start), text });
      }
      lastSignificant = 'x';
    } else if (c === '/' && (lastSignificant === '' || /[(,=:[!&|?{};]/.test(lastSignificant) || /\breturn\s*$/.test(source.slice(0, i)))) {
      const start = i;
      out.push({ line: lineAt(start), text: readQuoted('/') });
      while (/[a-z]/.test(source[i] ?? '')) i++;
      lastSignificant = 'x';
    } else {
      if (!/\s/.test(c)) lastSignificant = c;
      i++;
    }
  }
  return out;
}

/** String literals of a Python file (f-string fields as holes); docstrings and comments left out. */
function pyLiterals(source: string): { line: number; text: string }[] {
  const out: { line: number; text: string }[] = [];
  const re = /#[^\n]*|([rRbBfFuU]{0,2})("""|'''|"|')/g;
  const lineAt = (pos: number) => source.slice(0, pos).split('\n').length;
  for (let m = re.exec(source); m; m = re.exec(source)) {
    if (m[0].startsWith('#')) continue;
    const [prefix, quote] = [m[1]!.toLowerCase(), m[2]!];
    const start = m.index;
    let i = re.lastIndex;
    let text = '';
    while (i < source.length && !source.startsWith(quote, i)) {
      if (source[i] === '\\' && !prefix.includes('r')) {
        text += source.slice(i, i + 2);
        i += 2;
      } else if (prefix.includes('f') && source[i] === '{' && source[i + 1] !== '{') {
        let depth = 0;
        do {
          if (source[i] === '{') depth++;
          if (source[i] === '}') depth--;
          i++;
        } while (depth > 0 && i < source.length);
        text += HOLE;
      } else {
        text += source[i++];
      }
    }
    re.lastIndex = i + quote.length;
    const lineStart = source.lastIndexOf('\n', start) + 1;
    const isDocstring = quote.length === 3 && /^\s*$/.test(source.slice(lineStart, start)) && /^\s*(#.*)?(\n|$)/.test(source.slice(re.lastIndex));
    if (!isDocstring) out.push({ line: lineAt(start), text });
  }
  return out;
}

function filesUnder(dir: string, ext: RegExp): string[] {
  const full = join(root, dir);
  return readdirSync(full).flatMap((name) => {
    const path = join(full, name);
    if (name === 'node_modules' || name === '__pycache__') return [];
    if (statSync(path).isDirectory()) return filesUnder(relative(root, path), ext);
    return ext.test(name) ? [relative(root, path)] : [];
  });
}

const containerSources = readdirSync(join(root, 'containers'))
  .filter((name) => existsSync(join(root, 'containers', name, 'src')))
  .map((name) => `containers/${name}/src`);
const sources = [...filesUnder('lambdas', /\.ts$/), ...filesUnder('infra', /\.ts$/), ...containerSources.flatMap((d) => filesUnder(d, /\.py$/))].filter(
  (file) => !LAYOUT_MODULES.includes(file),
);

describe('the key layout is defined once', () => {
  it('knows the folders and files it guards', () => {
    expect(FOLDERS).toEqual(expect.arrayContaining(['teams', 'models', 'photos', 'validate', 'normalize', 'caption', 'train', 'evaluate']));
    expect(FILES).toEqual(expect.arrayContaining(['job.json', 'status.json', 'manifest.json']));
    expect(sources.length).toBeGreaterThan(40);
  });

  it.each([
    ['normalize/plan.json', true],
    ['/train/state/', true],
    [`${HOLE}/caption/captions.json`, true],
    ['caption/captions.json', true],
    ['teams/*', true],
    ['status.json', true],
    [`${HOLE}-${HOLE}.safetensors`, true],
    ['.safetensors', true],
    ['(?:-(\\d{6}))?', true],
    ['see validate/report.json for each reason', true],
    ['/opt/models/blip-image-captioning-large', false],
    ['vpc-flow-logs/', false],
    ['rerun normalize to rebuild plan.json', false],
    ['status.json of the job', false],
    ['safetensors', false],
  ])('judges %j as a restatement: %s', (literal, expected) => {
    expect(restated(literal) !== undefined).toBe(expected);
  });

  it('reads literals, not comments, docstrings or imports', () => {
    // biome-ignore lint/suspicious/noTemplateCurlyInString: TypeScript source text, not a template
    const ts = tsLiterals("import { x } from '../validate/report';\n// 'train/state/'\nconst a = `${p}/train/${n}`; const r = /^train\\/state\\//;\n");
    expect(ts.map((l) => l.text)).toEqual([`${HOLE}/train/${HOLE}`, '^train/state/']);
    const py = pyLiterals('"""normalize/plan.json is read."""\n# "train/"\nx = f"caption/{folder}/{stem}.txt"  # c\ny = "a"\n');
    expect(py.map((l) => l.text)).toEqual([`caption/${HOLE}/${HOLE}.txt`, 'a']);
  });

  it('no file under lambdas/, infra/ or containers/*/src restates a key the layout defines', () => {
    const findings = sources.flatMap((file) => {
      const source = readFileSync(join(root, file), 'utf8');
      const literals = file.endsWith('.py') ? pyLiterals(source) : tsLiterals(source);
      return literals.flatMap(({ line, text }) => {
        const what = restated(text);
        return what ? [`${file}:${line} restates ${what}: ${JSON.stringify(text.replaceAll(HOLE, '…'))}`] : [];
      });
    });
    expect(findings).toEqual([]);
  });
});
