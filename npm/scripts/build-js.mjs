// Generates the CommonJS twins (src/*.cjs) of the client's ES modules, so
// `require("rollcall")` works without a bundler. The sources use a small subset
// of module syntax on purpose (named imports of relative .mjs files, and
// `export class|const|function`); anything else is an error here rather than a
// silently broken .cjs file.
//
//   node scripts/build-js.mjs          write the .cjs files
//   node scripts/build-js.mjs --check  exit 1 if any .cjs file is out of date
import fs from "node:fs"
import path from "node:path"
import {fileURLToPath} from "node:url"

const src = path.resolve(path.dirname(fileURLToPath(import.meta.url)), "../src")

// The client's modules; index.cjs is hand-written (it loads Presence lazily) and
// presence.* belongs to the wasm-backed Presence.
export const MODULES = ["constants", "timer", "serializer", "ajax", "longpoll", "push", "channel", "socket"]

const IMPORT = /^import\s*\{([^}]*)\}\s*from\s*"(\.\/[\w-]+)\.mjs"\s*;?\s*$/gm
const EXPORT_DECL = /^export\s+(class|const|function|let)\s+([A-Za-z_$][\w$]*)/gm

export function toCommonJS(source, file) {
  const exported = []
  let out = source.replace(IMPORT, (_, names, from) => {
    const bindings = names
      .split(",")
      .map(n => n.trim())
      .filter(Boolean)
      .map(n => n.replace(/^(\w+)\s+as\s+(\w+)$/, "$1: $2"))
    return `const {${bindings.join(", ")}} = require("${from}.cjs")`
  })
  out = out.replace(EXPORT_DECL, (_, kind, name) => {
    exported.push(name)
    return `${kind} ${name}`
  })
  const leftover = out.match(/^\s*(import|export)\b.*$/m)
  if (leftover) throw new Error(`${file}: unsupported module syntax for the CommonJS build: ${leftover[0].trim()}`)
  const header = `"use strict"\n// Generated from ${file} by scripts/build-js.mjs; do not edit.\n`
  return `${header}${out}\n${exported.map(name => `exports.${name} = ${name}`).join("\n")}\n`
}

export function build({check = false} = {}) {
  const stale = []
  for (const name of MODULES) {
    const file = `${name}.mjs`
    const target = path.join(src, `${name}.cjs`)
    const output = toCommonJS(fs.readFileSync(path.join(src, file), "utf8"), file)
    const current = fs.existsSync(target) ? fs.readFileSync(target, "utf8") : null
    if (current === output) continue
    if (check) stale.push(`${name}.cjs`)
    else fs.writeFileSync(target, output)
  }
  // TypeScript reads index.d.ts / presence.d.mts as ESM (the package is "type": "module");
  // CommonJS consumers get the same declarations as .d.cts twins.
  for (const [from, to] of [["../index.d.ts", "../index.d.cts"], ["presence.d.mts", "presence.d.cts"]]) {
    const dts = fs.readFileSync(path.join(src, from), "utf8")
    const ctsPath = path.join(src, to)
    const cts = `// Generated from ${path.basename(from)} by scripts/build-js.mjs; do not edit.\n${dts}`
    const current = fs.existsSync(ctsPath) ? fs.readFileSync(ctsPath, "utf8") : null
    if (current === cts) continue
    if (check) stale.push(path.basename(to))
    else fs.writeFileSync(ctsPath, cts)
  }
  return stale
}

if (process.argv[1] === fileURLToPath(import.meta.url)) {
  const check = process.argv.includes("--check")
  const stale = build({check})
  if (stale.length > 0) {
    console.error(`out of date (run node scripts/build-js.mjs): ${stale.join(", ")}`)
    process.exit(1)
  }
  console.error(check ? "[build-js] CommonJS files are up to date" : "[build-js] wrote src/*.cjs")
}
