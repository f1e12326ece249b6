// The chunk loader-async.ts downloads: the module's bytes and its wasm-bindgen glue.
import {
  syncDiff as apply,
  initSync,
  presenceList as instanceList,
  list as listOf,
  presenceOnDiff as onDiff,
  presenceOnState as onState,
  presenceInPendingSyncState as pending,
  syncState as resync,
} from "../build/wasm/rollcall_wasm.js"
import type {Bindings} from "./loader"

export {wasmHex} from "../build/wasm/bytes.js"
export {initSync}
export const bindings: Bindings = {onState, onDiff, instanceList, pending, resync, apply, listOf}
