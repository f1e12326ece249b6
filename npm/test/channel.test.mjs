// Channel and Push unit tests: join/rejoin, buffering, replies, timeouts, leave.
import {afterEach, beforeEach, describe, mock, test} from "node:test"
import assert from "node:assert/strict"
import {Socket} from "rollcall"
import {fakeWebSocketClass} from "./socket-fakes.mjs"

let FakeWebSocket
let socket
let conn

beforeEach(() => {
  mock.timers.enable({apis: ["setTimeout", "Date"]})
  FakeWebSocket = fakeWebSocketClass()
  socket = new Socket("ws://h/socket", {transport: FakeWebSocket, heartbeatIntervalMs: 1e9})
  socket.connect()
  conn = FakeWebSocket.latest()
  conn.serverOpen()
})
afterEach(() => mock.timers.reset())

const joinFrames = () => conn.frames().filter(f => f[3] === "phx_join")

const joined = (topic = "room:1", params) => {
  const channel = socket.channel(topic, params)
  channel.join()
  conn.serverReply(conn.lastFrame(), "ok", {})
  return channel
}

describe("join", () => {
  test("ok reply marks the channel joined and runs ok hooks with the response", () => {
    const channel = socket.channel("room:1")
    let response = null
    channel.join().receive("ok", r => (response = r))
    assert.equal(channel.state, "joining")
    conn.serverReply(conn.lastFrame(), "ok", {welcome: true})
    assert.equal(channel.state, "joined")
    assert.deepEqual(response, {welcome: true})
  })

  test("error reply errors the channel and rejoins after 1000, 2000, 5000, then 10000 ms", () => {
    const channel = socket.channel("room:1")
    const reasons = []
    channel.join().receive("error", r => reasons.push(r))
    conn.serverReply(conn.lastFrame(), "error", {reason: "unauthorized"})
    assert.equal(channel.state, "errored")
    assert.deepEqual(reasons, [{reason: "unauthorized"}])
    for (const delay of [1000, 2000, 5000, 10000, 10000]) {
      const before = joinFrames().length
      mock.timers.tick(delay - 1)
      assert.equal(joinFrames().length, before, `rejoin before ${delay} ms`)
      mock.timers.tick(1)
      assert.equal(joinFrames().length, before + 1, `rejoin after ${delay} ms`)
      conn.serverReply(conn.lastFrame(), "error", {reason: "unauthorized"})
    }
  })

  test("each rejoin uses a new ref as its join_ref", () => {
    const channel = socket.channel("room:1")
    channel.join()
    conn.serverReply(conn.lastFrame(), "error", {})
    mock.timers.tick(1000)
    const [first, second] = joinFrames()
    assert.deepEqual(first.slice(0, 2), ["3", "3"])
    assert.deepEqual(second.slice(0, 2), ["4", "4"])
    assert.equal(channel.joinRef(), "4")
  })

  test("join timeout sends phx_leave, errors the channel and schedules a rejoin", () => {
    const channel = socket.channel("room:1")
    let timedOut = false
    channel.join(500).receive("timeout", () => (timedOut = true))
    mock.timers.tick(500)
    assert.equal(timedOut, true)
    assert.equal(channel.state, "errored")
    // Sent before the join push is reset, so it still carries the failed join's ref.
    assert.deepEqual(conn.lastFrame(), ["3", "4", "room:1", "phx_leave", {}])
    mock.timers.tick(1000)
    assert.equal(joinFrames().length, 2)
    assert.equal(channel.state, "joining")
  })

  test("join params given as a function are re-read on every rejoin", () => {
    let n = 0
    const channel = socket.channel("room:1", () => ({n: ++n}))
    channel.join()
    conn.serverReply(conn.lastFrame(), "error", {})
    mock.timers.tick(1000)
    assert.deepEqual(joinFrames().map(f => f[4]), [{n: 1}, {n: 2}])
  })

  test("joining twice throws", () => {
    const channel = socket.channel("room:1")
    channel.join()
    assert.throws(() => channel.join(), /tried to join multiple times/)
  })

  test("channels errored by a dropped connection rejoin when the socket reopens", () => {
    const channel = joined()
    conn.serverDrop()
    assert.equal(channel.state, "errored")
    mock.timers.tick(10)
    const next = FakeWebSocket.latest()
    assert.notEqual(next, conn)
    next.serverOpen()
    assert.equal(channel.state, "joining")
    assert.deepEqual(next.lastFrame().slice(2, 4), ["room:1", "phx_join"])
  })

  test("joining a topic that is already joined leaves the older channel", () => {
    const first = joined()
    const second = socket.channel("room:1")
    second.join()
    assert.equal(first.state, "closed")
    assert.deepEqual(socket.channels, [second])
    assert.deepEqual(conn.frames().map(f => f[3]), ["phx_join", "phx_leave", "phx_join"])
  })
})

describe("membership", () => {
  test("a message carrying an outdated join_ref is dropped; broadcasts and current ones pass", () => {
    const channel = socket.channel("room:1")
    channel.join()
    conn.serverReply(conn.lastFrame(), "error", {})
    mock.timers.tick(1000) // rejoin with join_ref "4"
    conn.serverReply(conn.lastFrame(), "ok", {})
    const got = []
    channel.on("note", (p, ref, joinRef) => got.push([p.n, joinRef]))
    conn.serverSend(["3", null, "room:1", "note", {n: "stale"}])
    conn.serverSend(["4", null, "room:1", "note", {n: "current"}])
    conn.serverSend([null, null, "room:1", "note", {n: "broadcast"}])
    assert.deepEqual(got, [["current", "4"], ["broadcast", "4"]])
  })

  test("isMember requires the topic to match", () => {
    const channel = socket.channel("room:1")
    assert.equal(channel.isMember("room:2", "x", {}, null), false)
    assert.equal(channel.isMember("room:1", "x", {}, null), true)
  })
})

describe("bindings", () => {
  test("off with a ref removes only that binding; without a ref removes all for the event", () => {
    const channel = joined()
    const got = []
    const ref1 = channel.on("e", () => got.push(1))
    channel.on("e", () => got.push(2))
    channel.off("e", ref1)
    conn.serverSend([null, null, "room:1", "e", {}])
    channel.off("e")
    conn.serverSend([null, null, "room:1", "e", {}])
    assert.deepEqual(got, [2])
  })

  test("bindings added during a dispatch do not receive that same message", () => {
    const channel = joined()
    const got = []
    channel.on("e", () => {
      got.push("first")
      channel.on("e", () => got.push("late"))
    })
    conn.serverSend([null, null, "room:1", "e", {}])
    assert.deepEqual(got, ["first"])
  })

  test("onMessage can rewrite payloads and must return one", () => {
    const channel = joined()
    const got = []
    channel.onMessage = (event, payload) => (event === "e" ? {...payload, seen: true} : payload)
    channel.on("e", p => got.push(p))
    conn.serverSend([null, null, "room:1", "e", {a: 1}])
    assert.deepEqual(got, [{a: 1, seen: true}])
    channel.onMessage = () => undefined
    assert.throws(() => conn.serverSend([null, null, "room:1", "e", {a: 1}]), /must return the payload/)
  })
})

describe("push", () => {
  test("push on a joined channel sends at once with the join ref", () => {
    const channel = joined()
    channel.push("shout", {body: "hi"})
    assert.deepEqual(conn.lastFrame(), ["3", "4", "room:1", "shout", {body: "hi"}])
  })

  test("receive runs the hooks of the reply status only", () => {
    const channel = joined()
    const got = []
    const push = channel
      .push("shout", {})
      .receive("ok", r => got.push(["ok", r]))
      .receive("error", r => got.push(["error", r]))
    conn.serverReply(conn.lastFrame(), "error", {reason: "nope"})
    assert.deepEqual(got, [["error", {reason: "nope"}]])
    // A hook registered after the reply is called at once.
    push.receive("error", r => got.push(["late", r]))
    assert.deepEqual(got[1], ["late", {reason: "nope"}])
  })

  test("a push without reply times out after its timeout", () => {
    const channel = joined()
    let timedOut = false
    channel.push("shout", {}, 300).receive("timeout", () => (timedOut = true))
    mock.timers.tick(299)
    assert.equal(timedOut, false)
    mock.timers.tick(1)
    assert.equal(timedOut, true)
  })

  test("pushes before the join reply are buffered and sent after it with a fresh ref", () => {
    const channel = socket.channel("room:1")
    channel.join()
    channel.push("a", {n: 1})
    channel.push("b", {n: 2})
    assert.deepEqual(conn.frames().map(f => f[3]), ["phx_join"])
    conn.serverReply(conn.lastFrame(), "ok", {})
    // refs 4 and 5 were used for the buffered clocks; sending takes 6 and 7.
    assert.deepEqual(conn.frames().slice(1), [
      ["3", "6", "room:1", "a", {n: 1}],
      ["3", "7", "room:1", "b", {n: 2}],
    ])
  })

  test("a buffered push that times out before the join succeeds is never sent", () => {
    const channel = socket.channel("room:1")
    channel.join()
    let timedOut = false
    channel.push("late", {}, 100).receive("timeout", () => (timedOut = true))
    mock.timers.tick(100)
    assert.equal(timedOut, true)
    conn.serverReply(conn.frames()[0], "ok", {})
    assert.deepEqual(conn.frames().map(f => f[3]), ["phx_join"])
  })

  test("pushing before join throws", () => {
    const channel = socket.channel("room:1")
    assert.throws(() => channel.push("x", {}), /before joining/)
  })

  test("binary payloads go out as binary frames", () => {
    const channel = joined()
    channel.push("file", new Uint8Array([1, 2, 3]).buffer)
    const frame = new Uint8Array(conn.sent[conn.sent.length - 1])
    assert.deepEqual([...frame], [0, 1, 1, 6, 4, ...Buffer.from("34room:1file"), 1, 2, 3])
  })
})

describe("leave", () => {
  test("leave sends phx_leave, closes the channel at once and removes it from the socket", () => {
    const channel = joined()
    const closes = []
    channel.onClose(reason => closes.push(reason))
    let ok = false
    channel.leave().receive("ok", () => (ok = true))
    assert.deepEqual(conn.lastFrame(), ["3", "4", "room:1", "phx_leave", {}])
    assert.equal(ok, true)
    assert.deepEqual(closes, ["leave"])
    assert.equal(channel.state, "closed")
    assert.deepEqual(socket.channels, [])
  })

  test("a left channel is not rejoined when the socket reconnects", () => {
    const channel = joined()
    channel.leave()
    conn.serverDrop()
    mock.timers.tick(10)
    FakeWebSocket.latest().serverOpen()
    mock.timers.tick(20000)
    assert.deepEqual(FakeWebSocket.latest().frames(), [])
    assert.equal(channel.state, "closed")
  })

  test("server phx_close closes the channel", () => {
    const channel = joined()
    conn.serverSend(["3", "3", "room:1", "phx_close", {}])
    assert.equal(channel.state, "closed")
    assert.deepEqual(socket.channels, [])
  })

  test("server phx_error errors the channel and rejoins after backoff", () => {
    const channel = joined()
    conn.serverSend(["3", "3", "room:1", "phx_error", {}])
    assert.equal(channel.state, "errored")
    mock.timers.tick(1000)
    assert.equal(channel.state, "joining")
    assert.equal(joinFrames().length, 2)
  })
})
