// LongPoll over real HTTP (fetch, as in Node and workers) against a small
// long-poll endpoint on 127.0.0.1 that this test scripts.
import {after, before, test} from "node:test"
import assert from "node:assert/strict"
import http from "node:http"
import {LongPoll} from "rollcall"

let server
let port
// Per-test endpoint ("/<name>/socket/longpoll") -> resolvers for its next requests,
// so a straggling poll from one test is never handed to another.
const waiting = new Map()

const nextRequest = name =>
  new Promise(resolve => {
    if (!waiting.has(name)) waiting.set(name, [])
    waiting.get(name).push(resolve)
  })

before(async () => {
  server = http.createServer((req, res) => {
    let body = ""
    req.on("data", chunk => (body += chunk))
    req.on("end", () => {
      const reply = json => {
        res.writeHead(200, {"content-type": "application/json"})
        res.end(JSON.stringify(json))
      }
      const name = req.url.split("/")[1]
      const resolve = (waiting.get(name) || []).shift()
      if (resolve) resolve({method: req.method, url: req.url, headers: req.headers, body, reply, res})
      else reply({status: 204, token: null, messages: []})
    })
  })
  await new Promise(resolve => server.listen(0, "127.0.0.1", resolve))
  port = server.address().port
})

after(() => {
  server.closeAllConnections()
  server.close()
})

const events = lp => {
  const log = []
  const seen = new Map()
  const push = entry => {
    log.push(entry)
    for (const [match, resolve] of seen) if (match(entry)) resolve(entry)
  }
  lp.onopen = () => push("open")
  lp.onerror = e => push(["error", e])
  lp.onmessage = m => push(["message", m.data])
  lp.onclose = e => push(["close", e.code, e.reason])
  log.until = match =>
    new Promise(resolve => {
      const found = log.find(match)
      if (found) resolve(found)
      else seen.set(match, resolve)
    })
  return log
}

test("opens a session, sends an ndjson batch and receives messages over fetch", async () => {
  const lp = new LongPoll(`ws://127.0.0.1:${port}/one/socket/websocket?vsn=2.0.0`, ["phoenix", "base64url.bearer.phx.dG9r"])
  lp.timeout = 10000
  const log = events(lp)

  const first = await nextRequest("one")
  assert.equal(first.method, "GET")
  assert.equal(first.url, "/one/socket/longpoll?vsn=2.0.0&")
  assert.equal(first.headers["x-phoenix-authtoken"], "tok")
  first.reply({status: 410, token: "s1", messages: []})
  await log.until(e => e === "open")

  const poll = await nextRequest("one")
  assert.equal(poll.url, "/one/socket/longpoll?vsn=2.0.0&token=s1")
  const postArrives = nextRequest("one")
  lp.send('[null,"1","t","a",{}]')
  lp.send(new Uint8Array([0, 1]).buffer)
  const post = await postArrives
  assert.equal(post.method, "POST")
  assert.equal(post.headers["content-type"], "application/x-ndjson")
  assert.equal(post.body, '[null,"1","t","a",{}]\nAAE=')
  post.reply({status: 200})

  poll.reply({status: 200, token: "s1", messages: ['[null,null,"t","e",{}]']})
  assert.deepEqual(await log.until(e => e[0] === "message"), ["message", '[null,null,"t","e",{}]'])
  lp.close(1000, "done", true)
})

test("close aborts the pending poll without reporting an error", async () => {
  const lp = new LongPoll(`ws://127.0.0.1:${port}/two/socket/websocket`)
  lp.timeout = 10000
  const log = events(lp)
  ;(await nextRequest("two")).reply({status: 410, token: "s2", messages: []})
  const pending = await nextRequest("two")
  lp.close(1000, "bye", true)
  await new Promise(resolve => pending.res.on("close", resolve))
  assert.deepEqual([...log], ["open", ["close", 1000, "bye"]])
})

test("a poll that outlives its timeout reports timeout and closes with 1005", async () => {
  const lp = new LongPoll(`ws://127.0.0.1:${port}/three/socket/websocket`)
  lp.timeout = 100
  const log = events(lp)
  await nextRequest("three") // never answered
  await log.until(e => e[0] === "close")
  assert.deepEqual([...log], [["error", "timeout"], ["close", 1005, "timeout"]])
})
