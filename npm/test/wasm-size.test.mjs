// The Presence WebAssembly module stays small: it is bytes on every page that uses Presence.
// The budget is 40,000 bytes after wasm-opt (BENCHMARKS.md has the history and what takes the
// room); the package embeds exactly that module.
import {test} from "node:test"
import assert from "node:assert/strict"
import fs from "node:fs"
import path from "node:path"
import {fileURLToPath} from "node:url"

const pkg = path.resolve(path.dirname(fileURLToPath(import.meta.url)), "..")
const BUDGET = 40000

test(`the module is at most ${BUDGET} bytes`, () => {
  const size = fs.statSync(path.join(pkg, "build", "wasm", "rollcall_wasm_bg.wasm")).size
  console.log(`rollcall_wasm_bg.wasm: ${size} bytes (budget ${BUDGET})`)
  assert.ok(size <= BUDGET, `${size} bytes, over the budget of ${BUDGET}`)
})

test("the package embeds that module, in every build", () => {
  const hex = fs.readFileSync(path.join(pkg, "build", "wasm", "rollcall_wasm_bg.wasm")).toString("hex")
  for(const file of ["index.js", "index.cjs", "browser-wasm.js"]){
    const text = fs.readFileSync(path.join(pkg, "dist", file), "utf8")
    assert.ok(text.includes(`"${hex}"`), `dist/${file} does not embed build/wasm/rollcall_wasm_bg.wasm`)
  }
})
