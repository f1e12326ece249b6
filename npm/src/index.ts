// The package entry: the named exports of the phoenix client, plus Push.
export {Channel} from "./channel.mjs"
export {LongPoll} from "./longpoll"
export {Presence} from "./presence"
export type {
  PresenceChannel, PresenceDiff, PresenceEntry, PresenceMeta, PresenceOnJoin, PresenceOnLeave,
  PresenceOnSync, PresenceOpts, PresenceState,
} from "./presence"
export {Push} from "./push.mjs"
export {Serializer} from "./serializer"
export {Socket} from "./socket.mjs"
