// Builds the wasm part of the package into dist/wasm-*: cargo (wasm32, wasm-release profile),
// then wasm-bindgen for Node (CommonJS) and for browsers / bundlers (ES module "web" target),
// then wasm-opt from npm's binaryen (never Debian's: its output breaks at runtime).
import {execFileSync} from "node:child_process"
import {fileURLToPath} from "node:url"
import path from "node:path"
import fs from "node:fs"

const here = path.dirname(fileURLToPath(import.meta.url))
const pkg = path.resolve(here, "..")
const root = path.resolve(pkg, "..")
const run = (cmd, args, opts = {}) => {
  console.log(`[build] ${cmd} ${args.join(" ")}`)
  execFileSync(cmd, args, {stdio: "inherit", cwd: root, ...opts})
}

run("cargo", ["build", "-p", "rollcall-wasm", "--target", "wasm32-unknown-unknown", "--profile", "wasm-release"])
const input = path.join(root, "target/wasm32-unknown-unknown/wasm-release/rollcall_wasm.wasm")
const wasmOpt = path.join(pkg, "node_modules/.bin/wasm-opt")
for (const target of ["nodejs", "web"]) {
  const out = path.join(pkg, "dist", `wasm-${target}`)
  fs.rmSync(out, {recursive: true, force: true})
  run("wasm-bindgen", ["--target", target, "--out-dir", out, input])
  // The nodejs target is CommonJS; the package itself is "type": "module".
  if (target === "nodejs") fs.writeFileSync(path.join(out, "package.json"), '{"type": "commonjs"}\n')
  const bg = path.join(out, "rollcall_wasm_bg.wasm")
  if (fs.existsSync(wasmOpt) && !process.env.ROLLCALL_NO_WASM_OPT) {
    run(wasmOpt, ["-Oz", "--enable-reference-types", "--enable-bulk-memory", "--enable-nontrapping-float-to-int", "--enable-sign-ext", "--enable-mutable-globals", "--enable-multivalue", bg, "-o", bg])
  }
}
console.log("[build] done")
