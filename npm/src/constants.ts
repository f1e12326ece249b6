// Protocol constants and tiny helpers shared by every module of the client.
// Values are the ones the phoenix client uses; servers and apps depend on them.
import type {SessionStore, TransportCloseEvent, TransportConstructor} from "./transport"

/** Version of the channels wire protocol sent as the `vsn` query parameter. */
export const DEFAULT_VSN = "2.0.0"

/** Same numbering as `WebSocket.readyState`, so a real WebSocket and LongPoll read alike. */
export const SOCKET_STATES = Object.freeze({connecting: 0, open: 1, closing: 2, closed: 3} as const)

/** Default timeout of a push (and of a join) in milliseconds. */
export const DEFAULT_TIMEOUT = 10000

/** Default interval between heartbeats in milliseconds. */
export const DEFAULT_HEARTBEAT_INTERVAL_MS = 30000

/** Default timeout of one long-poll HTTP request in milliseconds. */
export const DEFAULT_LONGPOLLER_TIMEOUT = 20000

/** WebSocket close code of a normal, intended close. */
export const WS_CLOSE_NORMAL = 1000

/** The state of a Channel. */
export type ChannelState = "closed" | "errored" | "joined" | "joining" | "leaving"

/** Channel states. */
export const CHANNEL_STATES = Object.freeze({
  closed: "closed",
  errored: "errored",
  joined: "joined",
  joining: "joining",
  leaving: "leaving",
} as const satisfies Record<ChannelState, ChannelState>)

/** Events the protocol reserves on every channel topic. */
export const CHANNEL_EVENTS = Object.freeze({
  close: "phx_close",
  error: "phx_error",
  join: "phx_join",
  reply: "phx_reply",
  leave: "phx_leave",
} as const)

/** Path segments appended to the endpoint for each transport. */
export const TRANSPORTS = Object.freeze({longpoll: "longpoll", websocket: "websocket"} as const)

/** `XMLHttpRequest.readyState` once the response is complete. */
export const XHR_DONE = 4

/** The bearer token travels as a WebSocket sub-protocol with this prefix. */
export const AUTH_TOKEN_PREFIX = "base64url.bearer.phx."

/** The server reads at most this many ndjson lines per long-poll POST. */
export const MAX_LONGPOLL_BATCH = 100

/** Reconnect delays (ms) for attempts 1, 2, ...; the last repeats forever. */
export const RECONNECT_SCHEDULE: readonly number[] = Object.freeze([10, 50, 100, 150, 200, 250, 500, 1000, 2000, 5000])

/** Rejoin delays (ms) for attempts 1, 2, ...; the last repeats forever. */
export const REJOIN_SCHEDULE: readonly number[] = Object.freeze([1000, 2000, 5000, 10000])

/**
 * A handle returned by `setTimeout`: a number in browsers, an object in Node. Spelt out rather
 * than `ReturnType<typeof setTimeout>` so that the declarations need neither DOM nor Node types.
 */
export type TimerHandle = number | object

/** `clearTimeout` that also takes the `null` the client keeps for "no timer". */
export const clearTimer = (handle: TimerHandle | null | undefined): void => {
  if (handle != null) clearTimeout(handle as ReturnType<typeof setTimeout>)
}

/**
 * What the client reads from the global object. Each member may be missing (Node, workers,
 * server rendering), so each is looked up when it is used, never when a module loads.
 */
export interface GlobalScope {
  WebSocket?: TransportConstructor
  XMLHttpRequest?: new () => XMLHttpRequest
  XDomainRequest?: new () => XDomainRequestLike
  fetch?: typeof fetch
  AbortController?: typeof AbortController
  CloseEvent?: new (type: string, init: TransportCloseEvent) => TransportCloseEvent
  sessionStorage?: SessionStore
  location?: {protocol: string; host: string}
  window?: {addEventListener?: (type: string, listener: () => void) => void}
  document?: {visibilityState: string}
  console?: {log(...data: unknown[]): void}
}

/** Old Internet Explorer's cross-origin request object. */
export interface XDomainRequestLike {
  timeout: number
  responseText: string
  onload: () => void
  onerror: () => void
  ontimeout: () => void
  onprogress: () => void
  open(method: string, url: string): void
  send(body?: string | null): void
  abort(): void
}

/**
 * The global object of the page or worker (or Node). Only `typeof` is applied to `self` and
 * `window`, which never throws, so this is safe where neither exists.
 */
export const globalScope: GlobalScope = (typeof self !== "undefined"
  ? self
  : typeof window !== "undefined"
    ? window
    : globalThis) as unknown as GlobalScope

/** A value, or a function returning it that is called again each time the value is needed. */
export type ValueOrThunk<T> = T | (() => T)

/** Options and params may be a value or a thunk; normalise both to a thunk. */
export const closure = <T>(value: ValueOrThunk<T>): (() => T) =>
  typeof value === "function" ? (value as () => T) : () => value

/** Delay for a 1-based attempt number: the schedule's entry, or its last one. */
export const scheduleDelay = (schedule: readonly number[], tries: number): number =>
  schedule[Math.min(Math.max(tries, 1), schedule.length) - 1]
