// Test support (not a test file): a minimal XMLHttpRequest over node:http, for clients whose
// Ajax needs the browser's XHR (phoenix 1.7.x's LongPoll; 1.8 falls back to fetch). It does real
// HTTP to the server; it implements only what such a client touches: open, setRequestHeader,
// send, abort, timeout, readyState, status, responseText and the onreadystatechange / onload /
// onerror / ontimeout / onabort handlers. Requests are always asynchronous, text only, and
// http: only (the tests talk to 127.0.0.1).
//
// Event order follows the browser's (XHR standard): when a request ends - answered, failed,
// timed out or aborted while in flight - readyState becomes DONE and onreadystatechange fires
// first, then the specific handler (onload, onerror, ontimeout or onabort). A failed, timed out
// or aborted request reads as status 0 with an empty responseText.
import http from "node:http"

const UNSENT = 0,
  OPENED = 1,
  HEADERS_RECEIVED = 2,
  LOADING = 3,
  DONE = 4

export class NodeXMLHttpRequest {
  static UNSENT = UNSENT
  static OPENED = OPENED
  static HEADERS_RECEIVED = HEADERS_RECEIVED
  static LOADING = LOADING
  static DONE = DONE

  constructor() {
    this.readyState = UNSENT
    this.status = 0
    this.responseText = ""
    /** Milliseconds before the request gives up; 0 waits forever, as in the browser. */
    this.timeout = 0
    this.onreadystatechange = null
    this.onload = null
    this.onerror = null
    this.ontimeout = null
    this.onabort = null
    this._request = null
    this._timer = null
  }

  open(method, url) {
    this._method = method
    this._url = new URL(url)
    this._headers = {}
    this.readyState = OPENED
    this.status = 0
    this.responseText = ""
  }

  setRequestHeader(name, value) {
    if (this.readyState !== OPENED || this._request) throw new Error("setRequestHeader before open() or after send()")
    this._headers[name] = value
  }

  send(body = null) {
    if (this.readyState !== OPENED || this._request) throw new Error("send() before open() or twice")
    if (this._url.protocol !== "http:") throw new Error(`only http: URLs are supported, got ${this._url}`)
    const request = http.request(this._url, {method: this._method, headers: this._headers}, response => {
      this.status = response.statusCode
      this._change(HEADERS_RECEIVED)
      response.setEncoding("utf8")
      response.on("data", chunk => {
        if (this._request !== request) return
        this.responseText += chunk
        if (this.readyState !== LOADING) this._change(LOADING)
      })
      response.on("end", () => {
        if (this._request === request) this._finish("onload")
      })
      response.on("error", () => {
        if (this._request === request) this._fail("onerror")
      })
    })
    // A request that ended on our side (abort, timeout) no longer reports its socket's errors.
    request.on("error", () => {
      if (this._request === request) this._fail("onerror")
    })
    this._request = request
    if (this.timeout > 0) this._timer = setTimeout(() => this._fail("ontimeout"), this.timeout)
    request.end(body ?? undefined)
  }

  abort() {
    if (this._request) this._fail("onabort")
    // The browser resets an aborted request to UNSENT without telling anyone.
    this.readyState = UNSENT
  }

  _change(state) {
    this.readyState = state
    this.onreadystatechange?.()
  }

  /** Ends the request without a response: status 0, no text, then the given handler. */
  _fail(handler) {
    const request = this._request
    this._request = null
    request.destroy()
    this.status = 0
    this.responseText = ""
    this._end(handler)
  }

  _finish(handler) {
    this._request = null
    this._end(handler)
  }

  _end(handler) {
    clearTimeout(this._timer)
    this._timer = null
    this._change(DONE)
    this[handler]?.()
  }
}

/**
 * Makes `NodeXMLHttpRequest` the global XMLHttpRequest until the returned function is called
 * (which restores whatever was there before).
 */
export function installXMLHttpRequest() {
  const had = Object.hasOwn(globalThis, "XMLHttpRequest")
  const previous = globalThis.XMLHttpRequest
  globalThis.XMLHttpRequest = NodeXMLHttpRequest
  return () => {
    if (had) globalThis.XMLHttpRequest = previous
    else delete globalThis.XMLHttpRequest
  }
}
