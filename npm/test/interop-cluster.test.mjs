// Interop across a cluster: the official `phoenix` npm clients (1.8.x and 1.7.x, each in a test of
// its own named after the version) on three `rollcall serve` processes joined over the mesh.
// Users on either node see each other (with the node each is connected to), relayed events cross
// nodes, and a node's SIGTERM makes its users leave the other node.
// Run by `make test` after `cargo build -p rollcall-server` (npm test).

import assert from "node:assert/strict"
import {after, test} from "node:test"
import WebSocket from "ws"
import {clients, skipUnbuilt, startServer, staticDir, until} from "./interop-support.mjs"

const DEADLINE_MS = 10000

const nodes = []
after(() => {
  for (const n of nodes) n.kill("SIGKILL")
})

/** Starts a mesh node; resolves {proc, http, cluster} once it printed both addresses. */
function startNode(name, peers = []) {
  const args = [
    "--port",
    "0",
    "--node",
    name,
    "--static-dir",
    staticDir,
    "--cluster",
    "mesh",
    "--cluster-listen",
    "127.0.0.1:0",
    "--cluster-secret",
    "interop",
    "--broadcast-period-ms",
    "100",
    "--down-period-ms",
    "60000",
    "--permdown-period-ms",
    "120000",
  ]
  if (peers.length) args.push("--peers", peers.join(","))
  return startServer(args, {cluster: true, onSpawn: proc => nodes.push(proc)})
}

const ids = p => p.list(id => id).sort()

for (const {label, Socket, Presence} of clients) {
  const joinRoom = (node, userId) => {
    const socket = new Socket(node.http.replace(/^http/, "ws") + "/socket", {
      transport: WebSocket,
      params: {user_id: userId},
      reconnectAfterMs: () => 60000,
    })
    socket.connect()
    const channel = socket.channel("room:cluster", {meta: {name: userId}})
    const presence = new Presence(channel)
    return new Promise((resolve, reject) => {
      channel
        .join()
        .receive("ok", () => resolve({socket, channel, presence}))
        .receive("error", reason => reject(new Error(`join refused: ${JSON.stringify(reason)}`)))
        .receive("timeout", () => reject(new Error("join timed out")))
    })
  }

  test(`phoenix clients on three mesh nodes see each other, relay events, and see a SIGTERM leave [${label}]`, {
    skip: skipUnbuilt,
  }, async () => {
    const a = await startNode("a")
    const b = await startNode("b", [a.cluster])
    // c knows only a and learns b from it.
    const c = await startNode("c", [a.cluster])
    const alice = await joinRoom(a, "alice")
    const bob = await joinRoom(b, "bob")
    const carol = await joinRoom(c, "carol")
    try {
      for (const [who, user] of [
        ["alice", alice],
        ["bob", bob],
        ["carol", carol],
      ]) {
        await until(() => ids(user.presence).join() === "alice,bob,carol", `${who} sees everyone`, DEADLINE_MS)
      }
      const nodeOf = (p, id) => p.list((key, {metas}) => [key, metas[0].node]).find(([k]) => k === id)?.[1]
      assert.equal(nodeOf(alice.presence, "bob"), "b")
      assert.equal(nodeOf(bob.presence, "carol"), "c")
      assert.equal(nodeOf(carol.presence, "alice"), "a")

      // A meta update on c reaches a as one new version of carol's meta.
      carol.channel.push("track", {status: "away"})
      await until(
        () =>
          alice.presence
            .list((k, {metas}) => k === "carol" && metas.length === 1 && metas[0].status === "away")
            .some(Boolean),
        "carol away on a",
        DEADLINE_MS,
      )

      const heard = []
      alice.channel.on("shout", payload => heard.push(payload))
      carol.channel.on("shout", payload => heard.push(payload))
      bob.channel.push("shout", {body: "hi from b"})
      await until(() => heard.length === 2, "bob's shout on a and c", DEADLINE_MS)
      assert.deepEqual(heard, [{body: "hi from b"}, {body: "hi from b"}])

      // The down period is a minute: only the graceful permdown explains a prompt leave.
      b.proc.kill("SIGTERM")
      await until(() => ids(alice.presence).join() === "alice,carol", "bob leaves a after b's SIGTERM", DEADLINE_MS)
      await until(() => ids(carol.presence).join() === "alice,carol", "bob leaves c after b's SIGTERM", DEADLINE_MS)
    } finally {
      alice.socket.disconnect()
      bob.socket.disconnect()
      carol.socket.disconnect()
      // This test's nodes are done; the next client version starts a mesh of its own.
      for (const {proc} of [a, b, c]) proc.kill("SIGKILL")
    }
  })
}
