// Loads the Presence module synchronously, on first use: its bytes are part of this bundle, and
// compiling them takes about a millisecond. Node, test runners (Jest, Vitest) and CommonJS
// consumers get this loader, so Presence works as phoenix.js's does, with nothing to await.
import type * as Glue from "../build/wasm/rollcall_wasm.js"
import {type Bindings, explain, fromHex} from "./loader"

// The glue and the bytes are required where they are first needed, not imported: the bundle
// then evaluates them on first use (the glue's set-up touches globals that some test
// environments lack, such as TextDecoder under jsdom), and an app that never uses Presence
// never runs them.
declare const require: (id: string) => unknown

let bindings: Bindings | undefined
let failure: Error | undefined

/** The module, compiled now if it is not yet; throws why it cannot be. */
export function load(): Bindings {
  if(bindings){ return bindings }
  if(failure){ throw failure }
  try {
    const glue = require("./glue") as typeof Glue
    const {wasmHex} = require("../build/wasm/bytes.js") as {wasmHex: string}
    glue.initSync({module: fromHex(wasmHex)})
    bindings = {onState: glue.presenceOnState, onDiff: glue.presenceOnDiff, instanceList: glue.presenceList,
      pending: glue.presenceInPendingSyncState, resync: glue.syncState, apply: glue.syncDiff, listOf: glue.list}
  } catch (e){
    failure = explain(e)
    throw failure
  }
  return bindings
}

/** The module if it can be had now (always, here: it is compiled on the spot). */
export function loadedNow(): Bindings { return load() }

/** Settles once the module is compiled. */
export function ready(): Promise<void> {
  try {
    load()
    return Promise.resolve()
  } catch (e){
    return Promise.reject(e)
  }
}

/** Runs `then` once the module is loaded (here: at once). */
export function whenReady(then: () => void): void { then() }
