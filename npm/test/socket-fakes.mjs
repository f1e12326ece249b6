// Test support (not a test file): an in-memory WebSocket look-alike that a test
// drives from the "server" side, plus small helpers. Used with node:test's
// mock.timers so every time-based rule is checked without waiting.

/** A fresh WebSocket-like class whose instances are recorded in `instances`. */
export function fakeWebSocketClass() {
  class FakeWebSocket {
    constructor(url, protocols) {
      this.url = url
      this.protocols = protocols
      this.readyState = 0
      this.bufferedAmount = 0
      this.sent = []
      this.closeCalls = []
      FakeWebSocket.instances.push(this)
    }

    send(data) {
      this.sent.push(data)
    }

    close(code, reason) {
      this.closeCalls.push([code, reason])
      if (this.readyState === 3) return
      this.readyState = 3
      if (this.onclose) this.onclose({code, reason, wasClean: true})
    }

    // ---- driven by the test, as the server would ----

    serverOpen() {
      this.readyState = 1
      this.onopen()
    }

    /** Delivers a frame: an array is sent as V2 JSON text, an ArrayBuffer as binary. */
    serverSend(frame) {
      this.onmessage({data: Array.isArray(frame) ? JSON.stringify(frame) : frame})
    }

    /** Replies to a sent frame with `status` and `response`. */
    serverReply(sentFrame, status = "ok", response = {}) {
      const [joinRef, ref, topic] = sentFrame
      this.serverSend([joinRef, ref, topic, "phx_reply", {status, response}])
    }

    serverDrop(code = 1006) {
      this.readyState = 3
      this.onclose({code, reason: "", wasClean: false})
    }

    serverError(error = new Error("boom")) {
      this.onerror(error)
    }

    /** Sent text frames, decoded. */
    frames() {
      return this.sent.filter(f => typeof f === "string").map(f => JSON.parse(f))
    }

    lastFrame() {
      const frames = this.frames()
      return frames[frames.length - 1]
    }
  }
  FakeWebSocket.instances = []
  FakeWebSocket.latest = () => FakeWebSocket.instances[FakeWebSocket.instances.length - 1]
  return FakeWebSocket
}

/** A Storage-like object backed by a Map. */
export function memoryStorage() {
  const map = new Map()
  return {
    getItem: key => (map.has(key) ? map.get(key) : null),
    setItem: (key, value) => map.set(key, String(value)),
    removeItem: key => map.delete(key),
    clear: () => map.clear(),
  }
}

/** Lets pending promise jobs (and ws/fetch callbacks queued as microtasks) run. */
export const flushMicrotasks = () => new Promise(resolve => setImmediate(resolve))
