// The phoenix client's classes, as every entry of the package exports them, and the types of
// their options, messages, callbacks and transports.

export type {BindingCallback} from "./channel"
export {Channel} from "./channel"
export type {ChannelState, ValueOrThunk} from "./constants"
export type {LongPollError} from "./longpoll"
export {LongPoll} from "./longpoll"
export type {PushPayload, PushReply, PushStatus} from "./push"
export {Push} from "./push"
export type {Decoder, Encoder, Frame, Message} from "./serializer"
export {Serializer} from "./serializer"
export type {ConnectionState, Logger, SocketConnectOption, SocketErrorCallback} from "./socket"
export {Socket} from "./socket"
export type {
  SessionStore,
  Transport,
  TransportCloseEvent,
  TransportConstructor,
  TransportMessageEvent,
} from "./transport"
