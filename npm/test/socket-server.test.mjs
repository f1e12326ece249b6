// Socket/Channel against a real `rollcall` server process on 127.0.0.1, with
// the `ws` package as the WebSocket (Node 20 has no global one) and, for one
// test, LongPoll over fetch. The server is built by cargo when stale
// (locate.mjs); without cargo the suite is skipped, except under make test and CI.

import assert from "node:assert/strict"
import {spawn} from "node:child_process"
import fs from "node:fs"
import {after, before, describe, test} from "node:test"
import {LongPoll, Socket} from "rollcall"
import WebSocket from "ws"
import {serverBinary, unavailable} from "./locate.mjs"

const located = serverBinary()
const bin = located.path
const skip = unavailable(located.missing || false)
const DEADLINE_MS = 10000

let server
let baseUrl

// Starts `rollcall serve --port 0` and resolves with the address it prints.
const startServer = () =>
  new Promise((resolve, reject) => {
    const child = spawn(bin, ["serve", "--host", "127.0.0.1", "--port", "0"], {
      stdio: ["ignore", "pipe", "pipe"],
      env: {...process.env, RUST_LOG: "info", NO_COLOR: "1"},
    })
    let output = ""
    const timer = setTimeout(() => reject(new Error(`server did not report its address in time:\n${output}`)), 20000)
    const onData = chunk => {
      output += chunk
      const match = output.match(/http:\/\/(127\.0\.0\.1:\d+)/)
      if (match) {
        clearTimeout(timer)
        resolve({child, address: match[1]})
      }
    }
    child.stdout.on("data", onData)
    child.stderr.on("data", onData)
    child.on("exit", code => {
      clearTimeout(timer)
      reject(new Error(`server exited with ${code}:\n${output}`))
    })
  })

// Resolves with [status, response] of a push's first reply, or rejects after the deadline.
const replyOf = push =>
  new Promise((resolve, reject) => {
    const timer = setTimeout(() => reject(new Error("no reply before the deadline")), DEADLINE_MS)
    for (const status of ["ok", "error", "timeout"]) {
      push.receive(status, response => {
        clearTimeout(timer)
        resolve([status, response])
      })
    }
  })

const connected = socket =>
  new Promise((resolve, reject) => {
    const timer = setTimeout(() => reject(new Error("socket did not open before the deadline")), DEADLINE_MS)
    socket.onOpen(() => {
      clearTimeout(timer)
      resolve()
    })
    socket.connect()
  })

// Resolves once every thread of process `pid` is in the stopped state ("T" in /proc).
async function allThreadsStopped(pid) {
  const deadline = Date.now() + DEADLINE_MS
  for (;;) {
    const tasks = fs.readdirSync(`/proc/${pid}/task`)
    const states = tasks.map(task => {
      const stat = fs.readFileSync(`/proc/${pid}/task/${task}/stat`, "utf8")
      return stat.slice(stat.lastIndexOf(")") + 2, stat.lastIndexOf(")") + 3)
    })
    if (states.every(state => state === "T")) return
    if (Date.now() > deadline) throw new Error(`server threads not stopped in time: ${states.join("")}`)
    await new Promise(resolve => setTimeout(resolve, 5))
  }
}

describe("against a real rollcall server", {skip}, () => {
  before(async () => {
    const started = await startServer()
    server = started.child
    baseUrl = `ws://${started.address}/socket`
  })
  after(() => {
    if (server) {
      server.removeAllListeners("exit")
      server.kill()
    }
  })

  test("joining a room gets an ok reply over a WebSocket", async () => {
    const socket = new Socket(baseUrl, {transport: WebSocket})
    try {
      await connected(socket)
      const channel = socket.channel("room:lobby", {user: "ana"})
      const [status] = await replyOf(channel.join(DEADLINE_MS))
      assert.equal(status, "ok")
      assert.equal(channel.state, "joined")
    } finally {
      socket.disconnect()
    }
  })

  test("a heartbeat is answered (ping round trip)", async () => {
    const socket = new Socket(baseUrl, {transport: WebSocket})
    try {
      await connected(socket)
      const rtt = await new Promise((resolve, reject) => {
        const timer = setTimeout(() => reject(new Error("no heartbeat reply before the deadline")), DEADLINE_MS)
        assert.equal(
          socket.ping(ms => {
            clearTimeout(timer)
            resolve(ms)
          }),
          true,
        )
      })
      // The round trip in milliseconds, measured on the client's clock.
      assert.ok(Number.isFinite(rtt) && rtt >= 0 && rtt <= DEADLINE_MS, `rtt ${rtt}`)
      assert.equal(socket.pendingHeartbeatRef, null)
    } finally {
      socket.disconnect()
    }
  })

  test("a binary push is read by the server and answered with its ref", async () => {
    const socket = new Socket(baseUrl, {transport: WebSocket})
    try {
      await connected(socket)
      const channel = socket.channel("room:bin", {user: "bo"})
      assert.equal((await replyOf(channel.join(DEADLINE_MS)))[0], "ok")
      const [status] = await replyOf(channel.push("blob", new Uint8Array([1, 2, 3, 250]).buffer, DEADLINE_MS))
      assert.equal(status, "ok")
      // The connection is still healthy after the binary frame.
      assert.equal(socket.isConnected(), true)
      assert.equal((await replyOf(channel.push("text", {n: 1}, DEADLINE_MS)))[0], "ok")
    } finally {
      socket.disconnect()
    }
  })

  test("a push the server does not answer in time reports timeout, and the socket carries on", async () => {
    const socket = new Socket(baseUrl, {transport: WebSocket})
    try {
      await connected(socket)
      const channel = socket.channel("room:slow", {track: false})
      assert.equal((await replyOf(channel.join(DEADLINE_MS)))[0], "ok")
      // A stopped server reads nothing: the push's timer runs out first. kill() returns before
      // every thread of the server has stopped, so wait until the kernel reports them stopped.
      server.kill("SIGSTOP")
      await allThreadsStopped(server.pid)
      let late
      try {
        const push = channel.push("nudge", {n: 1}, 300)
        late = new Promise(resolve => push.receive("ok", () => resolve("ok")))
        assert.equal((await replyOf(push))[0], "timeout")
      } finally {
        server.kill("SIGCONT")
      }
      // The server answers the old push once it runs again; the timed-out push ignores it.
      const next = await replyOf(channel.push("nudge", {n: 2}, DEADLINE_MS))
      assert.equal(next[0], "ok")
      assert.equal(await Promise.race([late, new Promise(r => setTimeout(() => r("ignored"), 100))]), "ignored")
    } finally {
      socket.disconnect()
    }
  })

  test("a binary broadcast reaches a LongPoll member as an ArrayBuffer", async () => {
    const sender = new Socket(baseUrl, {transport: WebSocket})
    const receiver = new Socket(baseUrl, {transport: LongPoll})
    try {
      await connected(sender)
      await connected(receiver)
      const inbox = receiver.channel("room:lpbin", {track: false})
      const got = new Promise((resolve, reject) => {
        const timer = setTimeout(() => reject(new Error("no binary broadcast before the deadline")), DEADLINE_MS)
        inbox.on("blob", payload => {
          clearTimeout(timer)
          resolve(payload)
        })
      })
      assert.equal((await replyOf(inbox.join(DEADLINE_MS)))[0], "ok")
      const outbox = sender.channel("room:lpbin", {track: false})
      assert.equal((await replyOf(outbox.join(DEADLINE_MS)))[0], "ok")
      assert.equal((await replyOf(outbox.push("blob", new Uint8Array([0, 1, 2, 250]).buffer, DEADLINE_MS)))[0], "ok")
      const payload = await got
      assert.ok(payload instanceof ArrayBuffer, "an ArrayBuffer, as over a WebSocket")
      assert.deepEqual([...new Uint8Array(payload)], [0, 1, 2, 250])
    } finally {
      sender.disconnect()
      receiver.disconnect()
    }
  })

  test("joining a room works over the LongPoll transport", async () => {
    const socket = new Socket(baseUrl, {transport: LongPoll})
    try {
      await connected(socket)
      const channel = socket.channel("room:lp", {user: "cy"})
      const [status] = await replyOf(channel.join(DEADLINE_MS))
      assert.equal(status, "ok")
    } finally {
      socket.disconnect()
    }
  })
})
