// Drop-in check for the long-poll transport: the same scripted HTTP exchange
// against our LongPoll and phoenix's (installed only as this reference) must
// produce the same requests and the same events.
import {afterEach, beforeEach, mock, test} from "node:test"
import assert from "node:assert/strict"
import * as phoenix from "phoenix"
import {LongPoll} from "rollcall"
import {installFakeXHR} from "./longpoll-fakes.mjs"

beforeEach(() => mock.timers.enable({apis: ["setTimeout", "Date"]}))
afterEach(() => mock.timers.reset())

const transcript = (LongPollClass, script) => {
  const http = installFakeXHR()
  const events = []
  try {
    const lp = new LongPollClass("ws://h/socket/websocket?vsn=2.0.0", ["phoenix", "base64url.bearer.phx.dG9r"])
    lp.timeout = 20000
    lp.onopen = () => events.push("open")
    lp.onerror = e => events.push(["error", e])
    lp.onmessage = m => events.push(["message", m.data])
    lp.onclose = e => events.push(["close", e.code, e.reason, e.wasClean])
    script(lp, http)
    const requests = http.requests.map(r => ({method: r.method, url: r.url, headers: r.headers, body: r.body ?? null, aborted: r.aborted}))
    return {events, requests, readyState: lp.readyState}
  } finally {
    http.uninstall()
  }
}

test("parity: session start, messages, batched sends and session loss", () => {
  const script = (lp, http) => {
    mock.timers.tick(0)
    http.last("GET").respond({status: 410, token: "a", messages: []})
    http.last("GET").respond({status: 200, token: "b", messages: ["[null,null,\"t\",\"e\",{}]", "[2]"]})
    mock.timers.tick(0)
    for (let i = 0; i < 120; i++) lp.send(`[${i}]`)
    mock.timers.tick(0)
    lp.send(new Uint8Array([1, 2, 250]).buffer)
    http.last("POST").respond({status: 200})
    http.last("POST").respond({status: 200})
    mock.timers.tick(0)
    http.last("POST").respond({status: 200})
    http.last("GET").respond({status: 204, token: "b", messages: []})
    http.last("GET").respond({status: 410, token: "c", messages: []})
  }
  assert.deepEqual(transcript(LongPoll, script), transcript(phoenix.LongPoll, script))
})

test("parity: forbidden and server error", () => {
  const forbidden = (lp, http) => {
    mock.timers.tick(0)
    http.last("GET").respond({status: 403})
  }
  assert.deepEqual(transcript(LongPoll, forbidden), transcript(phoenix.LongPoll, forbidden))
  const serverError = (lp, http) => {
    mock.timers.tick(0)
    http.last("GET").respond({status: 410, token: "a", messages: []})
    http.last("GET").respond({status: 500})
  }
  assert.deepEqual(transcript(LongPoll, serverError), transcript(phoenix.LongPoll, serverError))
})
