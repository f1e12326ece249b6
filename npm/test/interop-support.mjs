// Test support (not a test file) for the interop suites: the official phoenix clients they run
// against (each suite runs once per client), a `rollcall serve` process launcher, and a
// condition wait with a deadline.
import {spawn} from "node:child_process"
import fs from "node:fs"
import {createRequire} from "node:module"
import path from "node:path"
import {fileURLToPath} from "node:url"
import {serverBinary, unavailable} from "./locate.mjs"

const here = path.dirname(fileURLToPath(import.meta.url))
const require = createRequire(import.meta.url)

const located = serverBinary()
/** The server binary, built by cargo when stale (see locate.mjs). */
export const binary = located.path
/** A skip reason while the binary is missing, else false (an error when it is required). */
export const skipUnbuilt = unavailable(located.missing || false)
const examples = new Map()
function exampleBinary(name) {
  if (!examples.has(name)) examples.set(name, serverBinary("example", name))
  return examples.get(name)
}
/** A server example, e.g. `room_channel`, built by cargo when stale. */
export const example = name => exampleBinary(name).path
/** A skip reason while the example `name` is missing, else false (an error when required). */
export const skipUnbuiltExample = name => unavailable(exampleBinary(name).missing || false)
/** The demo page's directory, served as static files. */
export const staticDir = path.resolve(here, "../../www")

// The npm devDependencies that hold each official client: `phoenix` (1.8.x) and the alias
// `phoenix17` (1.7.x). PHOENIX_CLIENT (a package name resolvable from npm/, e.g. another alias)
// runs the suites against that one build instead.
const CLIENT_PACKAGES = process.env.PHOENIX_CLIENT ? [process.env.PHOENIX_CLIENT] : ["phoenix", "phoenix17"]

/**
 * Imports one phoenix client and reads its version: {version, label, Socket, Presence, LongPoll}.
 *
 * phoenix.js takes its browser global from `self` or `window` once, when the module is
 * evaluated. Node has neither; 1.8 then falls back to globalThis, but 1.7's fallback is an
 * undefined binding, so its Ajax (long-poll) could never find XMLHttpRequest. The import
 * therefore runs with `self` standing for globalThis, as in a worker, and `self` is removed again
 * right after. Which XMLHttpRequest (if any) is used is still looked up per request.
 */
async function loadClient(pkg) {
  const entry = require.resolve(pkg)
  const manifest = JSON.parse(fs.readFileSync(findManifest(entry), "utf8"))
  const hadSelf = Object.hasOwn(globalThis, "self")
  if (!hadSelf) globalThis.self = globalThis
  let mod
  try {
    mod = await import(pkg)
  } finally {
    if (!hadSelf) delete globalThis.self
  }
  const version = manifest.version
  const {Socket, Presence, LongPoll} = mod
  // Before 1.8, phoenix's Ajax knows only XDomainRequest and XMLHttpRequest (1.8 also uses fetch).
  const needsXHR = /^1\.[0-7]\./.test(version)
  return {version, label: `phoenix ${version}`, needsXHR, Socket, Presence, LongPoll}
}

/** The package.json of the package that holds `file`. */
function findManifest(file) {
  for (let dir = path.dirname(file); dir !== path.dirname(dir); dir = path.dirname(dir)) {
    const candidate = path.join(dir, "package.json")
    if (fs.existsSync(candidate)) {
      const json = JSON.parse(fs.readFileSync(candidate, "utf8"))
      if (json.name && json.version) return candidate
    }
  }
  throw new Error(`no package.json above ${file}`)
}

/** Every client the interop suites run against, oldest last. */
export const clients = []
for (const pkg of CLIENT_PACKAGES) clients.push(await loadClient(pkg))

/**
 * Starts `rollcall serve` with `args` after `serve`; resolves {proc, http, cluster} once it
 * printed its HTTP address (and its cluster address when `cluster` is set). `onSpawn` sees the
 * process at once, so a caller can kill it even if the start fails.
 */
export function startServer(args, options = {}) {
  return startProgram(binary, ["serve", ...args], options)
}

/**
 * Starts `program` with `args`, as {@link startServer} starts `rollcall serve`: resolves once it
 * printed the same listening line(s).
 */
export function startProgram(program, args, {cluster = false, onSpawn = () => {}} = {}) {
  const proc = spawn(program, args, {
    stdio: ["ignore", "pipe", "inherit"],
    env: {...process.env, RUST_LOG: "warn"},
  })
  onSpawn(proc)
  return new Promise((resolve, reject) => {
    let out = ""
    const timer = setTimeout(() => reject(new Error(`no listening line from ${program}:\n${out}`)), 20000)
    proc.on("error", error => {
      clearTimeout(timer)
      reject(error)
    })
    proc.on("exit", code => {
      clearTimeout(timer)
      reject(new Error(`${program} exited with ${code}:\n${out}`))
    })
    proc.stdout.on("data", chunk => {
      out += chunk
      const http = out.match(/rollcall listening on (http:\/\/\S+)/)
      const mesh = out.match(/rollcall cluster listening on (\S+)/)
      if (http && (mesh || !cluster)) {
        clearTimeout(timer)
        resolve({proc, http: http[1], cluster: mesh?.[1]})
      }
    })
  })
}

/** Resolves with `check()`'s value once it is truthy; polls every few milliseconds until `deadlineMs`. */
export function until(check, what, deadlineMs = 5000) {
  return new Promise((resolve, reject) => {
    const deadline = Date.now() + deadlineMs
    const tick = () => {
      let value
      try {
        value = check()
      } catch (e) {
        return reject(e)
      }
      if (value) return resolve(value)
      if (Date.now() > deadline) return reject(new Error(`timed out waiting for ${what}`))
      setTimeout(tick, 5)
    }
    tick()
  })
}
