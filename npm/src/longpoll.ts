// LongPoll: a WebSocket look-alike over HTTP, used when WebSockets are blocked.
//
// The socket treats it like a WebSocket (readyState, send, close, on* handlers).
// Underneath, a GET loop receives messages and POSTs carry outgoing frames as
// ndjson batches. The server's logical status lives in the JSON body; the HTTP
// status is always 200.
import {Ajax, type RequestHandle} from "./ajax"
import {
  AUTH_TOKEN_PREFIX,
  clearTimer,
  globalScope,
  MAX_LONGPOLL_BATCH,
  SOCKET_STATES,
  type TimerHandle,
  TRANSPORTS,
} from "./constants"
import type {Frame} from "./serializer"
import type {Transport, TransportCloseEvent, TransportMessageEvent} from "./transport"

/**
 * What LongPoll reports to `onerror`: the server's logical status (403, 410, 500; a failed POST's
 * status, or null/undefined when it had none) or `"timeout"` when a request timed out.
 */
export type LongPollError = number | "timeout" | null | undefined

/** The JSON body of a long-poll response. */
interface PollResponse {
  status: number
  token: string | null
  messages?: string[]
}

const noop = () => {}

const arrayBufferToBase64 = (buffer: ArrayBuffer): string => {
  const bytes = new Uint8Array(buffer)
  let binary = ""
  for (let i = 0; i < bytes.length; i++) binary += String.fromCharCode(bytes[i])
  return btoa(binary)
}

// The server sends a binary frame (V2) over long-poll as base64 text; JSON frames start with
// "[" (V2) or "{" (V1). phoenix.js hands the base64 to the JSON decoder, which throws; we give
// the serializer the ArrayBuffer a WebSocket would have delivered.
const decodeMessage = (msg: string): Frame => {
  if (typeof msg !== "string" || msg === "" || msg[0] === "[" || msg[0] === "{") return msg
  let binary: string
  try {
    binary = atob(msg)
  } catch {
    return msg
  }
  const bytes = new Uint8Array(binary.length)
  for (let i = 0; i < binary.length; i++) bytes[i] = binary.charCodeAt(i)
  return bytes.buffer
}

/**
 * The long-poll transport. Pass it as the Socket's `transport`, or set `longPollFallbackMs` for
 * the Socket to switch to it when WebSockets fail.
 */
export class LongPoll implements Transport {
  /** The bearer token from the socket's sub-protocols, sent as `X-Phoenix-AuthToken`. */
  authToken?: string
  /** Always null: the URL in use is `pollEndpoint`. Kept because phoenix.js's LongPoll has it. */
  endPoint: null
  /** The session token the server handed out; null until the first response. */
  token: string | null
  /** Long-poll needs no heartbeats: every poll shows the connection is alive. */
  skipHeartbeat: boolean
  /** Requests in flight. */
  reqs: Set<RequestHandle>
  awaitingBatchAck: boolean
  currentBatch: string[] | null
  currentBatchTimer: TimerHandle | null
  batchBuffer: string[]
  onopen: (event: object) => void
  onerror: (error: LongPollError) => void
  onmessage: (event: TransportMessageEvent) => void
  onclose: (event: TransportCloseEvent) => void
  /** The HTTP(S) URL polled: the endpoint with `/websocket` replaced by `/longpoll`. */
  pollEndpoint: string
  /** `SOCKET_STATES`: connecting until the server opens a session. */
  readyState: number
  /** Timeout of each HTTP request in ms; the Socket sets it from `longpollerTimeout`. */
  timeout?: number

  /**
   * @param endPoint the socket URL (ws:// or wss://, path ending in /websocket)
   * @param protocols WebSocket sub-protocols; carries the auth token
   */
  constructor(endPoint: string, protocols?: string[]) {
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

  private normalizeEndpoint(endPoint: string): string {
    let url = endPoint.replace(/^ws:\/\//, "http://").replace(/^wss:\/\//, "https://")
    const segment = `/${TRANSPORTS.websocket}`
    const at = url.lastIndexOf(segment)
    if (at !== -1) url = `${url.slice(0, at)}/${TRANSPORTS.longpoll}${url.slice(at + segment.length)}`
    return url
  }

  private endpointURL(): string {
    return Ajax.appendParams(this.pollEndpoint, {token: this.token})
  }

  private closeAndRetry(code: number, reason: string, wasClean: boolean | number): void {
    this.close(code, reason, wasClean)
    // The socket's reconnect timer does the retry; this only marks the intent.
    this.readyState = SOCKET_STATES.connecting
  }

  private ontimeout(): void {
    this.onerror("timeout")
    this.closeAndRetry(1005, "timeout", false)
  }

  private isActive(): boolean {
    return this.readyState === SOCKET_STATES.open || this.readyState === SOCKET_STATES.connecting
  }

  private headers(extra: Record<string, string>): Record<string, string> {
    const headers = {...extra}
    if (this.authToken) headers["X-Phoenix-AuthToken"] = this.authToken
    return headers
  }

  private poll(): void {
    this.ajax(
      "GET",
      this.headers({Accept: "application/json"}),
      null,
      () => this.ontimeout(),
      json => {
        const resp = json as PollResponse | null
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
            for (const msg of resp?.messages || []) {
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
      },
    )
  }

  /** Queues one encoded frame; frames sent in the same tick go out in one POST. */
  send(body: Frame): void {
    const line = typeof body === "string" ? body : arrayBufferToBase64(body)
    if (this.currentBatch) {
      this.currentBatch.push(line)
    } else if (this.awaitingBatchAck) {
      this.batchBuffer.push(line)
    } else {
      const batch = [line]
      this.currentBatch = batch
      this.currentBatchTimer = setTimeout(() => {
        this.currentBatch = null
        this.currentBatchTimer = null
        this.batchSend(batch)
      }, 0)
    }
  }

  // POSTs `messages` in chunks of at most MAX_LONGPOLL_BATCH lines, one chunk
  // after the other's ack, then whatever was queued meanwhile.
  private batchSend(messages: string[], offset = 0): void {
    this.awaitingBatchAck = true
    const chunk = messages.slice(offset, offset + MAX_LONGPOLL_BATCH)
    // The auth token only matters when the session starts (the GET); POSTs
    // are authorised by the session token, as with phoenix.
    const headers = {"Content-Type": "application/x-ndjson"}
    this.ajax(
      "POST",
      headers,
      chunk.join("\n"),
      () => this.ontimeout(),
      json => {
        const resp = json as PollResponse | null
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
      },
    )
  }

  /** Aborts the requests in flight, drops unsent frames and reports the close to `onclose`. */
  close(code?: number, reason?: string, wasClean?: boolean | number): void {
    for (const req of this.reqs) req.abort()
    this.reqs.clear()
    this.readyState = SOCKET_STATES.closed
    // Explicitly passed undefineds override the defaults: `close()` reports code undefined.
    const opts: TransportCloseEvent = Object.assign(
      {code: 1000, reason: undefined, wasClean: true},
      {code, reason, wasClean},
    )
    this.batchBuffer = []
    clearTimer(this.currentBatchTimer)
    this.currentBatchTimer = null
    this.currentBatch = null
    this.awaitingBatchAck = false
    const {CloseEvent} = globalScope
    if (typeof CloseEvent === "function") {
      this.onclose(new CloseEvent("close", opts))
    } else {
      this.onclose(opts)
    }
  }

  private ajax(
    method: string,
    headers: Record<string, string>,
    body: string | null,
    onCallerTimeout: () => void,
    callback: (json: unknown) => void,
  ): void {
    // A request aborted by close() must not report back; only live ones do.
    let req: RequestHandle | null = null
    const ontimeout = () => {
      if (req === null || !this.reqs.has(req)) return
      this.reqs.delete(req)
      onCallerTimeout()
    }
    req = Ajax.request(method, this.endpointURL(), headers, body, this.timeout, ontimeout, resp => {
      if (req === null || !this.reqs.has(req)) return
      this.reqs.delete(req)
      if (this.isActive()) callback(resp)
    })
    this.reqs.add(req)
  }
}
