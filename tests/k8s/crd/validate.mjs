// Validates custom resources (KEDA, Prometheus Operator) that kubernetes-validate has no
// schema for, against the models those projects publish on npm, in two ways:
//   1. the JSON-schema validators the packages carry (types, required fields, enums);
//   2. their TypeScript types, compiled with excess-property checks: a field the
//      project does not know (a typo, a field from another version) is an error.
// Usage: node validate.mjs DOCS.json   (a JSON array of manifests)
// Prints one line per object, "OK [i] ..." or "ERROR [i] ...", i its index in the array;
// exit 0 when all pass, 1 otherwise, 2 on bad usage.
import { mkdtempSync, readFileSync, rmSync, writeFileSync } from "node:fs";
import { dirname, join } from "node:path";
import { fileURLToPath } from "node:url";
import ts from "typescript";

const here = dirname(fileURLToPath(import.meta.url));

// apiVersion/kind -> [module, class, interface]
const MODELS = {
  "keda.sh/v1alpha1/ScaledObject": [
    "@kubernetes-models/keda/keda.sh/v1alpha1/ScaledObject", "ScaledObject", "IScaledObject"],
  "keda.sh/v1alpha1/TriggerAuthentication": [
    "@kubernetes-models/keda/keda.sh/v1alpha1/TriggerAuthentication",
    "TriggerAuthentication", "ITriggerAuthentication"],
  "monitoring.coreos.com/v1/ServiceMonitor": [
    "@kubernetes-models/prometheus-operator/monitoring.coreos.com/v1/ServiceMonitor",
    "ServiceMonitor", "IServiceMonitor"],
};

const name = (doc, i) => `[${i}] ${doc.kind}/${doc.metadata?.name ?? "(no name)"}`;

async function schemaErrors(doc, model) {
  const [module, cls] = model;
  const Model = (await import(module))[cls];
  try {
    new Model(doc).validate();
    return [];
  } catch (err) {
    return [String(err.message ?? err)];
  }
}

// Type-checks every document in one program; returns doc index -> messages.
function typeErrors(docs) {
  const work = mkdtempSync(join(here, ".work-"));
  const file = join(work, "check.ts");
  const lines = [];
  const firstLine = [];
  docs.forEach((doc, i) => {
    const [module, , iface] = MODELS[`${doc.apiVersion}/${doc.kind}`];
    lines.push(`import type { ${iface} as T${i} } from "${module}";`);
  });
  docs.forEach((doc, i) => {
    firstLine.push(lines.length);
    lines.push(...`export const d${i}: T${i} = ${JSON.stringify(doc, null, 2)};`.split("\n"));
  });
  writeFileSync(file, lines.join("\n") + "\n");
  try {
    const program = ts.createProgram([file], {
      strict: true, noEmit: true, skipLibCheck: true, types: [],
      // The ES library alone: the DOM's declarations would triple the time.
      target: ts.ScriptTarget.ES2022, lib: ["lib.es2022.d.ts"],
      module: ts.ModuleKind.NodeNext, moduleResolution: ts.ModuleResolutionKind.NodeNext,
    });
    const found = new Map();
    for (const d of ts.getPreEmitDiagnostics(program)) {
      const text = ts.flattenDiagnosticMessageText(d.messageText, " ");
      let index = -1;
      if (d.file && d.start !== undefined) {
        const { line } = d.file.getLineAndCharacterOfPosition(d.start);
        index = firstLine.findLastIndex((start) => start <= line);
      }
      if (!found.has(index)) found.set(index, []);
      found.get(index).push(text);
    }
    return found;
  } finally {
    rmSync(work, { recursive: true, force: true });
  }
}

async function main(argv) {
  if (argv.length !== 1) {
    console.error("usage: node validate.mjs DOCS.json");
    return 2;
  }
  const docs = JSON.parse(readFileSync(argv[0], "utf8"));
  let failed = 0;
  const known = [];
  const index = [];
  for (const [i, doc] of docs.entries()) {
    const model = MODELS[`${doc.apiVersion}/${doc.kind}`];
    if (!model) {
      console.log(`ERROR ${name(doc, i)}: no published schema known for ${doc.apiVersion} ${doc.kind}`);
      failed++;
      continue;
    }
    known.push(doc);
    index.push(i);
  }
  const typed = known.length ? typeErrors(known) : new Map();
  for (const message of typed.get(-1) ?? []) {
    console.log(`ERROR type check: ${message}`);
    failed++;
  }
  for (const [k, doc] of known.entries()) {
    const errors = [...(await schemaErrors(doc, MODELS[`${doc.apiVersion}/${doc.kind}`])),
      ...(typed.get(k) ?? [])];
    if (errors.length) {
      failed++;
      for (const e of errors) console.log(`ERROR ${name(doc, index[k])} (${doc.apiVersion}): ${e}`);
    } else {
      console.log(`OK ${name(doc, index[k])} (${doc.apiVersion})`);
    }
  }
  return failed ? 1 : 0;
}

process.exitCode = await main(process.argv.slice(2));
