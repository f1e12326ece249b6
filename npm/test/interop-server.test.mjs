// Interop: the official `phoenix` npm clients - 1.8.x (devDependency `phoenix`) and 1.7.x
// (devDependency `phoenix17`) - against real `rollcall serve` processes. Every test runs once per
// client version, on a server of its own; the version is in the test's name.
// Run by `make test` after `cargo build -p rollcall-server` (npm test).

import assert from "node:assert/strict"
import {after, before, test} from "node:test"
import WebSocket from "ws"
import {clients, skipUnbuilt, startServer, staticDir, until} from "./interop-support.mjs"
import {installXMLHttpRequest} from "./xhr-node.mjs"

const servers = []
after(() => {
  for (const proc of servers) proc.kill("SIGTERM")
})

const listed = presence => presence.list((key, {metas}) => ({key, metas}))
const keysOf = presence =>
  listed(presence)
    .map(p => p.key)
    .sort()

for (const phx of clients) interopSuite(phx)

/** Registers every interop test for one phoenix client, against one server started for it. */
function interopSuite(phx) {
  const {Socket, Presence, LongPoll} = phx
  const named = title => `${title} [${phx.label}]`
  let baseUrl

  before(async () => {
    if (skipUnbuilt) return
    const {http} = await startServer(
      [
        "--port",
        "0",
        "--static-dir",
        staticDir,
        // A short long-poll window so the long-poll client's pending request timers end quickly.
        "--longpoll-window-ms",
        "500",
      ],
      {onSpawn: proc => servers.push(proc)},
    )
    baseUrl = http
  })

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
      channel
        .join()
        .receive("ok", () => resolve({channel, presence}))
        .receive("error", reason => reject(new Error(`join refused: ${JSON.stringify(reason)}`)))
        .receive("timeout", () => reject(new Error("join timed out")))
    })
  }

  test(named("two clients in room:lobby see each other through phoenix's Presence"), {skip: skipUnbuilt}, async () => {
    const a = connect("alice"),
      b = connect("bob")
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
    } finally {
      a.disconnect()
      b.disconnect()
    }
  })

  test(named("a meta update reaches the others as one presence with the new meta"), {skip: skipUnbuilt}, async () => {
    const a = connect("u1"),
      b = connect("u2")
    try {
      const ra = await join(a, "room:update", {meta: {status: "here"}})
      const rb = await join(b, "room:update")
      // u2's own join diff must be in before the callbacks are registered, or it would be counted.
      await until(
        () => keysOf(rb.presence).includes("u1") && keysOf(rb.presence).includes("u2"),
        "u2 to see u1 and itself",
      )
      const events = []
      rb.presence.onJoin((key, current, joined) => key === "u1" && events.push(["join", key, joined.metas.length]))
      rb.presence.onLeave((key, current, left) => key === "u1" && events.push(["leave", key, left.metas.length]))
      await new Promise((resolve, reject) =>
        ra.channel.push("track", {status: "busy"}).receive("ok", resolve).receive("error", reject),
      )
      await until(() => {
        const u1 = listed(rb.presence).find(p => p.key === "u1")
        return u1 && u1.metas.length === 1 && u1.metas[0].status === "busy"
      }, "u2 to see u1 busy")
      const u1 = listed(rb.presence).find(p => p.key === "u1")
      assert.equal(typeof u1.metas[0].phx_ref_prev, "string")
      assert.deepEqual(events, [
        ["join", "u1", 1],
        ["leave", "u1", 1],
      ])
    } finally {
      a.disconnect()
      b.disconnect()
    }
  })

  /**
   * Resolves once `user`'s own presence reached its channel: the server has subscribed it by then.
   * The join reply alone does not promise that here (see the join-reply race test below).
   */
  const untilSubscribed = ({presence}, user) => until(() => keysOf(presence).includes(user), `${user} subscribed`)

  test(named("a client event is relayed to the others and acknowledged to the sender"), {
    skip: skipUnbuilt,
  }, async () => {
    const a = connect("s1"),
      b = connect("s2")
    try {
      const ra = await join(a, "room:chat")
      const rb = await join(b, "room:chat")
      await untilSubscribed(rb, "s2")
      const got = []
      rb.channel.on("new_msg", payload => got.push(payload))
      let echoed = false
      ra.channel.on("new_msg", () => {
        echoed = true
      })
      await new Promise((resolve, reject) =>
        ra.channel.push("new_msg", {body: "hi"}).receive("ok", resolve).receive("error", reject),
      )
      await until(() => got.length === 1, "the relayed event")
      assert.deepEqual(got[0], {body: "hi"})
      // A heartbeat round trip after the relay: anything for the sender would have arrived by now.
      await new Promise(resolve => a.ping(resolve))
      assert.equal(echoed, false, "the sender does not receive its own event")
    } finally {
      a.disconnect()
      b.disconnect()
    }
  })

  test(named("leaving the channel and closing the socket are both seen as leaves"), {skip: skipUnbuilt}, async () => {
    const a = connect("l1"),
      b = connect("l2"),
      c = connect("l3")
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
    } finally {
      a.disconnect()
      b.disconnect()
      c.disconnect()
    }
  })

  // Phoenix subscribes a channel to its topic before it replies to the join, so anything broadcast
  // after the reply reaches it; rollcall does the same (server/src/socket.rs, join). Before it
  // did, a broadcast sent right after the reply could miss the new member.
  test(named("a broadcast sent right after another client's join reply reaches that client"), {
    skip: skipUnbuilt,
  }, async () => {
    // A node of its own without rate limits: each attempt is several messages in a few ms.
    let node
    try {
      const {http} = await startServer(["--port", "0", "--event-rate", "0"], {
        onSpawn: proc => {
          node = proc
        },
      })
      const open = userId => {
        const socket = new Socket(http.replace(/^http/, "ws") + "/socket", {
          transport: WebSocket,
          params: {user_id: userId},
          reconnectAfterMs: () => 60000,
        })
        socket.connect()
        return socket
      }
      const a = open("race-a"),
        b = open("race-b")
      const pushed = (channel, event, payload) =>
        new Promise((resolve, reject) => channel.push(event, payload).receive("ok", resolve).receive("error", reject))
      try {
        for (let i = 0; i < 300; i++) {
          const topic = `room:race${i}`
          const ra = await join(a, topic)
          const channel = b.channel(topic, {})
          const presence = new Presence(channel)
          const got = []
          channel.on("ping", payload => got.push(["ping", payload.i]))
          channel.on("marker", payload => got.push(["marker", payload.i]))
          // The sender broadcasts the moment the receiver's join reply arrives.
          await new Promise((resolve, reject) =>
            channel.join().receive("ok", () => pushed(ra.channel, "ping", {i}).then(resolve, reject)),
          )
          // Once the receiver is surely subscribed, a second broadcast: the tracker handles
          // broadcasts in order, so when the marker has come, the first has come or never will.
          await untilSubscribed({presence}, "race-b")
          await pushed(ra.channel, "marker", {i})
          await until(() => got.some(([event]) => event === "marker"), `marker ${i}`)
          assert.deepEqual(
            got,
            [
              ["ping", i],
              ["marker", i],
            ],
            `attempt ${i}`,
          )
          ra.channel.leave()
          channel.leave()
        }
      } finally {
        a.disconnect()
        b.disconnect()
      }
    } finally {
      node?.kill("SIGTERM")
    }
  })

  test(named("a binary push is relayed as binary"), {skip: skipUnbuilt}, async () => {
    const a = connect("b1"),
      b = connect("b2")
    try {
      const ra = await join(a, "room:binary")
      const rb = await join(b, "room:binary")
      await untilSubscribed(rb, "b2")
      const got = []
      rb.channel.on("blob", payload => got.push(payload))
      const bytes = new Uint8Array([1, 2, 3, 250]).buffer
      await new Promise((resolve, reject) =>
        ra.channel.push("blob", bytes).receive("ok", resolve).receive("error", reject),
      )
      await until(() => got.length === 1, "the binary event")
      assert.ok(got[0] instanceof ArrayBuffer)
      assert.deepEqual([...new Uint8Array(got[0])], [1, 2, 3, 250])
    } finally {
      a.disconnect()
      b.disconnect()
    }
  })

  test(named("a heartbeat makes a round trip"), {skip: skipUnbuilt}, async () => {
    const a = connect("hb")
    try {
      await until(() => a.isConnected(), "the socket to open")
      const rtt = await new Promise((resolve, reject) => {
        const timer = setTimeout(() => reject(new Error("no heartbeat reply before the deadline")), 10000)
        a.ping(ms => {
          clearTimeout(timer)
          resolve(ms)
        })
      })
      // The round trip in milliseconds, measured on the client's clock.
      assert.ok(Number.isFinite(rtt) && rtt >= 0 && rtt <= 10000, `rtt ${rtt}`)
    } finally {
      a.disconnect()
    }
  })

  test(named("an unmatched topic is refused with a reason"), {skip: skipUnbuilt}, async () => {
    const a = connect("x")
    try {
      await assert.rejects(join(a, "nowhere:1"), /unmatched topic/)
    } finally {
      a.disconnect()
    }
  })

  test(named("the long-poll transport carries joins and presence"), {skip: skipUnbuilt}, async t => {
    // In Node, 1.7's long-poll needs an XMLHttpRequest: our node:http one, for this test only
    // (1.8 would prefer it over fetch, and its tests run without it).
    if (phx.needsXHR) t.after(installXMLHttpRequest())
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
    } finally {
      a.disconnect()
      lp.disconnect()
    }
  })

  test(named("after a server-side close (1001) the client reconnects, rejoins and resyncs presence"), {
    skip: skipUnbuilt,
  }, async () => {
    // A second node whose idle timeout is shorter than the client's heartbeat interval.
    let idle
    try {
      const {http: url} = await startServer(["--port", "0", "--idle-timeout-ms", "300"], {
        onSpawn: p => {
          idle = p
        },
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
        presence.onSync(() => {
          syncs += 1
        })
        await until(() => syncs >= 1 && keysOf(presence).join() === "sleepy", "a resync after the rejoin")
      } finally {
        socket.disconnect()
      }
    } finally {
      idle?.kill("SIGTERM")
    }
  })
}
