// LongPoll: a WebSocket look-alike over HTTP, used when WebSockets are blocked.
//
// The socket treats it like a WebSocket (readyState, send, close, on* handlers).
// Underneath, a GET loop receives messages and POSTs carry outgoing frames as
// ndjson batches. The server's logical status lives in the JSON body; the HTTP
// status is always 200.

import {Ajax} from "./ajax.mjs"
import {AUTH_TOKEN_PREFIX, MAX_LONGPOLL_BATCH, SOCKET_STATES, TRANSPORTS, globalScope} from "./constants"

const noop = () => {}

const arrayBufferToBase64 = buffer => {
  const bytes = new Uint8Array(buffer)
  let binary = ""
  for (let i = 0; i < bytes.length; i++) binary += String.fromCharCode(bytes[i])
  return btoa(binary)
}

// The server sends a binary frame (V2) over long-poll as base64 text; JSON frames start with
// "[" (V2) or "{" (V1). phoenix.js hands the base64 to the JSON decoder, which throws; we give
// the serializer the ArrayBuffer a WebSocket would have delivered.
const decodeMessage = msg => {
  if (typeof msg !== "string" || msg === "" || msg[0] === "[" || msg[0] === "{") return msg
  let binary
  try {
    binary = atob(msg)
  } catch {
    return msg
  }
  const bytes = new Uint8Array(binary.length)
  for (let i = 0; i < binary.length; i++) bytes[i] = binary.charCodeAt(i)
  return bytes.buffer
}

export class LongPoll {
  /**
   * @param {string} endPoint the socket URL (ws:// or wss://, path ending in /websocket)
   * @param {string[]} [protocols] WebSocket sub-protocols; carries the auth token
   */
  constructor(endPoint, protocols) {
    // The socket puts the auth token in a sub-protocol; HTTP sends it as a header.
    if (
      Array.isArray(protocols) &&
      protocols.length === 2 &&
      protocols[0] === "phoenix" &&
      typeof protocols[1] === "string" &&
      protocols[1].startsWith(AUTH_TOKEN_PREFIX)
    ) {
      this.authToken = atob(protocols[1].slice(AUTH_TOKEN_PREFIX.length))
    }
    this.endPoint = null
    this.token = null
    this.skipHeartbeat = true
    this.reqs = new Set()
    this.awaitingBatchAck = false
    this.currentBatch = null
    this.currentBatchTimer = null
    this.batchBuffer = []
    this.onopen = noop
    this.onerror = noop
    this.onmessage = noop
    this.onclose = noop
    this.pollEndpoint = this.normalizeEndpoint(endPoint)
    this.readyState = SOCKET_STATES.connecting
    // Deferred so the caller can attach its handlers first, as with a WebSocket.
    setTimeout(() => this.poll(), 0)
  }

  normalizeEndpoint(endPoint) {
    let url = endPoint.replace(/^ws:\/\//, "http://").replace(/^wss:\/\//, "https://")
    const segment = `/${TRANSPORTS.websocket}`
    const at = url.lastIndexOf(segment)
    if (at !== -1) url = `${url.slice(0, at)}/${TRANSPORTS.longpoll}${url.slice(at + segment.length)}`
    return url
  }

  endpointURL() {
    return Ajax.appendParams(this.pollEndpoint, {token: this.token})
  }

  closeAndRetry(code, reason, wasClean) {
    this.close(code, reason, wasClean)
    // The socket's reconnect timer does the retry; this only marks the intent.
    this.readyState = SOCKET_STATES.connecting
  }

  ontimeout() {
    this.onerror("timeout")
    this.closeAndRetry(1005, "timeout", false)
  }

  isActive() {
    return this.readyState === SOCKET_STATES.open || this.readyState === SOCKET_STATES.connecting
  }

  headers(extra) {
    const headers = {...extra}
    if (this.authToken) headers["X-Phoenix-AuthToken"] = this.authToken
    return headers
  }

  poll() {
    this.ajax("GET", this.headers({Accept: "application/json"}), null, () => this.ontimeout(), resp => {
      const status = resp ? resp.status : 0
      if (status === 410 && this.token !== null) {
        // We had a session and the server no longer knows it.
        this.onerror(410)
        this.closeAndRetry(3410, "session_gone", false)
        return
      }
      if (resp) this.token = resp.token
      switch (status) {
        case 200:
          // One macrotask per message, like WebSocket message events.
          for (const msg of resp.messages || []) {
            setTimeout(() => this.onmessage({data: decodeMessage(msg)}), 0)
          }
          this.poll()
          break
        case 204:
          this.poll()
          break
        case 410:
          this.readyState = SOCKET_STATES.open
          this.onopen({})
          this.poll()
          break
        case 403:
          this.onerror(403)
          this.close(1008, "forbidden", false)
          break
        case 0:
        case 500:
          this.onerror(500)
          this.closeAndRetry(1011, "internal server error", 500)
          break
        default:
          throw new Error(`unhandled poll status ${status}`)
      }
    })
  }

  /** Queues one encoded frame; frames sent in the same tick go out in one POST. */
  send(body) {
    const line = typeof body === "string" ? body : arrayBufferToBase64(body)
    if (this.currentBatch) {
      this.currentBatch.push(line)
    } else if (this.awaitingBatchAck) {
      this.batchBuffer.push(line)
    } else {
      this.currentBatch = [line]
      this.currentBatchTimer = setTimeout(() => {
        const batch = this.currentBatch
        this.currentBatch = null
        this.currentBatchTimer = null
        this.batchSend(batch)
      }, 0)
    }
  }

  // POSTs `messages` in chunks of at most MAX_LONGPOLL_BATCH lines, one chunk
  // after the other's ack, then whatever was queued meanwhile.
  batchSend(messages, offset = 0) {
    this.awaitingBatchAck = true
    const chunk = messages.slice(offset, offset + MAX_LONGPOLL_BATCH)
    // The auth token only matters when the session starts (the GET); POSTs
    // are authorised by the session token, as with phoenix.
    const headers = {"Content-Type": "application/x-ndjson"}
    this.ajax("POST", headers, chunk.join("\n"), () => this.ontimeout(), resp => {
      if (!resp || resp.status !== 200) {
        this.awaitingBatchAck = false
        this.onerror(resp && resp.status)
        this.closeAndRetry(1011, "internal server error", false)
        return
      }
      const next = offset + MAX_LONGPOLL_BATCH
      if (next < messages.length) {
        this.batchSend(messages, next)
        return
      }
      this.awaitingBatchAck = false
      if (this.batchBuffer.length > 0) {
        const queued = this.batchBuffer
        this.batchBuffer = []
        this.batchSend(queued)
      }
    })
  }

  close(code, reason, wasClean) {
    for (const req of this.reqs) req.abort()
    this.reqs.clear()
    this.readyState = SOCKET_STATES.closed
    // Explicitly passed undefineds override the defaults: `close()` reports code undefined.
    const opts = Object.assign({code: 1000, reason: undefined, wasClean: true}, {code, reason, wasClean})
    this.batchBuffer = []
    clearTimeout(this.currentBatchTimer)
    this.currentBatchTimer = null
    this.currentBatch = null
    this.awaitingBatchAck = false
    if (typeof globalScope.CloseEvent === "function") {
      this.onclose(new globalScope.CloseEvent("close", opts))
    } else {
      this.onclose(opts)
    }
  }

  ajax(method, headers, body, onCallerTimeout, callback) {
    let req = null
    // A request aborted by close() must not report back; only live ones do.
    const ontimeout = () => {
      if (!this.reqs.has(req)) return
      this.reqs.delete(req)
      onCallerTimeout()
    }
    req = Ajax.request(method, this.endpointURL(), headers, body, this.timeout, ontimeout, resp => {
      if (!this.reqs.has(req)) return
      this.reqs.delete(req)
      if (this.isActive()) callback(resp)
    })
    this.reqs.add(req)
  }
}
