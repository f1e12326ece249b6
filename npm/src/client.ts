// The phoenix client's classes, as every entry of the package exports them.
export {Channel} from "./channel.mjs"
export {LongPoll} from "./longpoll.mjs"
export {Push} from "./push.mjs"
export {Serializer} from "./serializer.mjs"
export {Socket} from "./socket.mjs"
