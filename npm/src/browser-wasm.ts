// The chunk loader-async.ts downloads: the module's bytes and its wasm-bindgen glue.
import {initSync, list as listOf, presenceInPendingSyncState as pending, presenceList as instanceList,
  presenceOnDiff as onDiff, presenceOnState as onState, syncDiff as apply, syncState as resync} from "../build/wasm/rollcall_wasm.js"
import type {Bindings} from "./loader"

export {initSync}
export {wasmHex} from "../build/wasm/bytes.js"
export const bindings: Bindings = {onState, onDiff, instanceList, pending, resync, apply, listOf}
