// Loading the client where no browser or Node global exists. A fresh node:vm realm has only the
// language's built-ins: no TextEncoder, setTimeout, atob, console, window or process. Importing
// the client must not need any of them (Jest's jsdom environment, for one, has no TextEncoder);
// they are looked up when a feature that needs them is used.
import {test} from "node:test"
import assert from "node:assert/strict"
import fs from "node:fs"
import path from "node:path"
import vm from "node:vm"
import {fileURLToPath} from "node:url"
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
    typeof TextEncoder,
  ])
`
const FIRST_USE_RESULT = ["ws://h/socket/websocket?vsn=2.0.0", "closed", '[null,"1","t","e",{}]', "undefined"]

test("the client modules load and are usable in a realm without TextEncoder, timers or a window", async () => {
  // The client's sources without Presence, bundled by the bundler tsup uses.
  const {outputFiles} = await build({
    stdin: {
      contents: `export {Channel} from "./channel"; export {LongPoll} from "./longpoll"; export {Push} from "./push"
                 export {Serializer} from "./serializer"; export {Socket} from "./socket"`,
      resolveDir: path.join(pkgDir, "src"),
      loader: "ts",
    },
    bundle: true,
    format: "iife",
    globalName: "client",
    platform: "neutral",
    write: false,
  })
  const realm = vm.createContext({})
  vm.runInContext(outputFiles[0].text, realm)
  assert.deepEqual(JSON.parse(vm.runInContext(FIRST_USE, realm)), FIRST_USE_RESULT)
})

test("the package loads in a realm without TextEncoder or TextDecoder", {
  todo: "the wasm-bindgen glue bundled for Presence makes a TextDecoder when it loads",
}, () => {
  const exports = {}
  const realm = vm.createContext({exports, module: {exports}})
  vm.runInContext(fs.readFileSync(path.join(pkgDir, "dist/index.cjs"), "utf8"), realm)
  realm.client = exports
  assert.deepEqual(JSON.parse(vm.runInContext(FIRST_USE, realm)), FIRST_USE_RESULT)
})
