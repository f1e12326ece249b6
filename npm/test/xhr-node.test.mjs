// The test-only XMLHttpRequest (xhr-node.mjs) that phoenix 1.7's long-poll uses in the interop
// suite: checked here against a real node:http server on 127.0.0.1, so an interop failure
// cannot hide a fault of the stand-in.

import assert from "node:assert/strict"
import http from "node:http"
import {after, before, test} from "node:test"
import {installXMLHttpRequest, NodeXMLHttpRequest} from "./xhr-node.mjs"

let server
let base
const seen = []

before(async () => {
  server = http.createServer((req, res) => {
    let body = ""
    req.setEncoding("utf8")
    req.on("data", chunk => {
      body += chunk
    })
    req.on("end", () => {
      seen.push({method: req.method, url: req.url, type: req.headers["content-type"], body})
      // /hang never answers (for timeouts and aborts); /reset drops the connection instead.
      if (req.url.startsWith("/hang")) return
      if (req.url === "/reset") return req.socket.destroy()
      res.writeHead(200, {"content-type": "application/json"})
      res.end(JSON.stringify({status: 200, echo: body}))
    })
  })
  await new Promise(resolve => server.listen(0, "127.0.0.1", resolve))
  base = `http://127.0.0.1:${server.address().port}`
})

after(() => {
  server.closeAllConnections()
  server.close()
})

/** Sends a request and resolves with the handler calls in order, once `last` was called. */
function run(xhr, last, {method = "GET", path = "/", body = null, type} = {}) {
  const calls = []
  return new Promise(resolve => {
    const record = name => () => {
      calls.push(name === "readystatechange" ? `${name}:${xhr.readyState}` : name)
      if (name === last) resolve(calls)
    }
    xhr.open(method, base + path, true)
    if (type) xhr.setRequestHeader("Content-Type", type)
    for (const name of ["readystatechange", "load", "error", "timeout", "abort"]) xhr[`on${name}`] = record(name)
    xhr.send(body)
  })
}

test("an answered request reports DONE with the status and text, then onload", async () => {
  const xhr = new NodeXMLHttpRequest()
  const calls = await run(xhr, "load", {method: "POST", path: "/x?token=t", body: "a\nb", type: "application/x-ndjson"})
  assert.deepEqual(calls.slice(-2), ["readystatechange:4", "load"])
  assert.equal(xhr.status, 200)
  assert.deepEqual(JSON.parse(xhr.responseText), {status: 200, echo: "a\nb"})
  assert.deepEqual(seen.at(-1), {method: "POST", url: "/x?token=t", type: "application/x-ndjson", body: "a\nb"})
})

test("a request past its timeout reports DONE with status 0 and no text, then ontimeout", async () => {
  const xhr = new NodeXMLHttpRequest()
  xhr.timeout = 50
  const calls = await run(xhr, "timeout", {path: "/hang"})
  assert.deepEqual(calls, ["readystatechange:4", "timeout"])
  assert.equal(xhr.status, 0)
  assert.equal(xhr.responseText, "")
})

test("aborting a request in flight reports DONE, then onabort, and leaves it UNSENT", async () => {
  const xhr = new NodeXMLHttpRequest()
  const done = run(xhr, "abort", {path: "/hang-abort"})
  // Abort once the server holds the request, as when a long-poll is closed.
  await new Promise(resolve => {
    const wait = () => (seen.some(r => r.url === "/hang-abort") ? resolve() : setTimeout(wait, 5))
    wait()
  })
  xhr.abort()
  assert.deepEqual(await done, ["readystatechange:4", "abort"])
  assert.equal(xhr.readyState, NodeXMLHttpRequest.UNSENT)
  assert.equal(xhr.status, 0)
})

test("a connection closed without an answer reports DONE with status 0, then onerror", async () => {
  const xhr = new NodeXMLHttpRequest()
  const calls = await run(xhr, "error", {path: "/reset"})
  assert.deepEqual(calls, ["readystatechange:4", "error"])
  assert.equal(xhr.status, 0)
  assert.equal(xhr.responseText, "")
})

test("installing sets the global XMLHttpRequest and the returned function removes it", () => {
  assert.equal(globalThis.XMLHttpRequest, undefined)
  const uninstall = installXMLHttpRequest()
  assert.equal(globalThis.XMLHttpRequest, NodeXMLHttpRequest)
  uninstall()
  assert.equal("XMLHttpRequest" in globalThis, false)
})
