// Checks Grafana dashboards (dashboards/*.json, or the folder in DASHBOARDS) against
// Grafana's published dashboard schema: @grafana/schema's `Dashboard` type, with each
// dashboard's JSON compiled as a TypeScript object literal of that type (so every field's
// name and type is checked, unknown fields included). Then that they import anywhere:
// a `datasource` variable of type datasource for Prometheus, and every panel and query
// naming its datasource through it (no hard-coded datasource uid).
// One JSON line per dashboard on stdout ({"event":"dashboard","name",..,"errors":[..]}),
// then {"event":"done"}. Used by tests/tests/e2e/dashboards.rs.
'use strict';
const fs = require('fs');
const path = require('path');
const ts = require('typescript');

const out = (event, data = {}) => process.stdout.write(JSON.stringify({ event, ...data }) + '\n');
const dir = process.env.DASHBOARDS || path.join(__dirname, '../../dashboards');
const work = fs.mkdtempSync(path.join(__dirname, '.dashboard-check-'));

const files = fs.readdirSync(dir).filter((f) => f.endsWith('.json')).sort();
const sources = files.map((f) => {
  const text = fs.readFileSync(path.join(dir, f), 'utf8');
  const file = path.join(work, f.replace(/\.json$/, '.ts'));
  fs.writeFileSync(file, `import type { Dashboard } from '@grafana/schema';\nexport const dashboard: Dashboard = ${text};\n`);
  return { name: f, file, json: JSON.parse(text) };
});

const program = ts.createProgram(sources.map((s) => s.file), {
  strict: true,
  noEmit: true,
  skipLibCheck: true,
  target: ts.ScriptTarget.ES2022,
  module: ts.ModuleKind.NodeNext,
  moduleResolution: ts.ModuleResolutionKind.NodeNext,
  types: [],
});
const diagnostics = ts.getPreEmitDiagnostics(program);

// Every `datasource` reference in a dashboard must go through the template variable.
function datasourceErrors(json) {
  const errors = [];
  const vars = ((json.templating || {}).list || []).filter((v) => v.type === 'datasource');
  const prometheus = vars.find((v) => v.query === 'prometheus');
  if (!prometheus) {
    errors.push('no datasource variable for Prometheus in templating.list');
    return errors;
  }
  const allowed = new Set([`\${${prometheus.name}}`, `$${prometheus.name}`]);
  const walk = (node, where) => {
    if (Array.isArray(node)) return node.forEach((n, i) => walk(n, `${where}[${i}]`));
    if (!node || typeof node !== 'object') return;
    for (const [k, v] of Object.entries(node)) {
      if (k === 'datasource' && where !== 'templating') {
        const uid = typeof v === 'string' ? v : v && v.uid;
        const builtin = v && typeof v === 'object' && v.type === 'grafana';
        if (!builtin && !allowed.has(uid)) errors.push(`${where}.datasource is ${JSON.stringify(v)}: use \${${prometheus.name}}`);
      } else if (k !== 'templating') {
        walk(v, where ? `${where}.${k}` : k);
      }
    }
  };
  walk(json, '');
  return errors;
}

let failed = 0;
for (const s of sources) {
  const errors = diagnostics
    .filter((d) => d.file && path.resolve(d.file.fileName) === path.resolve(s.file))
    .map((d) => {
      const { line } = d.file.getLineAndCharacterOfPosition(d.start);
      // Line 2 of the generated file is line 1 of the JSON.
      return `line ${line}: ${ts.flattenDiagnosticMessageText(d.messageText, '\n')}`;
    })
    .concat(datasourceErrors(s.json));
  failed += errors.length;
  out('dashboard', { name: s.name, panels: (s.json.panels || []).length, errors });
}
// Problems that are no dashboard's (the schema package itself not found, say).
const general = diagnostics.filter((d) => !d.file || !sources.some((s) => path.resolve(d.file.fileName) === path.resolve(s.file)));
for (const d of general) out('general_error', { message: ts.flattenDiagnosticMessageText(d.messageText, '\n') });
fs.rmSync(work, { recursive: true, force: true });
out('done', { dashboards: sources.length, errors: failed + general.length });
