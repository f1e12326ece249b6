// Test support (not a test file): a fake XMLHttpRequest installed on globalThis,
// so LongPoll's HTTP traffic is recorded and answered by the test.

export function installFakeXHR() {
  const requests = []
  class FakeXHR {
    constructor() {
      this.headers = {}
      this.readyState = 0
      this.aborted = false
      requests.push(this)
    }
    open(method, url) {
      this.method = method
      this.url = url
      this.readyState = 1
    }
    setRequestHeader(name, value) {
      this.headers[name] = value
    }
    send(body) {
      this.body = body
    }
    abort() {
      this.aborted = true
    }
    // ---- driven by the test, as the server would ----
    respond(json) {
      this.readyState = 4
      this.responseText = json === undefined ? "" : JSON.stringify(json)
      this.onreadystatechange()
    }
    networkError() {
      this.readyState = 4
      this.responseText = ""
      if (this.onerror) this.onerror()
      this.onreadystatechange()
    }
    timeOut() {
      this.ontimeout()
    }
  }
  const previous = globalThis.XMLHttpRequest
  globalThis.XMLHttpRequest = FakeXHR
  return {
    requests,
    pending: () => requests.filter(r => r.readyState !== 4 && !r.aborted),
    last: method => requests.filter(r => !method || r.method === method).at(-1),
    uninstall: () => {
      if (previous) globalThis.XMLHttpRequest = previous
      else delete globalThis.XMLHttpRequest
    },
  }
}
