import {test} from "node:test"
import assert from "node:assert/strict"
import {createRequire} from "node:module"

const require = createRequire(import.meta.url)

test("the wasm build of rollcall-core loads in Node", () => {
  const wasm = require("../dist/wasm-nodejs/rollcall_wasm.js")
  assert.match(wasm.coreVersion(), /^\d+\.\d+\.\d+$/)
})
