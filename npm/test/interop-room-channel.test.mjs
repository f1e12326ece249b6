// Interop: the RoomChannel example (server/examples/room_channel.rs, Phoenix's Presence guide on
// rollcall's channel handlers) driven by the official `phoenix` npm clients, 1.8.x and 1.7.x, each
// against a process of its own. What the guide's client code expects must hold: the lobby joins,
// other rooms answer "unauthorized", Presence lists every user with the string `online_at` the
// channel tracked, leaves are seen, and `new_msg` reaches everyone with the sender's user.
// Run by `make test` after `cargo build -p rollcall-server --examples` (npm test).

import assert from "node:assert/strict"
import {after, before, test} from "node:test"
import WebSocket from "ws"
import {clients, example, skipUnbuiltExample, startProgram, until} from "./interop-support.mjs"

const skip = skipUnbuiltExample("room_channel")
const processes = []
after(() => {
  for (const proc of processes) proc.kill("SIGTERM")
})

const keysOf = presence =>
  presence
    .list(key => key)
    .sort()
    .join()

for (const phx of clients) roomChannelSuite(phx)

/** Registers the RoomChannel tests for one phoenix client, against an example process of its own. */
function roomChannelSuite(phx) {
  const {Socket, Presence} = phx
  const named = title => `${title} [${phx.label}]`
  let url

  before(async () => {
    if (skip) return
    const {http} = await startProgram(example("room_channel"), ["--port", "0"], {
      onSpawn: proc => processes.push(proc),
    })
    url = http.replace(/^http/, "ws") + "/socket"
  })

  function connect(userId) {
    const socket = new Socket(url, {
      transport: WebSocket,
      params: {user_id: userId},
      reconnectAfterMs: () => 60000,
    })
    socket.connect()
    return socket
  }

  /** The guide's client: a channel, its Presence, and every `new_msg` it receives. */
  function room(socket, topic) {
    const channel = socket.channel(topic, {})
    const presence = new Presence(channel)
    const messages = []
    let synced = 0
    presence.onSync(() => {
      synced += 1
    })
    channel.on("new_msg", payload => messages.push(payload))
    const joined = new Promise((resolve, reject) =>
      channel
        .join()
        .receive("ok", resolve)
        .receive("error", reject)
        .receive("timeout", () => reject(new Error("join timed out"))),
    )
    return {channel, presence, messages, joined, synced: () => synced}
  }

  test(named("users in room:lobby see each other with the online_at the channel tracked"), {skip}, async () => {
    const a = connect("alice"),
      b = connect("bob")
    try {
      const ra = room(a, "room:lobby")
      await ra.joined
      // presence_state arrives after the join: Presence syncs with alice listed.
      await until(() => keysOf(ra.presence) === "alice", "alice to see herself")
      const rb = room(b, "room:lobby")
      await rb.joined
      await until(() => keysOf(rb.presence) === "alice,bob", "bob to see both")
      await until(() => keysOf(ra.presence) === "alice,bob", "alice to see bob")
      const bob = ra.presence.list((key, {metas}) => ({key, metas})).find(p => p.key === "bob")
      assert.equal(bob.metas.length, 1)
      assert.match(bob.metas[0].online_at, /^\d+$/, "online_at is the string the channel tracked")
      assert.equal(typeof bob.metas[0].phx_ref, "string")
      assert.ok(rb.synced() >= 1)
      b.disconnect()
      await until(() => keysOf(ra.presence) === "alice", "alice to see bob leave")
    } finally {
      a.disconnect()
      b.disconnect()
    }
  })

  test(named("new_msg is broadcast to everyone in the room with the sender's user"), {skip}, async () => {
    const a = connect("carol"),
      b = connect("dave")
    try {
      const ra = room(a, "room:lobby")
      const rb = room(b, "room:lobby")
      await Promise.all([ra.joined, rb.joined])
      await until(() => keysOf(ra.presence).includes("dave"), "both subscribed")
      ra.channel.push("new_msg", {body: "hello"})
      await until(() => rb.messages.length === 1 && ra.messages.length === 1, "the message on both sides")
      assert.deepEqual(rb.messages[0], {body: "hello", user: "carol"})
      assert.deepEqual(ra.messages[0], {body: "hello", user: "carol"})
      // A push the channel does not handle gets its error reply.
      const reply = await new Promise(resolve =>
        ra.channel
          .push("new_msg", {})
          .receive("error", resolve)
          .receive("ok", () => resolve("ok")),
      )
      assert.deepEqual(reply, {reason: "new_msg needs a body"})
    } finally {
      a.disconnect()
      b.disconnect()
    }
  })

  test(named("a private room is refused with the channel's reason"), {skip}, async () => {
    const a = connect("eve")
    try {
      const r = room(a, "room:secret")
      const reason = await r.joined.then(
        () => "joined",
        response => response,
      )
      assert.deepEqual(reason, {reason: "unauthorized"})
      r.channel.leave()
    } finally {
      a.disconnect()
    }
  })
}
