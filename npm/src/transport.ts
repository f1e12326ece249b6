// The shape of a transport: what the Socket needs of a connection object. A browser WebSocket,
// the `ws` package's WebSocket and LongPoll all have it. Types only; nothing here runs.

/**
 * A callback slot of a transport. Declared through a method so that its parameter is checked
 * both ways: a WebSocket whose `onmessage` takes a full `MessageEvent` still fits a slot that
 * promises only `{data}`.
 */
type Handler<E> = {handle(event: E): void}["handle"]

/** What a transport hands to `onclose`: a `CloseEvent`, or LongPoll's plain look-alike. */
export interface TransportCloseEvent {
  code?: number
  reason?: string
  /**
   * Whether the close was clean. After a failed poll LongPoll reports the poll status (500)
   * here where the platform has no `CloseEvent`, as phoenix.js does.
   */
  wasClean?: boolean | number
}

/** What a transport hands to `onmessage`: a frame, as text or (binary frames) an ArrayBuffer. */
export interface TransportMessageEvent {
  data: string | ArrayBuffer
}

/** One connection, as the Socket drives it. */
export interface Transport {
  /** 0 connecting, 1 open, 2 closing, 3 closed (`WebSocket.readyState`). */
  readonly readyState: number
  /** Bytes queued but not yet sent; the Socket waits for 0 before closing. */
  readonly bufferedAmount?: number
  /** Set by the Socket from its `binaryType` option. */
  binaryType?: string
  /** Set by the Socket from its `longpollerTimeout` option (LongPoll reads it). */
  timeout?: number
  /** True when the transport needs no heartbeats (LongPoll). */
  readonly skipHeartbeat?: boolean
  onopen: Handler<unknown> | null
  onerror: Handler<unknown> | null
  onmessage: Handler<TransportMessageEvent> | null
  onclose: Handler<TransportCloseEvent> | null
  send(data: string | ArrayBuffer): void
  close(code?: number, reason?: string): void
}

/** A WebSocket-like class: the browser's `WebSocket`, the `ws` package's, or LongPoll. */
export interface TransportConstructor {
  new (endPoint: string, protocols?: string[]): Transport
}

/** A `Storage`-like object (`sessionStorage`) where a working long-poll fallback is remembered. */
export interface SessionStore {
  getItem(key: string): string | null
  setItem(key: string, value: string): void
}
