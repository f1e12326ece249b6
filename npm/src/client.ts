// The phoenix client's classes, as every entry of the package exports them, and the types of
// their options, messages, callbacks and transports.
export {Channel} from "./channel"
export type {BindingCallback} from "./channel"
export type {ChannelState, ValueOrThunk} from "./constants"
export {LongPoll} from "./longpoll"
export type {LongPollError} from "./longpoll"
export {Push} from "./push"
export type {PushPayload, PushReply, PushStatus} from "./push"
export {Serializer} from "./serializer"
export type {Decoder, Encoder, Frame, Message} from "./serializer"
export {Socket} from "./socket"
export type {ConnectionState, Logger, SocketConnectOption, SocketErrorCallback} from "./socket"
export type {
  SessionStore, Transport, TransportCloseEvent, TransportConstructor, TransportMessageEvent,
} from "./transport"
