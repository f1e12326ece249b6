// Loads the Presence WebAssembly module. Its bytes ship inside this package's JavaScript (the
// build embeds them), so every bundler and test runner takes the package as it is: no asset to
// copy, no URL to resolve, no request to make. The module is compiled on first use, which takes
// about a millisecond, synchronously, so the API is phoenix.js's: nothing to await.
import {initSync, list as listOf, presenceInit as init, presenceInPendingSyncState as pending, presenceList as instanceList,
  presenceOnDiff as onDiff, presenceOnState as onState, syncDiff as apply, syncState as resync} from "../build/wasm/rollcall_wasm.js"
import {wasmBase64} from "../build/wasm/bytes.js"

let loaded: true | Error | undefined

function bytes(): Uint8Array {
  const text = atob(wasmBase64)
  const out = new Uint8Array(text.length)
  for(let i = 0; i < text.length; i++){ out[i] = text.charCodeAt(i) }
  return out
}

/** Why the module cannot be compiled here, and what to do about it. */
function explain(cause: unknown): Error {
  const reason = cause instanceof Error ? cause.message : String(cause)
  let fix = ""
  if(typeof WebAssembly === "undefined"){
    fix = " This JavaScript engine has no WebAssembly."
  } else if(/unsafe-eval|Content Security Policy|CSP/i.test(reason)){
    fix = " The page's Content-Security-Policy forbids compiling WebAssembly: add 'wasm-unsafe-eval' to its script-src."
  }
  const error = new Error(`rollcall: the Presence WebAssembly module could not be loaded: ${reason}.${fix}`)
  ;(error as {cause?: unknown}).cause = cause
  return error
}

// Imported by name, so that the bundle keeps none of the glue's own loaders (they fetch a .wasm
// file next to the script).
const bindings = {init, onState, onDiff, instanceList, pending, resync, apply, listOf}

function load(): typeof bindings {
  if(loaded === true){ return bindings }
  if(loaded instanceof Error){ throw loaded }
  try {
    initSync({module: bytes()})
    loaded = true
  } catch (e){
    loaded = explain(e)
    throw loaded
  }
  return bindings
}

/** Settles once the module is compiled (compiling it now if it is not). */
export function ready(): Promise<void> {
  try {
    load()
    return Promise.resolve()
  } catch (e){
    return Promise.reject(e)
  }
}

export const presenceInit = (instance: object, channel: object, opts: object): {state: string, diff: string} =>
  load().init(instance, channel, opts)
export const presenceOnState = (instance: object, newState: unknown): void => load().onState(instance, newState)
export const presenceOnDiff = (instance: object, diff: unknown): void => load().onDiff(instance, diff)
export const presenceList = (instance: object, by: unknown): any[] => load().instanceList(instance, by)
export const presenceInPendingSyncState = (instance: object): boolean => load().pending(instance)
export const syncState = (current: unknown, next: unknown, onJoin: unknown, onLeave: unknown): any =>
  load().resync(current, next, onJoin, onLeave)
export const syncDiff = (state: unknown, diff: unknown, onJoin: unknown, onLeave: unknown): any =>
  load().apply(state, diff, onJoin, onLeave)
export const list = (presences: unknown, chooser: unknown): any[] => load().listOf(presences, chooser)
