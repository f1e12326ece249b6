// What the Presence shell needs of the WebAssembly module, whichever way it is loaded
// (loader-sync.ts for Node, test runners and the CommonJS build; loader-async.ts for browsers).
import type * as Glue from "../build/wasm/rollcall_wasm.js"

/** The module's functions, once it is compiled. */
export interface Bindings {
  onState: typeof Glue.presenceOnState
  onDiff: typeof Glue.presenceOnDiff
  instanceList: typeof Glue.presenceList
  pending: typeof Glue.presenceInPendingSyncState
  resync: typeof Glue.syncState
  apply: typeof Glue.syncDiff
  listOf: typeof Glue.list
}

/** The module's bytes from the hexadecimal text the build embeds (hex compresses better than base64). */
export function fromHex(hex: string): Uint8Array {
  const out = new Uint8Array(hex.length >> 1)
  for(let i = 0; i < out.length; i++){ out[i] = parseInt(hex.substr(i * 2, 2), 16) }
  return out
}

/** Why the module cannot be compiled here, and what to do about it. */
export function explain(cause: unknown): Error {
  const reason = cause instanceof Error ? cause.message : String(cause)
  let fix = ""
  if(typeof WebAssembly === "undefined"){
    fix = " This JavaScript engine has no WebAssembly."
  } else if(/unsafe-eval|Content.Security.Policy|CSP/i.test(reason)){
    fix = " The page's Content-Security-Policy forbids compiling WebAssembly: add 'wasm-unsafe-eval' to its script-src."
  }
  const error = new Error(`rollcall: the Presence WebAssembly module could not be loaded (${reason}).${fix}`)
  ;(error as {cause?: unknown}).cause = cause
  return error
}
