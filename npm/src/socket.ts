// Socket: one connection to a channels endpoint, multiplexing many Channels.
//
// Owns the transport (WebSocket, or LongPoll as fallback), reconnection with
// backoff, heartbeats, the send buffer used while disconnected, the ref counter
// shared by messages and callback registrations, and routing of incoming
// messages to the channels whose topic (and join ref) they belong to.
import {Ajax} from "./ajax"
import {Channel} from "./channel"
import {
  AUTH_TOKEN_PREFIX,
  clearTimer,
  closure,
  DEFAULT_HEARTBEAT_INTERVAL_MS,
  DEFAULT_LONGPOLLER_TIMEOUT,
  DEFAULT_TIMEOUT,
  DEFAULT_VSN,
  globalScope,
  RECONNECT_SCHEDULE,
  REJOIN_SCHEDULE,
  SOCKET_STATES,
  scheduleDelay,
  type TimerHandle,
  TRANSPORTS,
  type ValueOrThunk,
  WS_CLOSE_NORMAL,
} from "./constants"
import {LongPoll} from "./longpoll"
import {type Decoder, type Encoder, type Message, Serializer} from "./serializer"
import {Timer} from "./timer"
import type {
  SessionStore,
  Transport,
  TransportCloseEvent,
  TransportConstructor,
  TransportMessageEvent,
} from "./transport"

/** Receives every log line: its kind ("transport", "channel", "push", "receive"), text and data. */
export type Logger = (kind: string, msg: string, data: unknown) => void

/** The state of a Socket's connection, as `connectionState()` names it. */
export type ConnectionState = "connecting" | "open" | "closing" | "closed"

export interface SocketConnectOption {
  /**
   * The WebSocket class; defaults to the global WebSocket, else LongPoll. In Node before 22
   * pass one, e.g. `WebSocket` from the `ws` package.
   */
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
  logger?: Logger
  /** Installs a console logger when no `logger` is given. */
  debug?: boolean
  /** Timeout of one long-poll HTTP request in ms (default 20000). */
  longpollerTimeout?: number
  /** Connect params, sent as the query string; a function is called on every connect. */
  params?: ValueOrThunk<object>
  /** Bearer token sent as a WebSocket sub-protocol (long-poll: as a header); a function is called on every connect. */
  authToken?: ValueOrThunk<string>
  /** Protocol version (default "2.0.0"). */
  vsn?: string
  /** The WebSocket's binaryType (default "arraybuffer"). */
  binaryType?: string
  /** Where a working long-poll fallback is remembered (default: the global sessionStorage). */
  sessionStorage?: SessionStore
  /** Custom message encoder (WebSocket only: LongPoll always uses the Serializer). */
  encode?: Encoder
  /** Custom message decoder (WebSocket only: LongPoll always uses the Serializer). */
  decode?: Decoder
}

/** Called with what the transport reported, the transport in use and how many connections had opened. */
export type SocketErrorCallback = (
  error: unknown,
  transport: TransportConstructor,
  establishedConnections: number,
) => void

/** The callbacks registered with onOpen, onClose, onError and onMessage, each with its ref. */
export interface StateChangeCallbacks {
  open: [ref: string, callback: () => void][]
  close: [ref: string, callback: (event: TransportCloseEvent) => void][]
  error: [ref: string, callback: SocketErrorCallback][]
  message: [ref: string, callback: (message: Message) => void][]
}

const noop = () => {}

// Bounded polling used while tearing a connection down: 150 ms, 300 ms, ...
const TEARDOWN_POLL_STEP_MS = 150
const TEARDOWN_MAX_TRIES = 5

const detachHandlers = (conn: Transport) => {
  conn.onopen = noop
  conn.onerror = noop
  conn.onmessage = noop
  conn.onclose = noop
}

/**
 * A connection to a Phoenix channels endpoint: `new Socket("/socket", opts)`, `connect()`, then
 * `channel(topic)` for each topic. It reconnects by itself until `disconnect()`.
 */
export class Socket {
  stateChangeCallbacks: StateChangeCallbacks
  channels: Channel[]
  /** Sends made while disconnected, run in order once connected. */
  sendBuffer: (() => void)[]
  /** The last ref handed out; messages and callback registrations share it. */
  ref: number
  fallbackRef: string | null
  fallbackErrorRef: string | null
  /** Default push and join timeout in ms. */
  timeout: number
  /** The transport class the next connection uses. */
  transport: TransportConstructor
  /** Whether the primary transport ever answered its health-check ping. */
  primaryPassedHealthCheck: boolean
  longPollFallbackMs: number | undefined
  fallbackTimer: TimerHandle | null
  sessionStore: SessionStore | undefined
  /** How many connections have opened. */
  establishedConnections: number
  defaultEncoder: Encoder
  defaultDecoder: Decoder
  closeWasClean: boolean
  disconnecting: boolean
  binaryType: string
  /** Bumped by every connect, disconnect and transport switch, so stale teardowns do nothing. */
  connectClock: number
  pageHidden: boolean
  encode: Encoder
  decode: Decoder
  heartbeatIntervalMs: number
  rejoinAfterMs: (tries: number) => number
  reconnectAfterMs: (tries: number) => number
  logger: Logger | null
  longpollerTimeout: number
  /** The connect params, called on every connect. */
  params: () => object
  /** The endpoint with `/websocket` appended. */
  endPoint: string
  vsn: string
  heartbeatTimeoutTimer: TimerHandle | null
  heartbeatTimer: TimerHandle | null
  /** The ref of the heartbeat awaiting its reply. */
  pendingHeartbeatRef: string | null
  reconnectTimer: Timer
  authToken: (() => string) | undefined
  /** The current connection; null (or undefined before the first connect) when there is none. */
  conn: Transport | null | undefined

  /**
   * @param endPoint e.g. "/socket", "//host/socket" or "wss://host/socket"
   */
  constructor(endPoint: string, opts: SocketConnectOption = {}) {
    this.stateChangeCallbacks = {open: [], close: [], error: [], message: []}
    this.channels = []
    this.sendBuffer = []
    this.ref = 0
    this.fallbackRef = null
    this.fallbackErrorRef = null
    this.timeout = opts.timeout || DEFAULT_TIMEOUT
    this.transport = opts.transport || globalScope.WebSocket || LongPoll
    this.primaryPassedHealthCheck = false
    this.longPollFallbackMs = opts.longPollFallbackMs
    this.fallbackTimer = null
    this.sessionStore = opts.sessionStorage || globalScope.sessionStorage
    this.establishedConnections = 0
    this.defaultEncoder = Serializer.encode.bind(Serializer)
    this.defaultDecoder = Serializer.decode.bind(Serializer)
    this.closeWasClean = true
    this.disconnecting = false
    this.binaryType = opts.binaryType || "arraybuffer"
    this.connectClock = 1
    this.pageHidden = false
    // LongPoll frames must be the standard encoding; custom codecs are for WebSockets.
    if (this.transport !== LongPoll) {
      this.encode = opts.encode || this.defaultEncoder
      this.decode = opts.decode || this.defaultDecoder
    } else {
      this.encode = this.defaultEncoder
      this.decode = this.defaultDecoder
    }
    this.installPageLifecycle()
    this.heartbeatIntervalMs = opts.heartbeatIntervalMs || DEFAULT_HEARTBEAT_INTERVAL_MS
    this.rejoinAfterMs = tries =>
      opts.rejoinAfterMs ? opts.rejoinAfterMs(tries) : scheduleDelay(REJOIN_SCHEDULE, tries)
    this.reconnectAfterMs = tries =>
      opts.reconnectAfterMs ? opts.reconnectAfterMs(tries) : scheduleDelay(RECONNECT_SCHEDULE, tries)
    this.logger = opts.logger || null
    if (!this.logger && opts.debug) {
      this.logger = (kind, msg, data) => console.log(`${kind}: ${msg}`, data)
    }
    this.longpollerTimeout = opts.longpollerTimeout || DEFAULT_LONGPOLLER_TIMEOUT
    this.params = closure(opts.params || {})
    this.endPoint = `${endPoint}/${TRANSPORTS.websocket}`
    this.vsn = opts.vsn || DEFAULT_VSN
    this.heartbeatTimeoutTimer = null
    this.heartbeatTimer = null
    this.pendingHeartbeatRef = null
    this.reconnectTimer = new Timer(() => {
      if (this.pageHidden) {
        this.log("transport", "not reconnecting as the page is hidden")
        this.teardown()
        return
      }
      this.teardown(() => this.connect())
    }, this.reconnectAfterMs)
    this.authToken = opts.authToken ? closure(opts.authToken) : undefined
  }

  // Browsers only: disconnect while the page is in the back/forward cache and
  // reconnect at once when a hidden tab becomes visible again.
  private installPageLifecycle(): void {
    const win = globalScope.window
    if (!win || typeof win.addEventListener !== "function") return
    let pageHideClock: number | null = null
    win.addEventListener("pagehide", () => {
      if (this.conn) {
        this.disconnect()
        pageHideClock = this.connectClock
      }
    })
    win.addEventListener("pageshow", () => {
      if (pageHideClock === this.connectClock) {
        pageHideClock = null
        this.connect()
      }
    })
    win.addEventListener("visibilitychange", () => {
      const doc = globalScope.document
      if (!doc) return
      if (doc.visibilityState === "hidden") {
        this.pageHidden = true
      } else {
        this.pageHidden = false
        if (!this.isConnected() && !this.closeWasClean) this.teardown(() => this.connect())
      }
    })
  }

  /** The LongPoll class, for `replaceTransport`. */
  getLongPollTransport(): typeof LongPoll {
    return LongPoll
  }

  /** Closes the current connection and switches to `newTransport` for the next connect. */
  replaceTransport(newTransport: TransportConstructor): void {
    this.connectClock++
    this.closeWasClean = true
    clearTimer(this.fallbackTimer)
    this.reconnectTimer.reset()
    const conn = this.conn
    if (conn) {
      this.conn = null
      detachHandlers(conn)
      conn.close()
      // The old connection's close is not reported; channels still need to
      // know they must rejoin over the new transport.
      this.clearHeartbeats()
      this.triggerChanError("connection_closed")
    }
    this.transport = newTransport
  }

  /** "wss" on an https page, else "ws". */
  protocol(): "ws" | "wss" {
    return globalScope.location && /^https/.test(globalScope.location.protocol) ? "wss" : "ws"
  }

  /** The full URL of the connection, with the params and vsn in its query. */
  endPointURL(): string {
    const uri = Ajax.appendParams(Ajax.appendParams(this.endPoint, this.params()), {vsn: this.vsn})
    if (uri.charAt(0) !== "/") return uri
    if (uri.charAt(1) === "/") return `${this.protocol()}:${uri}`
    const {location} = globalScope
    if (!location) {
      throw new Error(
        `the socket endpoint ${this.endPoint} is a path, which needs a page's location: give a full URL (ws://host/path) here`,
      )
    }
    return `${this.protocol()}://${location.host}${uri}`
  }

  /** Closes the connection without reconnecting; `callback` runs once it is closed. */
  disconnect(callback?: () => void, code?: number, reason?: string): void {
    this.connectClock++
    this.disconnecting = true
    this.closeWasClean = true
    clearTimer(this.fallbackTimer)
    this.reconnectTimer.reset()
    this.teardown(
      () => {
        this.disconnecting = false
        if (callback) callback()
      },
      code,
      reason,
    )
  }

  /** Opens the connection; a no-op while one exists. Passing params here is deprecated. */
  connect(params?: ValueOrThunk<object>): void {
    if (params) {
      if (globalScope.console) {
        globalScope.console.log(
          "passing params to connect is deprecated. Instead pass :params to the Socket constructor",
        )
      }
      this.params = closure(params)
    }
    if (this.conn && !this.disconnecting) return
    if (this.longPollFallbackMs && this.transport !== LongPoll) {
      this.connectWithFallback(LongPoll, this.longPollFallbackMs)
    } else {
      this.transportConnect()
    }
  }

  /** Passes a line to the logger, if there is one. */
  log(kind: string, msg: string, data?: unknown): void {
    if (this.logger) this.logger(kind, msg, data)
  }

  hasLogger(): boolean {
    return this.logger !== null
  }

  /** Registers `callback()` for every connection open. Returns a ref for `off`. */
  onOpen(callback: () => void): string {
    const ref = this.makeRef()
    this.stateChangeCallbacks.open.push([ref, callback])
    return ref
  }

  /** Registers `callback(event)` for every connection close. Returns a ref for `off`. */
  onClose(callback: (event: TransportCloseEvent) => void): string {
    const ref = this.makeRef()
    this.stateChangeCallbacks.close.push([ref, callback])
    return ref
  }

  /** Registers `callback(error, transport, establishedConnections)`. Returns a ref for `off`. */
  onError(callback: SocketErrorCallback): string {
    const ref = this.makeRef()
    this.stateChangeCallbacks.error.push([ref, callback])
    return ref
  }

  /** Registers `callback(message)` for every decoded incoming message. Returns a ref for `off`. */
  onMessage(callback: (message: Message) => void): string {
    const ref = this.makeRef()
    this.stateChangeCallbacks.message.push([ref, callback])
    return ref
  }

  /** Measures a round trip with a heartbeat; `callback(ms)`. False when not connected. */
  ping(callback: (latencyMs: number) => void): boolean {
    if (!this.isConnected()) return false
    const ref = this.makeRef()
    const startTime = Date.now()
    this.push({topic: "phoenix", event: "heartbeat", payload: {}, ref})
    const onMsgRef = this.onMessage(msg => {
      if (msg.ref === ref) {
        this.off([onMsgRef])
        callback(Date.now() - startTime)
      }
    })
    return true
  }

  /** The transport's class name; "LongPoll" for LongPoll even when minified. */
  transportName(transport: TransportConstructor): string {
    return transport === LongPoll ? "LongPoll" : transport.name
  }

  private transportConnect(): void {
    this.connectClock++
    this.closeWasClean = false
    let protocols: string[] | undefined
    if (this.authToken) {
      // Standard base64 without padding, despite the "base64url" in the prefix.
      const encoded = btoa(this.authToken()).replace(/=/g, "")
      protocols = ["phoenix", `${AUTH_TOKEN_PREFIX}${encoded}`]
    }
    const conn = new this.transport(this.endPointURL(), protocols)
    this.conn = conn
    conn.binaryType = this.binaryType
    conn.timeout = this.longpollerTimeout
    // Events from a connection that is no longer current are ignored.
    conn.onopen = () => {
      if (this.conn === conn) this.onConnOpen()
    }
    conn.onerror = (error: unknown) => {
      if (this.conn === conn) this.onConnError(error)
    }
    conn.onmessage = (event: TransportMessageEvent) => {
      if (this.conn === conn) this.onConnMessage(event)
    }
    conn.onclose = (event: TransportCloseEvent) => {
      if (this.conn === conn) this.onConnClose(event)
    }
  }

  private getSession(key: string): string | null | undefined {
    return this.sessionStore && this.sessionStore.getItem(key)
  }

  private storeSession(key: string, value: string): void {
    if (this.sessionStore) this.sessionStore.setItem(key, value)
  }

  // Connects with the primary transport and switches to `fallbackTransport` when
  // the primary fails before it is established, or when it cannot open and
  // answer a ping within `fallbackThreshold` ms. A fallback that then works is
  // remembered for the browser session.
  private connectWithFallback(fallbackTransport: TransportConstructor, fallbackThreshold = 2500): void {
    clearTimer(this.fallbackTimer)
    const memoKey = `phx:fallback:${this.transportName(fallbackTransport)}`
    let established = false
    let primaryTransport = true

    const fallback = (reason?: unknown) => {
      this.log("transport", `falling back to ${this.transportName(fallbackTransport)}...`, reason)
      primaryTransport = false
      this.replaceTransport(fallbackTransport)
      this.transportConnect()
    }

    if (this.getSession(memoKey)) {
      fallback("memorized")
      return
    }

    this.fallbackTimer = setTimeout(fallback, fallbackThreshold)

    if (this.fallbackErrorRef) this.off([this.fallbackErrorRef])
    this.fallbackErrorRef = this.onError(reason => {
      this.log("transport", "error", reason)
      if (primaryTransport && !established) {
        clearTimer(this.fallbackTimer)
        fallback(reason)
      }
    })
    if (this.fallbackRef) this.off([this.fallbackRef])
    this.fallbackRef = this.onOpen(() => {
      established = true
      if (!primaryTransport) {
        if (!this.primaryPassedHealthCheck) this.storeSession(memoKey, "true")
        this.log("transport", `established ${this.transportName(fallbackTransport)} fallback`)
        return
      }
      // Open is not enough (a proxy may accept the upgrade and then stall):
      // the primary must also answer a ping in time.
      clearTimer(this.fallbackTimer)
      this.fallbackTimer = setTimeout(fallback, fallbackThreshold)
      this.ping(rtt => {
        this.log("transport", "connected to primary after", rtt)
        this.primaryPassedHealthCheck = true
        clearTimer(this.fallbackTimer)
      })
    })
    this.transportConnect()
  }

  private clearHeartbeats(): void {
    clearTimer(this.heartbeatTimer)
    clearTimer(this.heartbeatTimeoutTimer)
  }

  private onConnOpen(): void {
    if (this.hasLogger()) {
      this.log("transport", `${this.transportName(this.transport)} connected to ${this.endPointURL()}`)
    }
    this.closeWasClean = false
    this.disconnecting = false
    this.establishedConnections++
    this.flushSendBuffer()
    this.reconnectTimer.reset()
    this.resetHeartbeat()
    for (const [, callback] of this.stateChangeCallbacks.open.slice()) callback()
  }

  private heartbeatTimeout(): void {
    if (!this.pendingHeartbeatRef) return
    this.pendingHeartbeatRef = null
    if (this.hasLogger()) this.log("transport", "heartbeat timeout. Attempting to re-establish connection")
    this.triggerChanError("heartbeat_timeout")
    this.closeWasClean = false
    this.teardown(() => this.reconnectTimer.scheduleTimeout(), WS_CLOSE_NORMAL, "heartbeat timeout")
  }

  private resetHeartbeat(): void {
    if (this.conn && this.conn.skipHeartbeat) return
    this.pendingHeartbeatRef = null
    this.clearHeartbeats()
    this.heartbeatTimer = setTimeout(() => this.sendHeartbeat(), this.heartbeatIntervalMs)
  }

  // Closes the current connection (after its send buffer drained), then runs
  // `callback`, unless another connect/disconnect happened in the meantime.
  private teardown(callback?: () => void, code?: number, reason?: string): void {
    const conn = this.conn
    if (!conn) {
      callback?.()
      return
    }
    const clock = this.connectClock
    this.waitForBufferDone(conn, () => {
      if (clock !== this.connectClock) return
      if (code) conn.close(code, reason || "")
      else conn.close()
      this.waitForSocketClosed(conn, () => {
        if (clock !== this.connectClock) return
        if (this.conn === conn) {
          detachHandlers(conn)
          this.conn = null
        }
        if (callback) callback()
      })
    })
  }

  private waitForBufferDone(conn: Transport, callback: () => void, tries = 1): void {
    if (tries === TEARDOWN_MAX_TRIES || !conn.bufferedAmount) {
      callback()
      return
    }
    setTimeout(() => this.waitForBufferDone(conn, callback, tries + 1), TEARDOWN_POLL_STEP_MS * tries)
  }

  private waitForSocketClosed(conn: Transport, callback: () => void, tries = 1): void {
    if (tries === TEARDOWN_MAX_TRIES || conn.readyState === SOCKET_STATES.closed) {
      callback()
      return
    }
    setTimeout(() => this.waitForSocketClosed(conn, callback, tries + 1), TEARDOWN_POLL_STEP_MS * tries)
  }

  private onConnClose(event: TransportCloseEvent): void {
    const closeCode = event && event.code
    if (this.hasLogger()) this.log("transport", "close", event)
    if (this.conn) this.conn.onclose = noop
    this.triggerChanError("connection_closed")
    this.clearHeartbeats()
    if (!this.closeWasClean && closeCode !== WS_CLOSE_NORMAL) this.reconnectTimer.scheduleTimeout()
    for (const [, callback] of this.stateChangeCallbacks.close.slice()) callback(event)
  }

  private onConnError(error: unknown): void {
    if (this.hasLogger()) this.log("transport", "error", error)
    const transportBefore = this.transport
    const establishedBefore = this.establishedConnections
    for (const [, callback] of this.stateChangeCallbacks.error.slice()) {
      callback(error, transportBefore, establishedBefore)
    }
    // A failure that made us switch transports before anything was established
    // is not an error the channels need to see.
    if (transportBefore === this.transport || establishedBefore > 0) {
      this.triggerChanError("connection_error")
    }
  }

  private triggerChanError(reason: string): void {
    for (const channel of this.channels.slice()) {
      if (!(channel.isErrored() || channel.isLeaving() || channel.isClosed())) {
        channel.trigger("phx_error", {source: "transport", reason})
      }
    }
  }

  /** "connecting" | "open" | "closing" | "closed" */
  connectionState(): ConnectionState {
    switch (this.conn && this.conn.readyState) {
      case SOCKET_STATES.connecting:
        return "connecting"
      case SOCKET_STATES.open:
        return "open"
      case SOCKET_STATES.closing:
        return "closing"
      default:
        return "closed"
    }
  }

  isConnected(): boolean {
    return this.connectionState() === "open"
  }

  /** Forgets a channel and the socket callbacks it registered. */
  remove(channel: Channel): void {
    this.off(channel.stateChangeRefs)
    this.channels = this.channels.filter(c => c !== channel)
  }

  /** Removes the open/close/error/message callbacks with these refs. */
  off(refs: string[]): void {
    const callbacks = this.stateChangeCallbacks
    callbacks.open = callbacks.open.filter(([ref]) => !refs.includes(ref))
    callbacks.close = callbacks.close.filter(([ref]) => !refs.includes(ref))
    callbacks.error = callbacks.error.filter(([ref]) => !refs.includes(ref))
    callbacks.message = callbacks.message.filter(([ref]) => !refs.includes(ref))
  }

  /** Creates a Channel for `topic`; call `join()` on it. */
  channel(topic: string, chanParams: ValueOrThunk<object> = {}): Channel {
    const channel = new Channel(topic, chanParams, this)
    this.channels.push(channel)
    return channel
  }

  /** Sends (or buffers until connected) one message `{topic, event, payload, ref, join_ref}`. */
  push(data: Message): void {
    if (this.hasLogger()) {
      const {topic, event, payload, ref, join_ref} = data
      this.log("push", `${topic} ${event} (${join_ref}, ${ref})`, payload)
    }
    if (this.isConnected()) {
      this.encode(data, result => this.conn?.send(result))
    } else {
      this.sendBuffer.push(() => this.encode(data, result => this.conn?.send(result)))
    }
  }

  /** Next ref as a decimal string; messages and callback registrations share the counter. */
  makeRef(): string {
    const next = this.ref + 1
    this.ref = next === this.ref ? 0 : next
    return this.ref.toString()
  }

  private sendHeartbeat(): void {
    if (this.pendingHeartbeatRef && !this.isConnected()) return
    this.pendingHeartbeatRef = this.makeRef()
    this.push({topic: "phoenix", event: "heartbeat", payload: {}, ref: this.pendingHeartbeatRef})
    this.heartbeatTimeoutTimer = setTimeout(() => this.heartbeatTimeout(), this.heartbeatIntervalMs)
  }

  private flushSendBuffer(): void {
    if (this.isConnected() && this.sendBuffer.length > 0) {
      const buffered = this.sendBuffer
      this.sendBuffer = []
      for (const send of buffered) send()
    }
  }

  private onConnMessage(rawMessage: TransportMessageEvent): void {
    this.decode(rawMessage.data, decoded => {
      // The default decoder gives undefined for a binary frame of an unknown kind.
      if (decoded === undefined) throw new Error("a frame from the server decoded to no message")
      const msg = decoded
      const {topic, event, payload, ref, join_ref} = msg
      if (ref != null && ref === this.pendingHeartbeatRef) {
        this.clearHeartbeats()
        this.pendingHeartbeatRef = null
        this.heartbeatTimer = setTimeout(() => this.sendHeartbeat(), this.heartbeatIntervalMs)
      }
      if (this.hasLogger()) {
        const status = (payload && (payload as {status?: string}).status) || ""
        this.log("receive", `${status} ${topic} ${event} ${(ref && `(${ref})`) || ""}`, payload)
      }
      for (const channel of this.channels.slice()) {
        if (channel.isMember(topic, event, payload, join_ref)) {
          channel.trigger(event, payload, ref, join_ref)
        }
      }
      for (const [, callback] of this.stateChangeCallbacks.message.slice()) callback(msg)
    })
  }

  /** Leaves another joined/joining channel on `topic`, so one topic has one live join. */
  leaveOpenTopic(topic: string): void {
    const duplicate = this.channels.find(c => c.topic === topic && (c.isJoined() || c.isJoining()))
    if (duplicate) {
      if (this.hasLogger()) this.log("transport", `leaving duplicate topic "${topic}"`)
      duplicate.leave()
    }
  }
}
