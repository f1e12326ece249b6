// Interop: the official `phoenix` npm client (1.8.12 by default) against a real `rollcall serve` process.
// Run by `make test` after `cargo build -p rollcall-server` (npm test).
import {test, before, after} from "node:test"
import assert from "node:assert/strict"
import {spawn} from "node:child_process"
import {fileURLToPath} from "node:url"
import path from "node:path"
import WebSocket from "ws"

// PHOENIX_CLIENT may point at another phoenix build (e.g. a 1.7.x package directory) to check
// older clients with the same test.
const {Socket, Presence, LongPoll} = await import(process.env.PHOENIX_CLIENT ?? "phoenix")

const here = path.dirname(fileURLToPath(import.meta.url))
const binary = path.resolve(here, "../../target/debug/rollcall")
const DEADLINE_MS = 5000

let server
let baseUrl

before(async () => {
  server = spawn(binary, [
    "serve", "--port", "0", "--static-dir", path.resolve(here, "../../www"),
    // A short long-poll window so the long-poll client's pending request timers end quickly.
    "--longpoll-window-ms", "500",
  ], {
    stdio: ["ignore", "pipe", "inherit"],
    env: {...process.env, RUST_LOG: "warn"},
  })
  baseUrl = await new Promise((resolve, reject) => {
    let out = ""
    const timer = setTimeout(() => reject(new Error(`no listening line from ${binary}`)), 20000)
    server.on("error", reject)
    server.stdout.on("data", chunk => {
      out += chunk
      const m = out.match(/rollcall listening on (http:\/\/\S+)/)
      if (m) { clearTimeout(timer); resolve(m[1]) }
    })
  })
})

after(() => { server?.kill("SIGTERM") })

/** Resolves when `check()` returns a truthy value; polls on every event-loop turn. */
function until(check, what) {
  return new Promise((resolve, reject) => {
    const deadline = Date.now() + DEADLINE_MS
    const tick = () => {
      let value
      try { value = check() } catch (e) { return reject(e) }
      if (value) return resolve(value)
      if (Date.now() > deadline) return reject(new Error(`timed out waiting for ${what}`))
      setTimeout(tick, 5)
    }
    tick()
  })
}

function connect(userId, opts = {}) {
  const socket = new Socket(baseUrl.replace(/^http/, "ws") + "/socket", {
    transport: WebSocket,
    params: {user_id: userId},
    reconnectAfterMs: () => 60000,
    ...opts,
  })
  socket.connect()
  return socket
}

/** Joins `topic` with `params`; resolves {channel, presence} once the join reply is ok. */
function join(socket, topic, params = {}) {
  const channel = socket.channel(topic, params)
  const presence = new Presence(channel)
  return new Promise((resolve, reject) => {
    channel.join()
      .receive("ok", () => resolve({channel, presence}))
      .receive("error", reason => reject(new Error(`join refused: ${JSON.stringify(reason)}`)))
      .receive("timeout", () => reject(new Error("join timed out")))
  })
}

const listed = presence => presence.list((key, {metas}) => ({key, metas}))
const keysOf = presence => listed(presence).map(p => p.key).sort()

test("two clients in room:lobby see each other through phoenix's Presence", async () => {
  const a = connect("alice"), b = connect("bob")
  try {
    const ra = await join(a, "room:lobby", {meta: {status: "here"}})
    const rb = await join(b, "room:lobby", {meta: {status: "away"}})
    await until(() => keysOf(ra.presence).join() === "alice,bob", "alice to see bob")
    await until(() => keysOf(rb.presence).join() === "alice,bob", "bob to see alice")
    const alice = listed(rb.presence).find(p => p.key === "alice")
    assert.equal(alice.metas.length, 1)
    assert.equal(alice.metas[0].status, "here")
    assert.equal(typeof alice.metas[0].phx_ref, "string")
    assert.equal(typeof alice.metas[0].online_at, "number")
  } finally { a.disconnect(); b.disconnect() }
})

test("a meta update reaches the others as one presence with the new meta", async () => {
  const a = connect("u1"), b = connect("u2")
  try {
    const ra = await join(a, "room:update", {meta: {status: "here"}})
    const rb = await join(b, "room:update")
    // u2's own join diff must be in before the callbacks are registered, or it would be counted.
    await until(() => keysOf(rb.presence).includes("u1") && keysOf(rb.presence).includes("u2"),
      "u2 to see u1 and itself")
    const events = []
    rb.presence.onJoin((key, current, joined) => key === "u1" && events.push(["join", key, joined.metas.length]))
    rb.presence.onLeave((key, current, left) => key === "u1" && events.push(["leave", key, left.metas.length]))
    await new Promise((resolve, reject) =>
      ra.channel.push("track", {status: "busy"}).receive("ok", resolve).receive("error", reject))
    await until(() => {
      const u1 = listed(rb.presence).find(p => p.key === "u1")
      return u1 && u1.metas.length === 1 && u1.metas[0].status === "busy"
    }, "u2 to see u1 busy")
    const u1 = listed(rb.presence).find(p => p.key === "u1")
    assert.equal(typeof u1.metas[0].phx_ref_prev, "string")
    assert.deepEqual(events, [["join", "u1", 1], ["leave", "u1", 1]])
  } finally { a.disconnect(); b.disconnect() }
})

test("a client event is relayed to the others and acknowledged to the sender", async () => {
  const a = connect("s1"), b = connect("s2")
  try {
    const ra = await join(a, "room:chat")
    const rb = await join(b, "room:chat")
    const got = []
    rb.channel.on("new_msg", payload => got.push(payload))
    let echoed = false
    ra.channel.on("new_msg", () => { echoed = true })
    await new Promise((resolve, reject) =>
      ra.channel.push("new_msg", {body: "hi"}).receive("ok", resolve).receive("error", reject))
    await until(() => got.length === 1, "the relayed event")
    assert.deepEqual(got[0], {body: "hi"})
    // A heartbeat round trip after the relay: anything for the sender would have arrived by now.
    await new Promise(resolve => a.ping(resolve))
    assert.equal(echoed, false, "the sender does not receive its own event")
  } finally { a.disconnect(); b.disconnect() }
})

test("leaving the channel and closing the socket are both seen as leaves", async () => {
  const a = connect("l1"), b = connect("l2"), c = connect("l3")
  try {
    const ra = await join(a, "room:leave")
    const rb = await join(b, "room:leave")
    await join(c, "room:leave")
    await until(() => keysOf(ra.presence).join() === "l1,l2,l3", "all three listed")
    await new Promise(resolve => rb.channel.leave().receive("ok", resolve))
    assert.equal(rb.channel.state, "closed")
    await until(() => keysOf(ra.presence).join() === "l1,l3", "l2's channel leave")
    c.disconnect()
    await until(() => keysOf(ra.presence).join() === "l1", "l3's socket close")
  } finally { a.disconnect(); b.disconnect(); c.disconnect() }
})

test("a binary push is relayed as binary", async () => {
  const a = connect("b1"), b = connect("b2")
  try {
    const ra = await join(a, "room:binary")
    const rb = await join(b, "room:binary")
    const got = []
    rb.channel.on("blob", payload => got.push(payload))
    const bytes = new Uint8Array([1, 2, 3, 250]).buffer
    await new Promise((resolve, reject) =>
      ra.channel.push("blob", bytes).receive("ok", resolve).receive("error", reject))
    await until(() => got.length === 1, "the binary event")
    assert.ok(got[0] instanceof ArrayBuffer)
    assert.deepEqual([...new Uint8Array(got[0])], [1, 2, 3, 250])
  } finally { a.disconnect(); b.disconnect() }
})

test("a heartbeat makes a round trip", async () => {
  const a = connect("hb")
  try {
    await until(() => a.isConnected(), "the socket to open")
    const rtt = await new Promise(resolve => a.ping(resolve))
    assert.equal(typeof rtt, "number")
  } finally { a.disconnect() }
})

test("an unmatched topic is refused with a reason", async () => {
  const a = connect("x")
  try {
    await assert.rejects(join(a, "nowhere:1"), /unmatched topic/)
  } finally { a.disconnect() }
})

// phoenix 1.7.x's Ajax needs a browser global (XDomainRequest/XMLHttpRequest); 1.8 uses fetch.
const lpSkip = process.env.PHOENIX_CLIENT ? "a custom client's LongPoll may need a browser (1.7.x does)" : false

test("the long-poll transport carries joins and presence", {skip: lpSkip}, async () => {
  const a = connect("lp-ws")
  const lp = new Socket(baseUrl.replace(/^http/, "ws") + "/socket", {
    transport: LongPoll,
    longpollerTimeout: 1500,
    params: {user_id: "lp-poll"},
    reconnectAfterMs: () => 60000,
  })
  lp.connect()
  try {
    const ra = await join(a, "room:lp")
    const rl = await join(lp, "room:lp", {meta: {via: "longpoll"}})
    await until(() => keysOf(ra.presence).join() === "lp-poll,lp-ws", "the websocket client to see the poller")
    await until(() => keysOf(rl.presence).join() === "lp-poll,lp-ws", "the poller to see the websocket client")
    const got = []
    rl.channel.on("hello", p => got.push(p))
    ra.channel.push("hello", {n: 1})
    await until(() => got.length === 1, "the relayed event over long-poll")
  } finally { a.disconnect(); lp.disconnect() }
})

test("after a server-side close (1001) the client reconnects, rejoins and resyncs presence", async () => {
  // A second node whose idle timeout is shorter than the client's heartbeat interval.
  const idle = spawn(binary, ["serve", "--port", "0", "--idle-timeout-ms", "300"], {
    stdio: ["ignore", "pipe", "inherit"],
    env: {...process.env, RUST_LOG: "warn"},
  })
  try {
    const url = await new Promise((resolve, reject) => {
      let out = ""
      idle.on("error", reject)
      idle.stdout.on("data", chunk => {
        out += chunk
        const m = out.match(/rollcall listening on (http:\/\/\S+)/)
        if (m) resolve(m[1])
      })
    })
    const socket = new Socket(url.replace(/^http/, "ws") + "/socket", {
      transport: WebSocket,
      params: {user_id: "sleepy"},
      heartbeatIntervalMs: 60000,
      reconnectAfterMs: () => 50,
      rejoinAfterMs: () => 50,
    })
    const closes = []
    socket.onClose(event => closes.push(event.code))
    socket.connect()
    try {
      const {presence} = await join(socket, "room:idle")
      await until(() => keysOf(presence).join() === "sleepy", "the first sync")
      await until(() => closes.length >= 1, "the idle close")
      assert.equal(closes[0], 1001)
      let syncs = 0
      presence.onSync(() => { syncs += 1 })
      await until(() => syncs >= 1 && keysOf(presence).join() === "sleepy", "a resync after the rejoin")
    } finally { socket.disconnect() }
  } finally { idle.kill("SIGTERM") }
})
