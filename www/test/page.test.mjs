// End-to-end test of the demo page in a real headless Chromium (Debian's /usr/bin/chromium),
// driven by playwright-core, against real `rollcall` processes on 127.0.0.1.
import {test, before, after} from "node:test"
import assert from "node:assert/strict"
import {createRequire} from "node:module"
import {spawn} from "node:child_process"
import {fileURLToPath} from "node:url"
import fs from "node:fs"
import os from "node:os"
import path from "node:path"
import {serverBinary} from "../../npm/test/locate.mjs"

const here = path.dirname(fileURLToPath(import.meta.url))
const root = path.resolve(here, "../..")
const require = createRequire(path.join(root, "npm/package.json"))
const {chromium} = require("playwright-core")
const CHROMIUM = process.env.CHROMIUM || "/usr/bin/chromium"
// The server is built by cargo when stale; the page and the browser are required (this file has
// nothing to test without them), so anything missing fails.
const located = serverBinary()
if (located.missing) throw new Error(located.missing)
if (!fs.existsSync(CHROMIUM)) throw new Error(`Chromium not found at ${CHROMIUM} (apt-get install chromium, or set CHROMIUM)`)
const BIN = located.path
const SHOTS = path.join(root, "artifacts")

/**
 * Starts `rollcall serve` and resolves with its base URL (and, for a mesh node, its cluster
 * address) once it is listening: ports are 0 and the real ones are read from its lines.
 */
function startServer(port = 0, extra = []) {
  const child = spawn(BIN, ["serve", "--host", "127.0.0.1", "--port", String(port),
    "--static-dir", path.join(root, "www"), ...extra], {stdio: ["ignore", "pipe", "pipe"]})
  return new Promise((resolve, reject) => {
    let out = ""
    const timer = setTimeout(() => reject(new Error(`rollcall did not start: ${out}`)), 15000)
    const onData = (buf) => {
      out += buf
      const m = out.match(/listening on (http:\/\/127\.0\.0\.1:\d+)/)
      const mesh = out.match(/cluster listening on (127\.0\.0\.1:\d+)/)
      if (m && (mesh || !extra.includes("mesh"))) {
        clearTimeout(timer)
        resolve({child, url: m[1], cluster: mesh?.[1]})
      }
    }
    child.stdout.on("data", onData)
    child.stderr.on("data", onData)
    child.on("exit", (code) => { clearTimeout(timer); reject(new Error(`rollcall exited ${code}: ${out}`)) })
  })
}

function stopServer(server) {
  return new Promise((resolve) => {
    if (server.child.exitCode !== null) { return resolve() }
    server.child.once("exit", resolve)
    server.child.kill("SIGTERM")
  })
}

let browser
let userDataDir
let server
const consoleErrors = []
let restarting = false

before(async () => {
  userDataDir = fs.mkdtempSync(path.join(os.tmpdir(), "rollcall-e2e-"))
  browser = await chromium.launch({
    executablePath: CHROMIUM,
    headless: true,
    args: ["--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
      "--disable-background-networking", "--disable-component-update", "--disable-sync",
      "--disable-dev-shm-usage"],
  })
  server = await startServer()
})

after(async () => {
  await browser?.close()
  if (server) { await stopServer(server) }
  fs.rmSync(userDataDir, {recursive: true, force: true})
})

async function openAs(name, url) {
  const context = await browser.newContext({viewport: {width: 420, height: 720}})
  const page = await context.newPage()
  page.on("console", (msg) => {
    if (msg.type() !== "error") { return }
    // While the server restarts the browser logs the refused reconnect attempts; those are the
    // scenario under test, not a fault of the page.
    if (restarting && /WebSocket connection to .* failed|ERR_CONNECTION_REFUSED/.test(msg.text())) { return }
    consoleErrors.push(`${name}: ${msg.text()}`)
  })
  page.on("pageerror", (err) => consoleErrors.push(`${name}: ${err.message}`))
  await page.goto(url)
  await page.fill("#name-input", name)
  await page.press("#name-input", "Enter")
  return {context, page}
}

const member = (page, name) => page.locator(`#members li[data-name="${name}"]:not(.leaving)`)

test("two people see each other, away status, leave, and recovery after a server restart", async () => {
  const alice = await openAs("Alice Liddell", server.url)
  const bob = await openAs("Bob", server.url)

  // They see each other (and themselves).
  await member(alice.page, "Bob").waitFor({timeout: 10000})
  await member(bob.page, "Alice Liddell").waitFor({timeout: 10000})
  assert.equal(await bob.page.textContent("#count"), "2 online")
  assert.equal(await member(bob.page, "Alice Liddell").locator(".avatar").textContent(), "AL")
  assert.equal(await alice.page.getAttribute("#conn", "data-state"), "online")

  // Alice hides her tab: Bob sees her away.
  await alice.page.evaluate(() => {
    Object.defineProperty(document, "visibilityState", {value: "hidden", configurable: true})
    document.dispatchEvent(new Event("visibilitychange"))
  })
  await bob.page.locator(`#members li[data-name="Alice Liddell"][data-status="away"]`).waitFor({timeout: 5000})
  fs.mkdirSync(SHOTS, {recursive: true})
  await bob.page.screenshot({path: path.join(SHOTS, "demo.png"), animations: "disabled"})
  await alice.page.evaluate(() => {
    Object.defineProperty(document, "visibilityState", {value: "visible", configurable: true})
    document.dispatchEvent(new Event("visibilitychange"))
  })
  await bob.page.locator(`#members li[data-name="Alice Liddell"][data-status="online"]`).waitFor({timeout: 5000})

  // The server restarts on the same port: both reconnect and the list is whole again.
  const port = new URL(server.url).port
  restarting = true
  await stopServer(server)
  await alice.page.locator(`#conn[data-state="reconnecting"]`).waitFor({timeout: 5000})
  server = await startServer(port)
  await alice.page.locator(`#conn[data-state="online"]`).waitFor({timeout: 15000})
  await member(alice.page, "Bob").waitFor({timeout: 15000})
  await member(bob.page, "Alice Liddell").waitFor({timeout: 15000})
  restarting = false
  assert.equal(await bob.page.textContent("#count"), "2 online")

  // Alice closes her tab: Bob sees her leave (how fast is a benchmark's business, not this
  // test's; the deadline only stops a hang).
  await alice.context.close()
  await member(bob.page, "Alice Liddell").waitFor({state: "detached", timeout: 15000})
  assert.equal(await bob.page.textContent("#count"), "1 online")

  await bob.context.close()
  assert.deepEqual(consoleErrors, [])
})

test("with three nodes, two browsers on different nodes see each other and where each is connected", async () => {
  const nodes = []
  try {
    for (const i of [0, 1, 2]) {
      const peers = i === 0 ? [] : ["--peers", nodes[0].cluster]
      nodes.push(await startServer(0, ["--node", `node-${i + 1}`, "--cluster", "mesh",
        "--cluster-listen", "127.0.0.1:0", "--cluster-secret", "e2e-secret",
        "--broadcast-period-ms", "200", "--down-period-ms", "2000", ...peers]))
    }
    const carol = await openAs("Carol", nodes[0].url)
    const dave = await openAs("Dave", nodes[2].url)
    await member(carol.page, "Dave").waitFor({timeout: 10000})
    await member(dave.page, "Carol").waitFor({timeout: 10000})
    assert.match(await member(carol.page, "Dave").locator(".detail").textContent(), /on node-3/)
    assert.match(await member(dave.page, "Carol").locator(".detail").textContent(), /on node-1/)
    await dave.context.close()
    await member(carol.page, "Dave").waitFor({state: "detached", timeout: 5000})
    await carol.context.close()
  } finally {
    for (const node of nodes) { await stopServer(node) }
  }
  assert.deepEqual(consoleErrors, [])
})
