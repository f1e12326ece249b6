// Presence with loader-async.ts (see tsup.config.mjs): importing this module starts loading the
// WebAssembly chunk.
export {Presence} from "./presence"
