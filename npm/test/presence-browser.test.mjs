// The browser build (dist/browser.js, the `browser` export condition) in a real browser:
// headless Chromium (Debian's) loads it from a static server on 127.0.0.1. Presence's
// WebAssembly chunk loads in the background; instances queue their channel's events until it is
// there; a page whose Content-Security-Policy forbids WebAssembly gets an error that names the
// fix, and its Socket keeps working.
import {after, before, test} from "node:test"
import assert from "node:assert/strict"
import {launchChromium, pkgDir, serveStatic} from "../toolchains/support.mjs"

const PAGE = "<!doctype html><title>presence</title><link rel=\"icon\" href=\"data:,\">"
let browser
const servers = []

/** Holds back the WebAssembly chunk of `tab` until the returned function is called. */
async function holdChunk(tab){
  let release
  const released = new Promise((resolve) => { release = resolve })
  await tab.route(/browser-wasm\.js$/, async (route) => {
    await released
    await route.continue()
  })
  return release
}

async function page(headers = {}){
  const site = await serveStatic(pkgDir, {gzip: false, headers})
  servers.push(site)
  const context = await browser.newContext()
  const tab = await context.newPage()
  await tab.route(`${site.url}/`, (route) => route.fulfill({status: 200, contentType: "text/html", headers, body: PAGE}))
  await tab.goto(`${site.url}/`)
  return tab
}

before(async () => { browser = await launchChromium() })
after(async () => {
  await browser?.close()
  for(const site of servers){ await site.close() }
})

test("the browser build runs Presence once its module has loaded", async () => {
  const tab = await page()
  const result = await tab.evaluate(async () => {
    const {Presence} = await import("/dist/browser.js")
    await Presence.ready
    const calls = []
    let s = Presence.syncState({}, {b: {metas: [{phx_ref: "1"}]}, 3: {metas: [{phx_ref: "2"}]}})
    s = Presence.syncDiff(s, {
      joins: {b: {metas: [{phx_ref: "9", phx_ref_prev: "1"}]}},
      leaves: {b: {metas: [{phx_ref: "1"}]}},
    }, (k) => calls.push(`join ${k}`), (k, cur) => calls.push(`leave ${k} ${cur.metas.map(m => m.phx_ref)}`))
    return {proto: Object.getPrototypeOf(s) === null, keys: Presence.list(s, (k) => k), calls}
  })
  assert.deepEqual(result, {proto: true, keys: ["3", "b"], calls: ["join b", "leave b 9"]})
})

test("an instance queues the events that arrive before the module, then applies them in order", async () => {
  const tab = await page()
  const release = await holdChunk(tab)
  await tab.evaluate(async () => {
    const {Presence} = await import("/dist/browser.js")
    const handlers = {}
    const p = new Presence({on: (ev, cb) => { handlers[ev] = cb }, joinRef: () => "1"})
    const syncs = []
    p.onSync(() => syncs.push(p.list((k) => k).join(",")))
    // at once, before the chunk can have arrived
    handlers.presence_diff({joins: {early: {metas: [{phx_ref: "e"}]}}, leaves: {}})
    handlers.presence_state({a: {metas: [{phx_ref: "x"}]}})
    handlers.presence_diff({joins: {c: {metas: [{phx_ref: "y"}]}}, leaves: {}})
    window.before = {listed: p.list().length, pending: p.inPendingSyncState(), syncs: syncs.length}
    window.after = Presence.ready.then(() => ({syncs, listed: p.list((k) => k), own: Object.keys(p)}))
  })
  release()
  const result = await tab.evaluate(async () => ({before: window.before, ...(await window.after)}))
  assert.deepEqual(result.before, {listed: 0, pending: true, syncs: 0})
  // the diff before the state is held back (phoenix.js's pendingDiffs), then applied after it
  assert.deepEqual(result.syncs, ["a,early", "a,early,c"])
  assert.deepEqual(result.listed, ["a", "early", "c"])
  assert.deepEqual(result.own, ["state", "pendingDiffs", "channel", "joinRef", "caller"])
})

test("the static functions before the module has loaded throw an error that says to await Presence.ready", async () => {
  const tab = await page()
  const release = await holdChunk(tab)
  const message = await tab.evaluate(async () => {
    const {Presence} = await import("/dist/browser.js")
    try {
      Presence.syncState({}, {})
      return "no error"
    } catch (e){
      return e.message
    }
  })
  release()
  assert.match(message, /await Presence\.ready/)
})

test("a Content-Security-Policy without 'wasm-unsafe-eval' rejects Presence.ready with the fix, and Socket still works", async () => {
  const tab = await page({"content-security-policy": "script-src 'self'"})
  const result = await tab.evaluate(async () => {
    const {Presence, Socket} = await import("/dist/browser.js")
    const socket = new Socket("ws://127.0.0.1:9/socket", {transport: class { close(){} }})
    let error
    try { await Presence.ready } catch (e){ error = e.message }
    let thrown
    try { Presence.list({}) } catch (e){ thrown = e.message }
    return {error, thrown, url: socket.endPointURL()}
  })
  assert.match(result.error, /Presence WebAssembly module could not be loaded/)
  assert.match(result.error, /'wasm-unsafe-eval'/)
  assert.equal(result.thrown, result.error)
  assert.equal(result.url, "ws://127.0.0.1:9/socket/websocket?vsn=2.0.0")
})
