// Drop-in check: the same scripted session runs against our Socket and the
// phoenix client (installed only as this reference), over the same fake
// WebSocket and fake clock. Every frame each client writes, on every
// connection, and every callback it fires must be identical.
import {afterEach, beforeEach, mock, test} from "node:test"
import assert from "node:assert/strict"
import * as phoenix from "phoenix"
import * as ours from "rollcall"
import {fakeWebSocketClass} from "./socket-fakes.mjs"

beforeEach(() => mock.timers.enable({apis: ["setTimeout", "Date"]}))
afterEach(() => mock.timers.reset())

const tick = ms => mock.timers.tick(ms)

// Runs `script` with a given Socket class; returns what went over the wire and what was observed.
const transcript = (SocketClass, script, opts = {}) => {
  const FakeWebSocket = fakeWebSocketClass()
  const log = []
  const socket = new SocketClass("ws://h/socket", {transport: FakeWebSocket, ...opts})
  script({socket, FakeWebSocket, conn: () => FakeWebSocket.latest(), log})
  const wire = FakeWebSocket.instances.map(c => ({
    url: c.url,
    protocols: c.protocols,
    closeCalls: c.closeCalls,
    sent: c.sent.map(f => (typeof f === "string" ? JSON.parse(f) : [...new Uint8Array(f)])),
  }))
  return {wire, log, ref: socket.ref, channels: socket.channels.map(ch => [ch.topic, ch.state])}
}

const assertParity = (script, opts) => {
  const theirs = transcript(phoenix.Socket, script, opts)
  mock.timers.reset()
  mock.timers.enable({apis: ["setTimeout", "Date"]})
  const mine = transcript(ours.Socket, script, opts)
  assert.deepEqual(mine, theirs)
  return mine
}

const reply = (conn, frame, status, response = {}) =>
  conn.serverSend([frame[0], frame[1], frame[2], "phx_reply", {status, response}])

test("parity: join, buffered pushes, replies, heartbeats and a heartbeat-timeout reconnect", () => {
  const result = assertParity(
    ({socket, conn, log}) => {
      socket.onOpen(() => log.push("open"))
      socket.onClose(e => log.push(["close", e.code]))
      const channel = socket.channel("room:1", () => ({user: "ana"}))
      channel.on("shout", (p, ref, joinRef) => log.push(["shout", p, ref, joinRef]))
      channel.onError(reason => log.push(["chan error", reason]))
      socket.connect()
      channel.join().receive("ok", r => log.push(["joined", r]))
      channel.push("early", {n: 1}).receive("ok", r => log.push(["early ok", r]))
      conn().serverOpen()
      reply(conn(), conn().lastFrame(), "ok", {hello: 1})
      reply(conn(), conn().lastFrame(), "ok", {n: 1})
      conn().serverSend([null, null, "room:1", "shout", {b: 2}])
      tick(30000)
      reply(conn(), conn().lastFrame(), "ok")
      tick(30000)
      tick(30000) // second heartbeat unanswered
      tick(10) // reconnect
      conn().serverOpen()
      reply(conn(), conn().lastFrame(), "ok", {again: true})
      channel.push("late", new Uint8Array([9, 8]).buffer, 500).receive("timeout", () => log.push("late timeout"))
      tick(500)
    },
    {params: {token: "t"}},
  )
  assert.equal(result.wire.length, 2)
})

test("parity: join errors, rejoin backoff, join timeout and leave", () => {
  assertParity(({socket, conn, log}) => {
    const channel = socket.channel("room:2")
    channel.onClose(reason => log.push(["closed", reason]))
    socket.connect()
    conn().serverOpen()
    channel.join(2000).receive("error", r => log.push(["join error", r])).receive("timeout", () => log.push("join timeout"))
    reply(conn(), conn().lastFrame(), "error", {reason: "no"})
    tick(1000)
    reply(conn(), conn().lastFrame(), "error", {reason: "no"})
    tick(2000)
    tick(2000) // join times out
    tick(5000)
    reply(conn(), conn().lastFrame(), "ok")
    channel.leave().receive("ok", () => log.push("left"))
    tick(20000)
  })
})

test("parity: dropped connection, reconnect schedule, rejoin and ping", () => {
  assertParity(({socket, conn, log}) => {
    const channel = socket.channel("room:3")
    socket.connect()
    conn().serverOpen()
    channel.join()
    reply(conn(), conn().lastFrame(), "ok")
    for (const delay of [10, 50, 100, 150, 200, 250, 500, 1000, 2000, 5000]) {
      conn().serverDrop()
      tick(delay)
    }
    conn().serverOpen()
    reply(conn(), conn().lastFrame(), "ok")
    log.push(socket.ping(rtt => log.push(["rtt", rtt])))
    tick(25)
    reply(conn(), conn().lastFrame(), "ok")
    socket.disconnect(() => log.push("disconnected"))
    tick(60000)
  })
})

test("parity: auth token sub-protocol and duplicate-topic join", () => {
  assertParity(
    ({socket, conn, log}) => {
      const a = socket.channel("room:4")
      socket.connect()
      conn().serverOpen()
      a.join()
      reply(conn(), conn().lastFrame(), "ok")
      const b = socket.channel("room:4")
      b.join()
      log.push([a.state, b.state])
      conn().serverSend(["7", null, "room:4", "ignored-stale", {}])
    },
    {authToken: "s3cr3t token?~"},
  )
})
