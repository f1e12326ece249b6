// The wasm-bindgen glue functions Presence uses, and nothing else of it: its own loaders fetch a
// .wasm file next to the script (`new URL(…, import.meta.url)`), which the bundle must not keep.
export {initSync, list, presenceInPendingSyncState, presenceList, presenceOnDiff, presenceOnState, syncDiff, syncState} from "../build/wasm/rollcall_wasm.js"
