// The ES module entry in a real browser: headless Chromium (Debian's) loads src/presence.mjs
// from a static server on 127.0.0.1, which fetches the wasm next to it with top-level await,
// and runs the Presence rules that matter most there. Skipped when Chromium is not installed.
import {test} from "node:test"
import assert from "node:assert/strict"
import http from "node:http"
import fs from "node:fs"
import os from "node:os"
import path from "node:path"
import {fileURLToPath} from "node:url"

const pkg = path.resolve(path.dirname(fileURLToPath(import.meta.url)), "..")
const CHROMIUM = "/usr/bin/chromium"
const TYPES = {".mjs": "text/javascript", ".js": "text/javascript", ".wasm": "application/wasm", ".html": "text/html"}

function serve(){
  const server = http.createServer((req, res) => {
    const url = new URL(req.url, "http://127.0.0.1")
    if(url.pathname === "/"){
      res.writeHead(200, {"content-type": "text/html"})
      res.end("<!doctype html><title>presence</title>")
      return
    }
    const file = path.join(pkg, path.normalize(url.pathname))
    if(!file.startsWith(pkg + path.sep) || !fs.existsSync(file) || !fs.statSync(file).isFile()){
      res.writeHead(404)
      res.end()
      return
    }
    res.writeHead(200, {"content-type": TYPES[path.extname(file)] || "application/octet-stream"})
    fs.createReadStream(file).pipe(res)
  })
  return new Promise(resolve => server.listen(0, "127.0.0.1", () => resolve(server)))
}

test("the ES module entry works in Chromium", {skip: !fs.existsSync(CHROMIUM) && "no Chromium"}, async () => {
  const {chromium} = await import("playwright-core")
  const server = await serve()
  const profile = fs.mkdtempSync(path.join(os.tmpdir(), "rollcall-presence-"))
  let context
  try {
    context = await chromium.launchPersistentContext(profile, {
      executablePath: CHROMIUM,
      headless: true,
      args: ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
        "--disable-background-networking", "--disable-component-update", "--disable-sync", "--disable-dev-shm-usage"],
    })
    const page = context.pages()[0] || await context.newPage()
    await page.goto(`http://127.0.0.1:${server.address().port}/`)
    const result = await page.evaluate(async () => {
      const {Presence} = await import("/src/presence.mjs")
      const calls = []
      let s = Presence.syncState({}, {b: {metas: [{phx_ref: "1"}]}, 3: {metas: [{phx_ref: "2"}]}})
      s = Presence.syncDiff(s, {
        joins: {b: {metas: [{phx_ref: "9", phx_ref_prev: "1"}]}},
        leaves: {b: {metas: [{phx_ref: "1"}]}},
      }, (k) => calls.push(`join ${k}`), (k, cur) => calls.push(`leave ${k} ${cur.metas.map(m => m.phx_ref)}`))
      const handlers = {}
      const p = new Presence({on: (ev, cb) => { handlers[ev] = cb }, joinRef: () => "1"})
      handlers.presence_state({a: {metas: [{phx_ref: "x"}]}})
      handlers.presence_diff({joins: {c: {metas: [{phx_ref: "y"}]}}, leaves: {}})
      return {
        proto: Object.getPrototypeOf(s) === null,
        keys: Presence.list(s, (k) => k),
        calls,
        listed: p.list((k) => k),
      }
    })
    assert.deepEqual(result, {proto: true, keys: ["3", "b"], calls: ["join b", "leave b 9"], listed: ["a", "c"]})
  } finally {
    if(context){ await context.close() }
    server.close()
    fs.rmSync(profile, {recursive: true, force: true})
  }
})
