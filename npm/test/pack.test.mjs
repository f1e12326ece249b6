// Packaging: build the tarball with `npm pack`, install it into a fresh project
// (offline: the package has no runtime dependencies) and use it the way an app
// would: ESM import, CommonJS require, and TypeScript against the shipped types.
import {after, before, test} from "node:test"
import assert from "node:assert/strict"
import {execFileSync} from "node:child_process"
import fs from "node:fs"
import os from "node:os"
import path from "node:path"
import {fileURLToPath} from "node:url"

const pkgDir = path.resolve(path.dirname(fileURLToPath(import.meta.url)), "..")
const CLIENT_EXPORTS = ["Socket", "Channel", "Push", "Serializer", "LongPoll"]

let work
let consumer
let packedFiles

const run = (cmd, args, cwd) => execFileSync(cmd, args, {cwd, encoding: "utf8", stdio: ["ignore", "pipe", "pipe"]})

before(() => {
  work = fs.mkdtempSync(path.join(os.tmpdir(), "rollcall-pack-"))
  const [info] = JSON.parse(run("npm", ["pack", "--json", "--pack-destination", work], pkgDir))
  packedFiles = info.files.map(f => f.path)
  consumer = path.join(work, "app")
  fs.mkdirSync(consumer)
  fs.writeFileSync(path.join(consumer, "package.json"), JSON.stringify({name: "app", private: true, version: "1.0.0"}))
  run("npm", ["install", path.join(work, info.filename), "--offline", "--no-audit", "--no-fund"], consumer)
})

after(() => fs.rmSync(work, {recursive: true, force: true}))

test("the tarball ships the builds, their declarations, the README and the licenses, and nothing else", () => {
  assert.deepEqual([...packedFiles].sort(), [
    "LICENSE-APACHE", "LICENSE-MIT", "README.md",
    "dist/browser-presence.js", "dist/browser-wasm.js", "dist/browser.js",
    "dist/index.cjs", "dist/index.d.cts", "dist/index.d.ts", "dist/index.js",
    "package.json",
  ])
})

test("the WebAssembly module is inside the JavaScript: no .wasm file to serve", () => {
  assert.equal(packedFiles.filter(f => f.endsWith(".wasm")).length, 0)
  for (const file of ["dist/index.js", "dist/index.cjs", "dist/browser-wasm.js"]) {
    const text = fs.readFileSync(path.join(consumer, "node_modules", "rollcall", file), "utf8")
    // "\0asm" and version 1, in hexadecimal
    assert.match(text, /"0061736d01000000/, `${file} embeds the module`)
  }
})

test("require('rollcall') gives the client classes", () => {
  const script = `
    const rollcall = require("rollcall")
    const names = ${JSON.stringify(CLIENT_EXPORTS)}.filter(n => typeof rollcall[n] !== "function" && typeof rollcall[n] !== "object")
    if (names.length) throw new Error("missing: " + names)
    const socket = new rollcall.Socket("ws://127.0.0.1:1/socket", {transport: class {}})
    process.stdout.write(socket.endPointURL())
  `
  assert.equal(run(process.execPath, ["-e", script], consumer), "ws://127.0.0.1:1/socket/websocket?vsn=2.0.0")
})

// A presence round trip as a user writes it: static syncState / syncDiff / list, and the instance
// API on a channel, from the installed tarball (wasm included).
const ROUND_TRIP = `
  let state = Presence.syncState({}, {alice: {metas: [{phx_ref: "1", device: "web"}]}})
  state = Presence.syncDiff(state, {joins: {bob: {metas: [{phx_ref: "2"}]}}, leaves: {alice: {metas: [{phx_ref: "1"}]}}})
  const handlers = {}
  const channel = {on: (event, cb) => { handlers[event] = cb }, joinRef: () => "7"}
  const presence = new Presence(channel)
  let synced = 0
  presence.onSync(() => { synced++ })
  handlers.presence_diff({joins: {carol: {metas: [{phx_ref: "4"}]}}, leaves: {}})
  handlers.presence_state({dave: {metas: [{phx_ref: "3"}]}})
  const out = [Presence.list(state, (key) => key).join(","), presence.list((key) => key).join(","), synced]
  process.stdout.write(out.join(" "))
`

test("require('rollcall') runs a presence round trip (CommonJS)", () => {
  const script = `const {Presence} = require("rollcall")\n${ROUND_TRIP}`
  assert.equal(run(process.execPath, ["-e", script], consumer), "bob dave,carol 1")
})

test("import {Socket, Presence} from 'rollcall' runs a presence round trip (ES module)", () => {
  fs.writeFileSync(
    path.join(consumer, "esm.mjs"),
    `import {Socket, Channel, Push, Serializer, LongPoll, Presence} from "rollcall"
     for (const [name, value] of Object.entries({Socket, Channel, Push, Serializer, LongPoll, Presence})) {
       if (!value) throw new Error("missing " + name)
     }
     ${ROUND_TRIP}`,
  )
  assert.equal(run(process.execPath, ["esm.mjs"], consumer), "bob dave,carol 1")
})

test("the ESM entry resolves the client classes through the exports map", () => {
  fs.writeFileSync(
    path.join(consumer, "esm-client.mjs"),
    `import * as rollcall from "rollcall"
     const missing = ${JSON.stringify(CLIENT_EXPORTS)}.filter(n => !rollcall[n])
     if (missing.length) throw new Error("missing: " + missing)
     process.stdout.write(Object.keys(rollcall).sort().join(","))`,
  )
  assert.equal(run(process.execPath, ["esm-client.mjs"], consumer), "Channel,LongPoll,Presence,Push,Serializer,Socket")
})

test("TypeScript consumers type-check against the shipped declarations (ESM and CommonJS)", () => {
  const tsc = path.join(pkgDir, "node_modules/typescript/bin/tsc")
  fs.writeFileSync(
    path.join(consumer, "app.mts"),
    `import {Socket, Presence, type Channel, type Push} from "rollcall"
     const socket = new Socket("/socket", {params: () => ({token: "t"}), authToken: "x", longPollFallbackMs: 2500})
     socket.connect()
     const channel: Channel = socket.channel("room:1", {name: "ana"})
     const join: Push = channel.join()
     join.receive("ok", (resp) => console.log(resp)).receive("error", () => {}).receive("timeout", () => {})
     const ref: number = channel.on("shout", (payload) => console.log(payload))
     channel.off("shout", ref)
     const presence = new Presence(channel)
     presence.onSync(() => presence.list((id, {metas: [first]}) => first.phx_ref))
     const openRef: string = socket.onOpen(() => {})
     socket.off([openRef])
     // @ts-expect-error join takes a timeout number
     channel.join("soon")
     export {}`,
  )
  fs.writeFileSync(
    path.join(consumer, "app.cts"),
    `import rollcall = require("rollcall")
     const socket = new rollcall.Socket("/socket")
     const encoded: string = rollcall.Serializer.encode({join_ref: null, ref: "1", topic: "t", event: "e", payload: {}}, (x) => String(x))
     socket.channel("t").push("e", {}).receive("ok", () => encoded)
     export {}`,
  )
  fs.writeFileSync(
    path.join(consumer, "tsconfig.json"),
    JSON.stringify({
      compilerOptions: {noEmit: true, strict: true, module: "nodenext", moduleResolution: "nodenext", target: "es2022", types: []},
      files: ["app.mts", "app.cts"],
    }),
  )
  const args = ["-p", "tsconfig.json"]
  try {
    run(process.execPath, [tsc, ...args], consumer)
  } catch (error) {
    assert.fail(`tsc failed:\n${error.stdout}${error.stderr}`)
  }
})
