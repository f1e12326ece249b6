// CommonJS entry of rollcall's Presence: the Node build of the wasm core (loaded synchronously
// by wasm-bindgen's nodejs glue) and the class from presence-core.mjs, which `npm run build`
// also emits as CommonJS in dist/presence-core.cjs.
"use strict"
const wasm = require("../dist/wasm-nodejs/rollcall_wasm.js")
const {definePresence} = require("../dist/presence-core.cjs")

exports.Presence = definePresence(wasm)
