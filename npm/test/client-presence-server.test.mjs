// The whole package as an app uses it — our Socket, Channel and Presence (on the wasm core) —
// against a real `rollcall` process on 127.0.0.1: two users see each other, a meta update and a
// leave arrive through onJoin / onLeave / onSync. The server is built by cargo
// when stale (locate.mjs); without cargo the suite is skipped, except under make test and CI.

import assert from "node:assert/strict"
import {spawn} from "node:child_process"
import {after, before, test} from "node:test"
import {Presence, Socket} from "rollcall"
import WebSocket from "ws"
import {serverBinary, unavailable} from "./locate.mjs"

const located = serverBinary()
const bin = located.path
const skip = unavailable(located.missing || false)
const DEADLINE_MS = 10000

let server
let url

/** Starts `rollcall serve` on `port` (0: any) and resolves with its socket URL. */
function start(port = 0) {
  server = spawn(bin, ["serve", "--host", "127.0.0.1", "--port", String(port)], {stdio: ["ignore", "pipe", "pipe"]})
  return new Promise((resolve, reject) => {
    let out = ""
    const timer = setTimeout(() => reject(new Error(`server did not start:\n${out}`)), 20000)
    const onData = chunk => {
      out += chunk
      const m = out.match(/listening on (http:\/\/127\.0\.0\.1:\d+)/)
      if (m) {
        clearTimeout(timer)
        resolve(m[1].replace("http", "ws") + "/socket")
      }
    }
    server.stdout.on("data", onData)
    server.stderr.on("data", onData)
  })
}

function stop() {
  return new Promise(resolve => {
    if (!server || server.exitCode !== null) {
      return resolve()
    }
    server.once("exit", resolve)
    server.kill("SIGTERM")
  })
}

before(async () => {
  if (!skip) {
    url = await start()
  }
})
after(stop)

/** Resolves once `check()` is true, re-checked after every `onSync`; rejects at the deadline. */
function until(presence, check, what) {
  return new Promise((resolve, reject) => {
    const timer = setTimeout(() => reject(new Error(`timed out waiting for ${what}`)), DEADLINE_MS)
    const poll = () => {
      if (check()) {
        clearTimeout(timer)
        resolve()
      }
    }
    presence.onSync(poll)
    poll()
  })
}

function member(userId, meta, opts = {}) {
  const socket = new Socket(url, {transport: WebSocket, params: {user_id: userId}, ...opts})
  socket.connect()
  const channel = socket.channel("room:npm-client", {meta})
  const presence = new Presence(channel)
  const events = []
  presence.onJoin((key, current, joined) =>
    events.push(["join", key, current?.metas.length ?? 0, joined.metas.map(m => m.name)]),
  )
  presence.onLeave((key, current, left) =>
    events.push(["leave", key, current.metas.length, left.metas.map(m => m.name)]),
  )
  channel.join()
  return {socket, channel, presence, events}
}

test("our Socket, Channel and Presence work end to end against rollcall", {skip}, async () => {
  const alice = member("alice", {name: "Alice"})
  const bob = member("bob", {name: "Bob"})
  const keys = p => p.list(key => key).sort()

  await until(alice.presence, () => keys(alice.presence).join() === "alice,bob", "alice to see bob")
  await until(bob.presence, () => keys(bob.presence).join() === "alice,bob", "bob to see alice")
  assert.equal(alice.presence.inPendingSyncState(), false)
  assert.equal(alice.presence.joinRef, alice.channel.joinRef())

  // A meta update: one leave + one join of the same key, only the new meta left.
  bob.channel.push("track", {name: "Bobby"})
  await until(alice.presence, () => alice.presence.state.bob?.metas[0].name === "Bobby", "bob's new name")
  const bobMetas = alice.presence.state.bob.metas
  assert.equal(bobMetas.length, 1)
  assert.ok(bobMetas[0].phx_ref_prev, "an update carries phx_ref_prev")
  assert.deepEqual(alice.events.filter(e => e[1] === "bob").slice(-2), [
    ["join", "bob", 1, ["Bobby"]],
    ["leave", "bob", 1, ["Bob"]],
  ])

  // Bob goes away: Alice sees him leave.
  bob.socket.disconnect()
  await until(alice.presence, () => keys(alice.presence).join() === "alice", "bob to leave")
  assert.deepEqual(alice.events.at(-1), ["leave", "bob", 0, ["Bobby"]])
  alice.socket.disconnect()
})

test("after a server restart our client rejoins and presence resynchronises without duplicates", {skip}, async () => {
  const erin = member("erin", {name: "Erin"})
  const fred = member("fred", {name: "Fred"})
  const keys = p =>
    p
      .list((key, {metas}) => `${key}:${metas.length}`)
      .sort()
      .join()
  await until(erin.presence, () => keys(erin.presence) === "erin:1,fred:1", "erin to see fred")
  const firstJoinRef = erin.channel.joinRef()

  await stop()
  const port = new URL(url.replace("ws", "http")).port
  url = await start(port)
  // The channel rejoins with a new join ref; presence holds diffs until the new presence_state.
  await until(
    erin.presence,
    () =>
      erin.channel.joinRef() !== firstJoinRef &&
      !erin.presence.inPendingSyncState() &&
      keys(erin.presence) === "erin:1,fred:1",
    "a whole list again",
  )
  await until(fred.presence, () => keys(fred.presence) === "erin:1,fred:1", "fred to see erin again")
  erin.socket.disconnect()
  fred.socket.disconnect()
})

test("when the WebSocket cannot connect our client falls back to long-poll and still sees presence", {
  skip,
}, async () => {
  // A WebSocket that can never open: the error before any connection triggers the fallback.
  class Unreachable extends WebSocket {
    constructor(_url, protocols) {
      super("ws://127.0.0.1:1/socket/websocket", protocols)
    }
  }
  const gina = member("gina", {name: "Gina"}, {transport: Unreachable, longPollFallbackMs: 2000})
  const hal = member("hal", {name: "Hal"})
  const keys = p =>
    p
      .list(key => key)
      .sort()
      .join()
  await until(gina.presence, () => keys(gina.presence) === "gina,hal", "gina (long-poll) to see hal")
  await until(hal.presence, () => keys(hal.presence) === "gina,hal", "hal to see gina")
  assert.equal(gina.socket.transport.name, "LongPoll")
  hal.channel.push("track", {name: "Hal 9000"})
  await until(gina.presence, () => gina.presence.state.hal?.metas[0].name === "Hal 9000", "an update over long-poll")
  gina.socket.disconnect()
  hal.socket.disconnect()
})
