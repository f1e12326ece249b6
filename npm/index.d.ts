// Type declarations for the npm package `rollcall`: the phoenix client API
// (Socket, Channel, Push, Serializer, LongPoll, Presence).

/** A value or a function returning it; functions are re-evaluated on every (re)connect or (re)join. */
export type ValueOrThunk<T> = T | (() => T)

/** Reply status of a push. */
export type PushStatus = "ok" | "error" | "timeout"

/** Channel states. */
export type ChannelState = "closed" | "errored" | "joined" | "joining" | "leaving"

/** Socket connection states, as named by `Socket.connectionState()`. */
export type ConnectionState = "connecting" | "open" | "closing" | "closed"

/** One protocol message. Refs are decimal strings, or null. */
export interface Message<T = any> {
  join_ref: string | null | undefined
  ref: string | null | undefined
  topic: string
  event: string
  payload: T
}

/** A WebSocket-like class: the browser's WebSocket, the `ws` package's, or LongPoll. */
export interface TransportConstructor {
  new (url: string, protocols?: string | string[]): any
  readonly name?: string
}

/** A Storage-like object (sessionStorage) used to remember a long-poll fallback. */
export interface SessionStore {
  getItem(key: string): string | null
  setItem(key: string, value: string): void
}

export type Encoder = (msg: Message, callback: (encoded: string | ArrayBuffer) => any) => any
export type Decoder = (raw: string | ArrayBuffer, callback: (msg: Message) => any) => any

export interface SocketConnectOption {
  /** WebSocket implementation; defaults to the global WebSocket, else LongPoll. In Node pass e.g. `WebSocket` from `ws`. */
  transport?: TransportConstructor
  /** When set, fall back to long-poll if the WebSocket fails or is not healthy within this many ms (2500 is typical). */
  longPollFallbackMs?: number
  /** Push and join timeout in ms (default 10000). */
  timeout?: number
  /** Interval between heartbeats in ms (default 30000). */
  heartbeatIntervalMs?: number
  /** Delay before reconnect attempt `tries` (1-based). Default 10, 50, 100, 150, 200, 250, 500, 1000, 2000, then 5000 ms. */
  reconnectAfterMs?: (tries: number) => number
  /** Delay before rejoin attempt `tries` (1-based). Default 1000, 2000, 5000, then 10000 ms. */
  rejoinAfterMs?: (tries: number) => number
  /** Called with (kind, message, data) for every log line. */
  logger?: (kind: string, msg: string, data: any) => void
  /** Installs a console logger when no `logger` is given. */
  debug?: boolean
  /** Timeout of one long-poll HTTP request in ms (default 20000). */
  longpollerTimeout?: number
  /** Connect params, sent as the query string. */
  params?: ValueOrThunk<object>
  /** Bearer token sent as a WebSocket sub-protocol (long-poll: as a header). */
  authToken?: ValueOrThunk<string>
  /** Protocol version (default "2.0.0"). */
  vsn?: string
  /** WebSocket binaryType (default "arraybuffer"). */
  binaryType?: string
  /** Where a long-poll fallback is remembered (default: the global sessionStorage). */
  sessionStorage?: SessionStore
  /** Custom message encoder (WebSocket only). */
  encode?: Encoder
  /** Custom message decoder (WebSocket only). */
  decode?: Decoder
}

export declare class Socket {
  constructor(endPoint: string, opts?: SocketConnectOption)

  /** Full URL of the connection, with params and vsn. */
  endPointURL(): string
  protocol(): "ws" | "wss"

  connect(params?: object): void
  disconnect(callback?: () => void, code?: number, reason?: string): void
  connectionState(): ConnectionState
  isConnected(): boolean

  /** Creates a channel for `topic`; call `join()` on it. */
  channel(topic: string, chanParams?: ValueOrThunk<object>): Channel
  remove(channel: Channel): void

  /** Sends one message, or buffers it until connected. */
  push(data: Message): void
  /** Next ref; message refs and callback refs share this counter. */
  makeRef(): string
  /** Measures a round trip; false when not connected. */
  ping(callback: (latencyMs: number) => void): boolean

  onOpen(callback: () => void): string
  onClose(callback: (event: any) => void): string
  onError(callback: (error: any, transport: TransportConstructor, establishedConnections: number) => void): string
  onMessage(callback: (message: Message) => void): string
  /** Removes the open/close/error/message callbacks with these refs. */
  off(refs: string[]): void

  log(kind: string, msg: string, data?: any): void
  hasLogger(): boolean
  getLongPollTransport(): typeof LongPoll
  replaceTransport(newTransport: TransportConstructor): void
  transportName(transport: TransportConstructor): string
  leaveOpenTopic(topic: string): void

  channels: Channel[]
  sendBuffer: Array<() => void>
  ref: number
  timeout: number
  transport: TransportConstructor
  conn: any
  endPoint: string
  params: () => object
  vsn: string
  heartbeatIntervalMs: number
  pendingHeartbeatRef: string | null
  closeWasClean: boolean
  establishedConnections: number
  primaryPassedHealthCheck: boolean
  longPollFallbackMs: number | undefined
  longpollerTimeout: number
  binaryType: string
  authToken: (() => string) | undefined
  reconnectAfterMs: (tries: number) => number
  rejoinAfterMs: (tries: number) => number
  encode: Encoder
  decode: Decoder
}

export declare class Channel {
  constructor(topic: string, params: ValueOrThunk<object> | undefined, socket: Socket)

  /** Joins the topic; may be called once per channel. */
  join(timeout?: number): Push
  /** Leaves the topic; the channel closes at once. */
  leave(timeout?: number): Push
  /** Sends `event`; buffered until the channel is joined. */
  push(event: string, payload?: object | ArrayBuffer, timeout?: number): Push

  /** Binds a callback to `event`; returns the binding ref for `off`. */
  on(event: string, callback: (payload: any, ref: string | null | undefined, joinRef: string | null | undefined) => void): number
  /** Unbinds `event`: only binding `ref` when given, else all. */
  off(event: string, ref?: number): void
  onClose(callback: (reason: any) => void): number
  onError(callback: (reason: any) => void): number
  /** Overridable hook to inspect or rewrite incoming payloads; must return the payload. */
  onMessage(event: string, payload: any, ref: string | null | undefined): any

  joinRef(): string | null | undefined
  canPush(): boolean
  isMember(topic: string, event: string, payload: any, joinRef: string | null | undefined): boolean
  isClosed(): boolean
  isErrored(): boolean
  isJoined(): boolean
  isJoining(): boolean
  isLeaving(): boolean

  state: ChannelState
  topic: string
  params: () => object
  socket: Socket
  timeout: number
  joinedOnce: boolean
  joinPush: Push
}

export declare class Push {
  constructor(channel: Channel, event: string, payload: () => object | ArrayBuffer, timeout: number)

  /** Runs `callback(response)` when the reply has this status; chainable. */
  receive(status: PushStatus | string, callback: (response?: any) => any): this
  send(): void
  resend(timeout: number): void

  channel: Channel
  event: string
  ref: string | null | undefined
  timeout: number
  sent: boolean
}

/** The V2 serializer: JSON arrays for text frames, a binary layout for ArrayBuffer payloads. */
export declare const Serializer: {
  readonly HEADER_LENGTH: 1
  readonly META_LENGTH: 4
  readonly KINDS: {readonly push: 0; readonly reply: 1; readonly broadcast: 2}
  encode<R>(msg: Message, callback: (encoded: string | ArrayBuffer) => R): R
  decode<R>(raw: string | ArrayBuffer, callback: (msg: Message) => R): R
  binaryEncode(msg: Message<ArrayBuffer>): ArrayBuffer
  binaryDecode(buffer: ArrayBuffer): Message | undefined
}

/** WebSocket look-alike over HTTP long-polling. */
export declare class LongPoll {
  constructor(endPoint: string, protocols?: string[])
  send(body: string | ArrayBuffer): void
  close(code?: number, reason?: string, wasClean?: boolean): void
  readyState: number
  timeout: number
  skipHeartbeat: boolean
  pollEndpoint: string
  onopen: (event: object) => void
  onerror: (error: any) => void
  onmessage: (event: {data: string}) => void
  onclose: (event: {code?: number; reason?: string; wasClean?: boolean}) => void
}

/** One meta of a presence; `phx_ref` identifies it. */
export interface PresenceMeta {
  phx_ref: string
  phx_ref_prev?: string
  [key: string]: any
}

/** A presence: its metas (one per connection/device) plus app-level fields. */
export interface PresenceEntry {
  metas: PresenceMeta[]
  [key: string]: any
}

export type PresenceState = Record<string, PresenceEntry>

export interface PresenceDiff {
  joins: PresenceState
  leaves: PresenceState
}

export type PresenceOnJoin = (key: string, current: PresenceEntry | undefined, joined: PresenceEntry) => void
export type PresenceOnLeave = (key: string, current: PresenceEntry, left: PresenceEntry) => void

export interface PresenceOpts {
  events?: {state: string; diff: string}
}

export declare class Presence {
  constructor(channel: Channel, opts?: PresenceOpts)
  onJoin(callback: PresenceOnJoin): void
  onLeave(callback: PresenceOnLeave): void
  onSync(callback: () => void): void
  list<T = PresenceEntry>(chooser?: (key: string, presence: PresenceEntry) => T): T[]
  inPendingSyncState(): boolean

  static syncState(
    currentState: PresenceState,
    newState: PresenceState,
    onJoin?: PresenceOnJoin,
    onLeave?: PresenceOnLeave,
  ): PresenceState
  static syncDiff(state: PresenceState, diff: PresenceDiff, onJoin?: PresenceOnJoin, onLeave?: PresenceOnLeave): PresenceState
  static list<T = PresenceEntry>(presences: PresenceState, chooser?: (key: string, presence: PresenceEntry) => T): T[]
}
