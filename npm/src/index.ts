// The package entry: the named exports of the phoenix client, plus Push, and the types of their
// options, messages and callbacks.
export {Channel} from "./channel"
export type {BindingCallback} from "./channel"
export type {ChannelState, ValueOrThunk} from "./constants"
export {LongPoll} from "./longpoll"
export type {LongPollError} from "./longpoll"
export {Presence} from "./presence"
export type {
  PresenceChannel, PresenceDiff, PresenceEntry, PresenceMeta, PresenceOnJoin, PresenceOnLeave,
  PresenceOnSync, PresenceOpts, PresenceState,
} from "./presence"
export {Push} from "./push"
export type {PushPayload, PushReply, PushStatus} from "./push"
export {Serializer} from "./serializer"
export type {Decoder, Encoder, Frame, Message} from "./serializer"
export {Socket} from "./socket"
export type {ConnectionState, Logger, SocketConnectOption, SocketErrorCallback} from "./socket"
export type {
  SessionStore, Transport, TransportCloseEvent, TransportConstructor, TransportMessageEvent,
} from "./transport"
