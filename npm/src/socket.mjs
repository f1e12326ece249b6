// Socket: one connection to a channels endpoint, multiplexing many Channels.
//
// Owns the transport (WebSocket, or LongPoll as fallback), reconnection with
// backoff, heartbeats, the send buffer used while disconnected, the ref counter
// shared by messages and callback registrations, and routing of incoming
// messages to the channels whose topic (and join ref) they belong to.

import {Channel} from "./channel.mjs"
import {
  AUTH_TOKEN_PREFIX,
  DEFAULT_HEARTBEAT_INTERVAL_MS,
  DEFAULT_LONGPOLLER_TIMEOUT,
  DEFAULT_TIMEOUT,
  DEFAULT_VSN,
  RECONNECT_SCHEDULE,
  REJOIN_SCHEDULE,
  SOCKET_STATES,
  TRANSPORTS,
  WS_CLOSE_NORMAL,
  closure,
  globalScope,
  scheduleDelay,
} from "./constants"
import {Ajax} from "./ajax"
import {LongPoll} from "./longpoll"
import {Serializer} from "./serializer"
import {Timer} from "./timer"

const noop = () => {}

// Bounded polling used while tearing a connection down: 150 ms, 300 ms, ...
const TEARDOWN_POLL_STEP_MS = 150
const TEARDOWN_MAX_TRIES = 5

const detachHandlers = conn => {
  conn.onopen = noop
  conn.onerror = noop
  conn.onmessage = noop
  conn.onclose = noop
}

export class Socket {
  /**
   * @param {string} endPoint e.g. "/socket", "//host/socket" or "wss://host/socket"
   * @param {object} [opts] see the README and index.d.ts
   */
  constructor(endPoint, opts = {}) {
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
        this.log("Not reconnecting as page is hidden!")
        this.teardown()
        return
      }
      this.teardown(() => this.connect())
    }, this.reconnectAfterMs)
    this.authToken = opts.authToken ? closure(opts.authToken) : undefined
  }

  // Browsers only: disconnect while the page is in the back/forward cache and
  // reconnect at once when a hidden tab becomes visible again.
  installPageLifecycle() {
    const win = globalScope.window
    if (!win || typeof win.addEventListener !== "function") return
    let pageHideClock = null
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

  getLongPollTransport() {
    return LongPoll
  }

  /** Closes the current connection and switches to `newTransport` for the next connect. */
  replaceTransport(newTransport) {
    this.connectClock++
    this.closeWasClean = true
    clearTimeout(this.fallbackTimer)
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

  protocol() {
    return globalScope.location && /^https/.test(globalScope.location.protocol) ? "wss" : "ws"
  }

  endPointURL() {
    const uri = Ajax.appendParams(Ajax.appendParams(this.endPoint, this.params()), {vsn: this.vsn})
    if (uri.charAt(0) !== "/") return uri
    if (uri.charAt(1) === "/") return `${this.protocol()}:${uri}`
    return `${this.protocol()}://${globalScope.location.host}${uri}`
  }

  /** Closes the connection without reconnecting; `callback` runs once it is closed. */
  disconnect(callback, code, reason) {
    this.connectClock++
    this.disconnecting = true
    this.closeWasClean = true
    clearTimeout(this.fallbackTimer)
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
  connect(params) {
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

  log(kind, msg, data) {
    if (this.logger) this.logger(kind, msg, data)
  }

  hasLogger() {
    return this.logger !== null
  }

  /** Registers `callback()` for every connection open. Returns a ref for `off`. */
  onOpen(callback) {
    const ref = this.makeRef()
    this.stateChangeCallbacks.open.push([ref, callback])
    return ref
  }

  /** Registers `callback(event)` for every connection close. Returns a ref for `off`. */
  onClose(callback) {
    const ref = this.makeRef()
    this.stateChangeCallbacks.close.push([ref, callback])
    return ref
  }

  /** Registers `callback(error, transport, establishedConnections)`. Returns a ref for `off`. */
  onError(callback) {
    const ref = this.makeRef()
    this.stateChangeCallbacks.error.push([ref, callback])
    return ref
  }

  /** Registers `callback(message)` for every decoded incoming message. Returns a ref for `off`. */
  onMessage(callback) {
    const ref = this.makeRef()
    this.stateChangeCallbacks.message.push([ref, callback])
    return ref
  }

  /** Measures a round trip with a heartbeat; `callback(ms)`. False when not connected. */
  ping(callback) {
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

  transportName(transport) {
    return transport === LongPoll ? "LongPoll" : transport.name
  }

  transportConnect() {
    this.connectClock++
    this.closeWasClean = false
    let protocols
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
    conn.onerror = error => {
      if (this.conn === conn) this.onConnError(error)
    }
    conn.onmessage = event => {
      if (this.conn === conn) this.onConnMessage(event)
    }
    conn.onclose = event => {
      if (this.conn === conn) this.onConnClose(event)
    }
  }

  getSession(key) {
    return this.sessionStore && this.sessionStore.getItem(key)
  }

  storeSession(key, value) {
    if (this.sessionStore) this.sessionStore.setItem(key, value)
  }

  // Connects with the primary transport and switches to `fallbackTransport` when
  // the primary fails before it is established, or when it cannot open and
  // answer a ping within `fallbackThreshold` ms. A fallback that then works is
  // remembered for the browser session.
  connectWithFallback(fallbackTransport, fallbackThreshold = 2500) {
    clearTimeout(this.fallbackTimer)
    const memoKey = `phx:fallback:${this.transportName(fallbackTransport)}`
    let established = false
    let primaryTransport = true

    const fallback = reason => {
      this.log("transport", `falling back to ${this.transportName(fallbackTransport)}...`, reason)
      primaryTransport = false
      this.replaceTransport(fallbackTransport)
      this.transportConnect()
    }

    if (this.getSession(memoKey)) return fallback("memorized")

    this.fallbackTimer = setTimeout(fallback, fallbackThreshold)

    if (this.fallbackErrorRef) this.off([this.fallbackErrorRef])
    this.fallbackErrorRef = this.onError(reason => {
      this.log("transport", "error", reason)
      if (primaryTransport && !established) {
        clearTimeout(this.fallbackTimer)
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
      clearTimeout(this.fallbackTimer)
      this.fallbackTimer = setTimeout(fallback, fallbackThreshold)
      this.ping(rtt => {
        this.log("transport", "connected to primary after", rtt)
        this.primaryPassedHealthCheck = true
        clearTimeout(this.fallbackTimer)
      })
    })
    this.transportConnect()
  }

  clearHeartbeats() {
    clearTimeout(this.heartbeatTimer)
    clearTimeout(this.heartbeatTimeoutTimer)
  }

  onConnOpen() {
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

  heartbeatTimeout() {
    if (!this.pendingHeartbeatRef) return
    this.pendingHeartbeatRef = null
    if (this.hasLogger()) this.log("transport", "heartbeat timeout. Attempting to re-establish connection")
    this.triggerChanError("heartbeat_timeout")
    this.closeWasClean = false
    this.teardown(() => this.reconnectTimer.scheduleTimeout(), WS_CLOSE_NORMAL, "heartbeat timeout")
  }

  resetHeartbeat() {
    if (this.conn && this.conn.skipHeartbeat) return
    this.pendingHeartbeatRef = null
    this.clearHeartbeats()
    this.heartbeatTimer = setTimeout(() => this.sendHeartbeat(), this.heartbeatIntervalMs)
  }

  // Closes the current connection (after its send buffer drained), then runs
  // `callback`, unless another connect/disconnect happened in the meantime.
  teardown(callback, code, reason) {
    const conn = this.conn
    if (!conn) return callback && callback()
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

  waitForBufferDone(conn, callback, tries = 1) {
    if (tries === TEARDOWN_MAX_TRIES || !conn.bufferedAmount) {
      callback()
      return
    }
    setTimeout(() => this.waitForBufferDone(conn, callback, tries + 1), TEARDOWN_POLL_STEP_MS * tries)
  }

  waitForSocketClosed(conn, callback, tries = 1) {
    if (tries === TEARDOWN_MAX_TRIES || conn.readyState === SOCKET_STATES.closed) {
      callback()
      return
    }
    setTimeout(() => this.waitForSocketClosed(conn, callback, tries + 1), TEARDOWN_POLL_STEP_MS * tries)
  }

  onConnClose(event) {
    const closeCode = event && event.code
    if (this.hasLogger()) this.log("transport", "close", event)
    if (this.conn) this.conn.onclose = noop
    this.triggerChanError("connection_closed")
    this.clearHeartbeats()
    if (!this.closeWasClean && closeCode !== WS_CLOSE_NORMAL) this.reconnectTimer.scheduleTimeout()
    for (const [, callback] of this.stateChangeCallbacks.close.slice()) callback(event)
  }

  onConnError(error) {
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

  triggerChanError(reason) {
    for (const channel of this.channels.slice()) {
      if (!(channel.isErrored() || channel.isLeaving() || channel.isClosed())) {
        channel.trigger("phx_error", {source: "transport", reason})
      }
    }
  }

  /** "connecting" | "open" | "closing" | "closed" */
  connectionState() {
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

  isConnected() {
    return this.connectionState() === "open"
  }

  remove(channel) {
    this.off(channel.stateChangeRefs)
    this.channels = this.channels.filter(c => c !== channel)
  }

  /** Removes the open/close/error/message callbacks with these refs. */
  off(refs) {
    for (const key of Object.keys(this.stateChangeCallbacks)) {
      this.stateChangeCallbacks[key] = this.stateChangeCallbacks[key].filter(([ref]) => !refs.includes(ref))
    }
  }

  /** Creates a Channel for `topic`; call `join()` on it. */
  channel(topic, chanParams = {}) {
    const channel = new Channel(topic, chanParams, this)
    this.channels.push(channel)
    return channel
  }

  /** Sends (or buffers until connected) one message `{topic, event, payload, ref, join_ref}`. */
  push(data) {
    if (this.hasLogger()) {
      const {topic, event, payload, ref, join_ref} = data
      this.log("push", `${topic} ${event} (${join_ref}, ${ref})`, payload)
    }
    if (this.isConnected()) {
      this.encode(data, result => this.conn.send(result))
    } else {
      this.sendBuffer.push(() => this.encode(data, result => this.conn.send(result)))
    }
  }

  /** Next ref as a decimal string; messages and callback registrations share the counter. */
  makeRef() {
    const next = this.ref + 1
    this.ref = next === this.ref ? 0 : next
    return this.ref.toString()
  }

  sendHeartbeat() {
    if (this.pendingHeartbeatRef && !this.isConnected()) return
    this.pendingHeartbeatRef = this.makeRef()
    this.push({topic: "phoenix", event: "heartbeat", payload: {}, ref: this.pendingHeartbeatRef})
    this.heartbeatTimeoutTimer = setTimeout(() => this.heartbeatTimeout(), this.heartbeatIntervalMs)
  }

  flushSendBuffer() {
    if (this.isConnected() && this.sendBuffer.length > 0) {
      const buffered = this.sendBuffer
      this.sendBuffer = []
      for (const send of buffered) send()
    }
  }

  onConnMessage(rawMessage) {
    this.decode(rawMessage.data, msg => {
      const {topic, event, payload, ref, join_ref} = msg
      if (ref != null && ref === this.pendingHeartbeatRef) {
        this.clearHeartbeats()
        this.pendingHeartbeatRef = null
        this.heartbeatTimer = setTimeout(() => this.sendHeartbeat(), this.heartbeatIntervalMs)
      }
      if (this.hasLogger()) {
        const status = (payload && payload.status) || ""
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
  leaveOpenTopic(topic) {
    const duplicate = this.channels.find(c => c.topic === topic && (c.isJoined() || c.isJoining()))
    if (duplicate) {
      if (this.hasLogger()) this.log("transport", `leaving duplicate topic "${topic}"`)
      duplicate.leave()
    }
  }
}
