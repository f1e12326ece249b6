// The package entry for browsers (the `browser` export condition, which bundlers use): the same
// exports as index.ts, with Presence in a module of its own (browser-presence.ts), so that a
// page without Presence leaves it, and its WebAssembly, out.
export * from "./client"
export {Presence} from "./browser-presence.js"
