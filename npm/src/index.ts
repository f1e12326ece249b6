// The package entry for Node, test runners and CommonJS: the named exports of the phoenix
// client, plus Push, with a Presence whose WebAssembly module is compiled on first use.
export * from "./client"
export {Presence} from "./presence"
export type {
  PresenceChannel, PresenceDiff, PresenceEntry, PresenceMeta, PresenceOnJoin, PresenceOnLeave,
  PresenceOnSync, PresenceOpts, PresenceState,
} from "./presence"
