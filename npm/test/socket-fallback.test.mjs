// Falling back from WebSocket to LongPoll (`longPollFallbackMs`) and the
// sessionStorage memo of a fallback that worked.
import {afterEach, beforeEach, mock, test} from "node:test"
import assert from "node:assert/strict"
import {Socket} from "rollcall"
import {LongPoll} from "rollcall"
import {fakeWebSocketClass, memoryStorage} from "./socket-fakes.mjs"
import {installFakeXHR} from "./longpoll-fakes.mjs"

let FakeWebSocket
let http
let storage

beforeEach(() => {
  mock.timers.enable({apis: ["setTimeout", "Date"]})
  FakeWebSocket = fakeWebSocketClass()
  http = installFakeXHR()
  storage = memoryStorage()
})
afterEach(() => {
  http.uninstall()
  mock.timers.reset()
})

const makeSocket = () =>
  new Socket("ws://h/socket", {transport: FakeWebSocket, longPollFallbackMs: 2500, sessionStorage: storage})

const longPollStarted = () => {
  mock.timers.tick(0)
  return http.requests.some(r => r.method === "GET" && r.url.startsWith("http://h/socket/longpoll?vsn=2.0.0"))
}

test("a WebSocket error before it opened falls back to long-poll at once", () => {
  const socket = makeSocket()
  socket.connect()
  FakeWebSocket.latest().serverError()
  assert.equal(socket.transport, LongPoll)
  assert.ok(socket.conn instanceof LongPoll)
  assert.equal(longPollStarted(), true)
})

test("a WebSocket that does not open within longPollFallbackMs is replaced by long-poll", () => {
  const socket = makeSocket()
  socket.connect()
  mock.timers.tick(2499)
  assert.equal(socket.transport, FakeWebSocket)
  mock.timers.tick(1)
  assert.equal(socket.transport, LongPoll)
  assert.deepEqual(FakeWebSocket.latest().closeCalls, [[undefined, undefined]])
})

test("an open WebSocket that cannot answer a ping in time still falls back", () => {
  const socket = makeSocket()
  socket.connect()
  FakeWebSocket.latest().serverOpen()
  assert.deepEqual(FakeWebSocket.latest().lastFrame().slice(2, 4), ["phoenix", "heartbeat"])
  mock.timers.tick(2500)
  assert.equal(socket.transport, LongPoll)
})

test("a WebSocket that answers the ping stays, and nothing is memorised", () => {
  const socket = makeSocket()
  socket.connect()
  const conn = FakeWebSocket.latest()
  conn.serverOpen()
  const [, ref] = conn.lastFrame()
  conn.serverSend([null, ref, "phoenix", "phx_reply", {status: "ok", response: {}}])
  mock.timers.tick(10000)
  assert.equal(socket.transport, FakeWebSocket)
  assert.equal(socket.primaryPassedHealthCheck, true)
  assert.equal(storage.getItem("phx:fallback:LongPoll"), null)
})

test("a fallback that opens is remembered and used at once by the next socket", () => {
  const socket = makeSocket()
  socket.connect()
  FakeWebSocket.latest().serverError()
  mock.timers.tick(0)
  http.last("GET").respond({status: 410, token: "tok", messages: []})
  assert.equal(socket.isConnected(), true)
  assert.equal(storage.getItem("phx:fallback:LongPoll"), "true")

  const next = makeSocket()
  const wsBefore = FakeWebSocket.instances.length
  next.connect()
  assert.equal(FakeWebSocket.instances.length, wsBefore, "no WebSocket attempt")
  assert.equal(next.transport, LongPoll)
})

test("channels joined over the WebSocket rejoin over long-poll after the fallback", () => {
  const socket = makeSocket()
  const channel = socket.channel("room:1")
  channel.join()
  socket.connect()
  const conn = FakeWebSocket.latest()
  conn.serverOpen()
  const join = conn.frames().find(f => f[3] === "phx_join")
  conn.serverReply(join, "ok", {})
  assert.equal(channel.state, "joined")
  mock.timers.tick(2500) // ping unanswered: fall back
  assert.equal(channel.state, "errored")
  mock.timers.tick(0)
  http.last("GET").respond({status: 410, token: "tok", messages: []})
  assert.equal(channel.state, "joining")
  mock.timers.tick(0)
  const post = http.last("POST")
  const [joinRef, ref, topic, event] = JSON.parse(post.body)
  assert.deepEqual([topic, event], ["room:1", "phx_join"])
  assert.equal(joinRef, ref)
  assert.notEqual(ref, join[1])
})

test("without longPollFallbackMs a WebSocket error does not switch transports", () => {
  const socket = new Socket("ws://h/socket", {transport: FakeWebSocket, sessionStorage: storage})
  socket.connect()
  FakeWebSocket.latest().serverError()
  mock.timers.tick(5000)
  assert.equal(socket.transport, FakeWebSocket)
  assert.equal(http.requests.length, 0)
})

test("parity with phoenix: a failed health check falls back and the channel rejoins over long-poll", async () => {
  const phoenix = await import("phoenix")
  const run = SocketClass => {
    const ws = fakeWebSocketClass()
    const xhr = installFakeXHR()
    try {
      const socket = new SocketClass("ws://h/socket", {transport: ws, longPollFallbackMs: 2500, sessionStorage: memoryStorage()})
      const channel = socket.channel("room:1")
      const states = []
      channel.join()
      socket.connect()
      ws.latest().serverOpen()
      ws.latest().serverReply(ws.latest().frames().find(f => f[3] === "phx_join"), "ok", {})
      states.push(channel.state)
      mock.timers.tick(2500)
      states.push(channel.state)
      mock.timers.tick(0)
      xhr.last("GET").respond({status: 410, token: "tok", messages: []})
      mock.timers.tick(0)
      states.push(channel.state)
      return {
        states,
        ws: ws.instances.map(c => ({sent: c.frames(), closeCalls: c.closeCalls})),
        http: xhr.requests.map(r => [r.method, r.url, r.body ?? null]),
      }
    } finally {
      xhr.uninstall()
    }
  }
  const theirs = run(phoenix.Socket)
  mock.timers.reset()
  mock.timers.enable({apis: ["setTimeout", "Date"]})
  assert.deepEqual(run(Socket), theirs)
})
