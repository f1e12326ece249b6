// ES module entry of rollcall's Presence: loads the wasm core, then defines the class.
// Node (and Deno / Bun) read the .wasm file synchronously; browsers and bundlers fetch it
// (top-level await), resolved next to this file with `new URL(..., import.meta.url)`.
import * as wasm from "../dist/wasm-web/rollcall_wasm.js"
import {definePresence} from "./presence-core.mjs"

const wasmUrl = new URL("../dist/wasm-web/rollcall_wasm_bg.wasm", import.meta.url)
const inNode = typeof process === "object" && process !== null && process.versions != null &&
  typeof process.versions.node === "string" && wasmUrl.protocol === "file:"
if(inNode){
  const {readFileSync} = await import("node:fs")
  wasm.initSync({module: readFileSync(wasmUrl)})
} else {
  await wasm.default({module_or_path: wasmUrl})
}

export const Presence = definePresence(wasm)
