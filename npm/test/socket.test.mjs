// Socket unit tests: a fake WebSocket driven from the server side and fake timers.
import {afterEach, beforeEach, describe, mock, test} from "node:test"
import assert from "node:assert/strict"
import {Socket} from "rollcall"
import {fakeWebSocketClass} from "./socket-fakes.mjs"

let FakeWebSocket

beforeEach(() => {
  mock.timers.enable({apis: ["setTimeout", "Date"]})
  FakeWebSocket = fakeWebSocketClass()
})
afterEach(() => mock.timers.reset())

const openSocket = (opts = {}) => {
  const socket = new Socket("ws://example.test/socket", {transport: FakeWebSocket, ...opts})
  socket.connect()
  FakeWebSocket.latest().serverOpen()
  return socket
}

describe("refs", () => {
  test("first join on a fresh socket goes out with ref 3 as both join_ref and ref", () => {
    const socket = openSocket()
    socket.channel("room:1", {user: "ana"}).join()
    assert.deepEqual(FakeWebSocket.latest().frames(), [["3", "3", "room:1", "phx_join", {user: "ana"}]])
  })

  test("callback registrations and message refs share one counter", () => {
    const socket = openSocket()
    assert.equal(socket.onOpen(() => {}), "1")
    assert.equal(socket.onMessage(() => {}), "2")
    const channel = socket.channel("room:1") // registers onError (3) and onOpen (4)
    channel.join() // 5
    assert.equal(socket.onClose(() => {}), "6")
    channel.push("msg", {n: 1}) // buffered: takes 7 for its clock
    assert.deepEqual(FakeWebSocket.latest().frames(), [["5", "5", "room:1", "phx_join", {}]])
    assert.equal(socket.makeRef(), "8")
  })

  test("makeRef wraps to 0 only when +1 no longer changes the number", () => {
    const socket = new Socket("/socket", {transport: FakeWebSocket})
    socket.ref = Number.MAX_SAFE_INTEGER
    assert.equal(socket.makeRef(), String(Number.MAX_SAFE_INTEGER + 1))
    assert.equal(socket.makeRef(), "0")
  })
})

describe("connection URL and auth", () => {
  test("endPointURL appends nested params with encoded brackets, then vsn", () => {
    const socket = new Socket("ws://example.test/socket", {
      transport: FakeWebSocket,
      params: {a: {b: 1}, n: null, arr: [1, 2]},
    })
    assert.equal(
      socket.endPointURL(),
      "ws://example.test/socket/websocket?a%5Bb%5D=1&&arr%5B0%5D=1&arr%5B1%5D=2&vsn=2.0.0",
    )
  })

  test("protocol-relative endpoint gets ws: prepended", () => {
    const socket = new Socket("//example.test/socket", {transport: FakeWebSocket})
    assert.equal(socket.endPointURL(), "ws://example.test/socket/websocket?vsn=2.0.0")
  })

  test("params given as a function are re-read on every connect", () => {
    let n = 0
    const socket = new Socket("ws://h/socket", {transport: FakeWebSocket, params: () => ({n: ++n})})
    socket.connect()
    FakeWebSocket.latest().serverDrop()
    mock.timers.tick(10)
    assert.deepEqual(
      FakeWebSocket.instances.map(c => c.url),
      ["ws://h/socket/websocket?n=1&vsn=2.0.0", "ws://h/socket/websocket?n=2&vsn=2.0.0"],
    )
  })

  test("authToken travels as sub-protocol in standard base64 without padding", () => {
    const socket = new Socket("ws://h/socket", {transport: FakeWebSocket, authToken: "~~~?"})
    socket.connect()
    assert.deepEqual(FakeWebSocket.latest().protocols, ["phoenix", "base64url.bearer.phx.fn5+Pw"])
  })

  test("without authToken no sub-protocols are requested", () => {
    const socket = new Socket("ws://h/socket", {transport: FakeWebSocket})
    socket.connect()
    assert.equal(FakeWebSocket.latest().protocols, undefined)
  })

  test("connect is a no-op while a connection exists", () => {
    const socket = openSocket()
    socket.connect()
    assert.equal(FakeWebSocket.instances.length, 1)
  })
})

describe("reconnect", () => {
  test("reconnect delays follow 10, 50, 100, 150, 200, 250, 500, 1000, 2000, then 5000", () => {
    const socket = new Socket("ws://h/socket", {transport: FakeWebSocket})
    socket.connect()
    const expected = [10, 50, 100, 150, 200, 250, 500, 1000, 2000, 5000, 5000, 5000]
    for (const [attempt, delay] of expected.entries()) {
      FakeWebSocket.latest().serverDrop()
      const before = FakeWebSocket.instances.length
      mock.timers.tick(delay - 1)
      assert.equal(FakeWebSocket.instances.length, before, `attempt ${attempt + 1} came early`)
      mock.timers.tick(1)
      assert.equal(FakeWebSocket.instances.length, before + 1, `attempt ${attempt + 1} after ${delay} ms`)
    }
  })

  test("custom reconnectAfterMs is called with the attempt number", () => {
    const seen = []
    const socket = new Socket("ws://h/socket", {
      transport: FakeWebSocket,
      reconnectAfterMs: tries => (seen.push(tries), 7),
    })
    socket.connect()
    FakeWebSocket.latest().serverDrop()
    mock.timers.tick(7)
    FakeWebSocket.latest().serverDrop()
    mock.timers.tick(7)
    assert.deepEqual(seen, [1, 2])
    assert.equal(FakeWebSocket.instances.length, 3)
  })

  test("an open connection resets the backoff to the first delay", () => {
    const socket = new Socket("ws://h/socket", {transport: FakeWebSocket})
    socket.connect()
    FakeWebSocket.latest().serverDrop()
    mock.timers.tick(10)
    FakeWebSocket.latest().serverDrop()
    mock.timers.tick(50)
    FakeWebSocket.latest().serverOpen()
    FakeWebSocket.latest().serverDrop()
    const before = FakeWebSocket.instances.length
    mock.timers.tick(10)
    assert.equal(FakeWebSocket.instances.length, before + 1)
  })

  test("a close with code 1000 does not reconnect", () => {
    openSocket()
    FakeWebSocket.latest().serverDrop(1000)
    mock.timers.tick(60000)
    assert.equal(FakeWebSocket.instances.length, 1)
  })

  test("disconnect closes cleanly, runs its callback and never reconnects", () => {
    const socket = openSocket()
    let done = false
    socket.disconnect(() => (done = true), 1000, "bye")
    assert.equal(done, true)
    assert.deepEqual(FakeWebSocket.latest().closeCalls, [[1000, "bye"]])
    assert.equal(socket.conn, null)
    mock.timers.tick(60000)
    assert.equal(FakeWebSocket.instances.length, 1)
  })

  test("connect after disconnect opens a new connection", () => {
    const socket = openSocket()
    socket.disconnect()
    socket.connect()
    assert.equal(FakeWebSocket.instances.length, 2)
  })
})

describe("heartbeat", () => {
  test("heartbeat goes out one interval after open, and again one interval after its reply", () => {
    openSocket({heartbeatIntervalMs: 1000})
    const conn = FakeWebSocket.latest()
    mock.timers.tick(999)
    assert.deepEqual(conn.frames(), [])
    mock.timers.tick(1)
    assert.deepEqual(conn.frames(), [[null, "1", "phoenix", "heartbeat", {}]])
    mock.timers.tick(400)
    conn.serverSend([null, "1", "phoenix", "phx_reply", {status: "ok", response: {}}])
    mock.timers.tick(999)
    assert.equal(conn.frames().length, 1)
    mock.timers.tick(1)
    assert.deepEqual(conn.lastFrame(), [null, "2", "phoenix", "heartbeat", {}])
  })

  test("an unanswered heartbeat errors channels, closes with 1000 and reconnects", () => {
    const socket = openSocket({heartbeatIntervalMs: 1000})
    const channel = socket.channel("room:1")
    channel.join()
    const conn = FakeWebSocket.latest()
    conn.serverReply(conn.lastFrame())
    const errors = []
    channel.onError(reason => errors.push(reason))
    mock.timers.tick(1000) // heartbeat sent
    mock.timers.tick(1000) // no reply within one interval
    assert.deepEqual(errors, [{source: "transport", reason: "heartbeat_timeout"}])
    assert.deepEqual(conn.closeCalls, [[1000, "heartbeat timeout"]])
    assert.equal(FakeWebSocket.instances.length, 1)
    mock.timers.tick(10)
    assert.equal(FakeWebSocket.instances.length, 2)
  })

  test("ping measures the round trip of a heartbeat", () => {
    const socket = openSocket()
    let rtt = null
    assert.equal(socket.ping(ms => (rtt = ms)), true)
    const [, ref] = FakeWebSocket.latest().lastFrame()
    mock.timers.tick(42)
    FakeWebSocket.latest().serverSend([null, ref, "phoenix", "phx_reply", {status: "ok", response: {}}])
    assert.equal(rtt, 42)
  })

  test("ping returns false when not connected", () => {
    const socket = new Socket("ws://h/socket", {transport: FakeWebSocket})
    assert.equal(socket.ping(() => {}), false)
  })
})

describe("send buffer and callbacks", () => {
  test("pushes made before open are buffered and flushed in order on open", () => {
    const socket = new Socket("ws://h/socket", {transport: FakeWebSocket})
    socket.connect()
    socket.push({topic: "t", event: "a", payload: {}, ref: "1", join_ref: null})
    socket.push({topic: "t", event: "b", payload: {}, ref: "2", join_ref: null})
    assert.deepEqual(FakeWebSocket.latest().sent, [])
    FakeWebSocket.latest().serverOpen()
    assert.deepEqual(FakeWebSocket.latest().frames().map(f => f[3]), ["a", "b"])
    assert.deepEqual(socket.sendBuffer, [])
  })

  test("onOpen, onClose, onError and onMessage callbacks fire; off removes them", () => {
    const socket = new Socket("ws://h/socket", {transport: FakeWebSocket})
    const log = []
    const refs = [
      socket.onOpen(() => log.push("open")),
      socket.onClose(event => log.push(`close ${event.code}`)),
      socket.onError((error, transport, established) => log.push(`error ${error.message} ${transport.name} ${established}`)),
      socket.onMessage(msg => log.push(`message ${msg.event}`)),
    ]
    socket.connect()
    const conn = FakeWebSocket.latest()
    conn.serverOpen()
    conn.serverSend([null, null, "room:1", "hello", {}])
    conn.serverError(new Error("bad"))
    conn.serverDrop(4000)
    assert.deepEqual(log, ["open", "message hello", "error bad FakeWebSocket 1", "close 4000"])
    socket.off(refs)
    mock.timers.tick(10)
    FakeWebSocket.latest().serverOpen()
    assert.equal(log.length, 4)
  })

  test("messages reach only channels of their topic", () => {
    const socket = openSocket()
    const a = socket.channel("room:a")
    const b = socket.channel("room:b")
    const got = []
    a.on("note", p => got.push(`a ${p.n}`))
    b.on("note", p => got.push(`b ${p.n}`))
    FakeWebSocket.latest().serverSend([null, null, "room:b", "note", {n: 1}])
    assert.deepEqual(got, ["b 1"])
  })

  test("a transport error errors joined channels with reason connection_error", () => {
    const socket = openSocket()
    const channel = socket.channel("room:1")
    channel.join()
    FakeWebSocket.latest().serverReply(FakeWebSocket.latest().lastFrame())
    const errors = []
    channel.onError(reason => errors.push(reason))
    FakeWebSocket.latest().serverError()
    assert.deepEqual(errors, [{source: "transport", reason: "connection_error"}])
    assert.equal(channel.state, "errored")
  })

  test("connectionState follows the transport readyState", () => {
    const socket = new Socket("ws://h/socket", {transport: FakeWebSocket})
    assert.equal(socket.connectionState(), "closed")
    socket.connect()
    assert.equal(socket.connectionState(), "connecting")
    FakeWebSocket.latest().serverOpen()
    assert.equal(socket.connectionState(), "open")
    assert.equal(socket.isConnected(), true)
  })

  test("custom encode and decode are used with a WebSocket transport", () => {
    const socket = openSocket({
      encode: (msg, cb) => cb(`custom:${msg.event}`),
      decode: (raw, cb) => cb({topic: "room:1", event: raw, payload: {}, ref: null, join_ref: null}),
    })
    const channel = socket.channel("room:1")
    const got = []
    channel.on("ding", () => got.push("ding"))
    channel.join()
    FakeWebSocket.latest().onmessage({data: "ding"})
    assert.deepEqual(FakeWebSocket.latest().sent, ["custom:phx_join"])
    assert.deepEqual(got, ["ding"])
  })
})
