// Package entry: the same named exports as the phoenix client.
export {Channel} from "./channel.mjs"
export {LongPoll} from "./longpoll.mjs"
export {Presence} from "./presence.mjs"
export {Serializer} from "./serializer.mjs"
export {Socket} from "./socket.mjs"
