// Loading the package where no browser or Node global exists. A fresh node:vm realm has only the
// language's built-ins: no TextEncoder, TextDecoder, setTimeout, atob, console, window or process.
// Importing the package must not need any of them (Jest's jsdom environment, for one, has no
// TextEncoder); they are looked up when a feature that needs them is used.

import assert from "node:assert/strict"
import fs from "node:fs"
import path from "node:path"
import {test} from "node:test"
import {fileURLToPath} from "node:url"
import vm from "node:vm"
import {build} from "esbuild"

const pkgDir = path.resolve(path.dirname(fileURLToPath(import.meta.url)), "..")

// What an app does first: build a Socket and a Channel, encode a text frame.
const FIRST_USE = `
  const socket = new client.Socket("ws://h/socket", {transport: class {}})
  const channel = socket.channel("room:1", {user: "ana"})
  JSON.stringify([
    socket.endPointURL(),
    channel.state,
    client.Serializer.encode({join_ref: null, ref: "1", topic: "t", event: "e", payload: {}}, frame => frame),
    typeof client.Presence,
    typeof TextEncoder,
  ])
`
const FIRST_USE_RESULT = [
  "ws://h/socket/websocket?vsn=2.0.0",
  "closed",
  '[null,"1","t","e",{}]',
  "function",
  "undefined",
]

test("the Node and CommonJS build loads and is usable in a realm without TextEncoder, timers or a window", () => {
  const exports = {}
  const realm = vm.createContext({exports, module: {exports}})
  vm.runInContext(fs.readFileSync(path.join(pkgDir, "dist/index.cjs"), "utf8"), realm)
  realm.client = exports
  assert.deepEqual(JSON.parse(vm.runInContext(FIRST_USE, realm)), FIRST_USE_RESULT)
})

test("the browser build, bundled as an app's bundler does, loads and is usable in the same realm", async () => {
  const {outputFiles} = await build({
    entryPoints: [path.join(pkgDir, "dist/browser.js")],
    bundle: true,
    format: "iife",
    globalName: "client",
    platform: "neutral",
    write: false,
    logLevel: "silent",
  })
  const realm = vm.createContext({})
  vm.runInContext(outputFiles[0].text, realm)
  assert.deepEqual(JSON.parse(vm.runInContext(FIRST_USE, realm)), FIRST_USE_RESULT)
})
