// Loads the Presence module for browsers: its bytes are a separate chunk (browser-wasm.js) that
// starts downloading as soon as this module is evaluated — when an app imports Presence — in
// parallel with the socket's connect, and is compiled off the main thread. A page that uses
// only Socket never loads it (the package has no side effects, so bundlers drop this module).
// Instances queue the channel's events until the module is there; the static functions need it
// loaded (`await Presence.ready` first when calling them at start-up).
import type {Bindings} from "./loader"
import {explain, fromHex} from "./loader"

let bindings: Bindings | undefined
let failure: Error | undefined

const loading: Promise<void> = import("./browser-wasm.js").then(async (chunk) => {
  const module = await WebAssembly.compile(fromHex(chunk.wasmHex) as BufferSource)
  chunk.initSync({module})
  bindings = chunk.bindings
}).catch((e) => {
  failure = explain(e)
  throw failure
})
// rejections surface through ready() and through each call; do not also report them unhandled
loading.catch(() => {})

/** The module; throws while it is still loading, or why it could not be loaded. */
export function load(): Bindings {
  if(bindings){ return bindings }
  if(failure){ throw failure }
  throw new Error("rollcall: Presence's WebAssembly module is still loading; await Presence.ready before calling Presence.syncState, syncDiff or list at start-up")
}

/** The module if it is loaded, else undefined (a failure throws). */
export function loadedNow(): Bindings | undefined {
  if(failure){ throw failure }
  return bindings
}

/** Settles once the module is loaded. */
export function ready(): Promise<void> { return loading }

/** Runs `then` once the module is loaded (or failed: `then` finds out from load()). */
export function whenReady(then: () => void): void { loading.then(then, then) }
