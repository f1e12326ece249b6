// Support for trying the packed package the way front ends take it: the tarball `npm pack`
// makes, unpacked as an installed dependency of small apps built with pinned toolchains
// (package.json here), served over HTTP and opened in headless Chromium. Used by
// test/toolchains.test.mjs and bench/startup-bench.mjs.
import {execFileSync, spawn} from "node:child_process"
import fs from "node:fs"
import http from "node:http"
import os from "node:os"
import path from "node:path"
import {fileURLToPath} from "node:url"
import zlib from "node:zlib"

export const toolchains = path.dirname(fileURLToPath(import.meta.url))
export const pkgDir = path.resolve(toolchains, "..")
export const repoDir = path.resolve(pkgDir, "..")
const tools = path.join(toolchains, "node_modules")

/** A fresh scratch directory, removed by `cleanup()`. */
export function scratch(prefix) {
  return fs.mkdtempSync(path.join(os.tmpdir(), `rollcall-${prefix}-`))
}

/** Packs npm/ (as `npm publish` would) and unpacks it: the directory of the installed package. */
export function packPackage(into) {
  const [info] = JSON.parse(
    execFileSync("npm", ["pack", "--json", "--pack-destination", into], {
      cwd: pkgDir,
      encoding: "utf8",
      stdio: ["ignore", "pipe", "pipe"],
    }),
  )
  const tarball = path.join(into, info.filename)
  // a name no app is given (apps are often named after the package they try)
  const dir = path.join(into, "unpacked-tarball")
  fs.mkdirSync(dir)
  execFileSync("tar", ["xzf", tarball, "-C", dir, "--strip-components=1"])
  return {dir, tarball, files: info.files.map(f => f.path)}
}

/**
 * A small app: `files` (name → content) written into `dir`, with `rollcall` (the unpacked
 * package) and the pinned toolchains' packages resolvable from it, as if installed.
 */
export function makeApp(dir, files, {rollcall}) {
  fs.mkdirSync(path.join(dir, "node_modules"), {recursive: true})
  for (const [name, content] of Object.entries(files)) {
    fs.mkdirSync(path.dirname(path.join(dir, name)), {recursive: true})
    fs.writeFileSync(path.join(dir, name), content)
  }
  // a copy, not a link: tools follow links to the real path, and a package outside node_modules
  // is treated as the app's own source (Vite's dev server does not pre-bundle it, Jest
  // transforms it), which is not what an install gives
  fs.cpSync(rollcall, path.join(dir, "node_modules", "rollcall"), {recursive: true})
  for (const name of fs.readdirSync(tools)) {
    if (name === ".bin" || name === "rollcall") {
      continue
    }
    fs.symlinkSync(path.join(tools, name), path.join(dir, "node_modules", name), "dir")
  }
  return dir
}

/** Runs a tool's command line in `cwd`; throws with its output when it fails. */
export function run(cmd, args, cwd, env = {}) {
  try {
    return execFileSync(cmd, args, {
      cwd,
      encoding: "utf8",
      stdio: ["ignore", "pipe", "pipe"],
      env: {...process.env, ...env},
    })
  } catch (e) {
    throw new Error(`${cmd} ${args.join(" ")} failed in ${cwd}:\n${e.stdout}\n${e.stderr}`)
  }
}

/**
 * Runs a command line in `cwd` without blocking (so that several tools can build at once):
 * resolves to its output, rejects with its output when it exits with an error or outlives
 * `timeout` ms (it is killed then).
 */
export function runAsync(cmd, args, cwd, {env = {}, timeout = 120000} = {}) {
  return new Promise((resolve, reject) => {
    const child = spawn(cmd, args, {
      cwd,
      stdio: ["ignore", "pipe", "pipe"],
      env: {...process.env, NO_COLOR: "1", FORCE_COLOR: "0", ...env},
    })
    let stdout = ""
    let stderr = ""
    child.stdout.on("data", chunk => {
      stdout += chunk
    })
    child.stderr.on("data", chunk => {
      stderr += chunk
    })
    const timer = setTimeout(() => {
      stderr += `\n(killed after ${timeout} ms)`
      child.kill("SIGKILL")
    }, timeout)
    child.on("error", e => {
      clearTimeout(timer)
      reject(e)
    })
    child.on("close", (code, signal) => {
      clearTimeout(timer)
      if (code === 0) {
        resolve({stdout, stderr})
        return
      }
      reject(
        new Error(`${cmd} ${args.join(" ")} failed in ${cwd} (${signal || `exit ${code}`}):\n${stdout}\n${stderr}`),
      )
    })
  })
}

/**
 * Starts a long-running command (a dev server) in `cwd` and waits until its output matches
 * `ready` (within `timeout` ms): {match, output(), close()}. Rejects with its output if it
 * exits or does not get ready in time.
 */
export function startProcess(cmd, args, cwd, {ready, env = {}, timeout = 60000}) {
  const child = spawn(cmd, args, {
    cwd,
    stdio: ["ignore", "pipe", "pipe"],
    env: {...process.env, NO_COLOR: "1", FORCE_COLOR: "0", ...env},
  })
  let output = ""
  const exited = new Promise(resolve => child.once("exit", resolve))
  const close = async () => {
    if (child.exitCode !== null || child.signalCode !== null) {
      return
    }
    child.kill("SIGTERM")
    // a server that does not stop on SIGTERM within 5 s is stopped for good
    const stubborn = setTimeout(() => child.kill("SIGKILL"), 5000)
    await exited
    clearTimeout(stubborn)
  }
  return new Promise((resolve, reject) => {
    let settled = false
    const fail = why => {
      if (settled) {
        return
      }
      settled = true
      clearTimeout(timer)
      close().then(() => reject(new Error(`${cmd} ${args.join(" ")} in ${cwd} ${why}:\n${output}`)))
    }
    const timer = setTimeout(() => fail(`printed nothing matching ${ready} within ${timeout} ms`), timeout)
    const watch = chunk => {
      output += chunk
      const match = !settled && output.match(ready)
      if (match) {
        settled = true
        clearTimeout(timer)
        resolve({match, output: () => output, close})
      }
    }
    child.stdout.on("data", watch)
    child.stderr.on("data", watch)
    child.once("exit", (code, signal) => fail(`exited (${signal || code})`))
  })
}

/** Runs at most `n` of the functions given to the returned one at once: limit(2)(() => work()). */
export function limit(n) {
  let active = 0
  const queue = []
  const next = () => {
    if (active >= n || queue.length === 0) {
      return
    }
    active++
    const {task, resolve, reject} = queue.shift()
    Promise.resolve()
      .then(task)
      .then(resolve, reject)
      .finally(() => {
        active--
        next()
      })
  }
  return task =>
    new Promise((resolve, reject) => {
      queue.push({task, resolve, reject})
      next()
    })
}

/** A pinned tool's entry script (run it with node). */
export const toolBin = (pkg, file) => path.join(tools, pkg, file)

/** The gzip -9 size of a file's bytes. */
export const gzipSize = file => zlib.gzipSync(fs.readFileSync(file), {level: 9}).length

const TYPES = {
  ".html": "text/html",
  ".js": "text/javascript",
  ".mjs": "text/javascript",
  ".css": "text/css",
  ".wasm": "application/wasm",
  ".json": "application/json",
}

/**
 * Serves `dir` on 127.0.0.1 (a free port), gzip-compressed as a production server would
 * (`gzip: false` to send bytes as they are). `headers` are added to every response.
 */
export function serveStatic(dir, {gzip = true, headers = {}} = {}) {
  // compressed once per file, as a server with precompressed assets would send them
  const compressed = new Map()
  const server = http.createServer((req, res) => {
    const url = new URL(req.url, "http://x")
    let file = path.join(dir, decodeURIComponent(url.pathname))
    if (!file.startsWith(dir)) {
      res.writeHead(403).end()
      return
    }
    if (fs.existsSync(file) && fs.statSync(file).isDirectory()) {
      file = path.join(file, "index.html")
    }
    if (!fs.existsSync(file)) {
      res.writeHead(404).end("not found")
      return
    }
    let body = fs.readFileSync(file)
    const head = {
      "content-type": TYPES[path.extname(file)] || "application/octet-stream",
      "cache-control": "no-store",
      ...headers,
    }
    if (gzip && /gzip/.test(req.headers["accept-encoding"] || "")) {
      if (!compressed.has(file)) {
        compressed.set(file, zlib.gzipSync(body, {level: 9}))
      }
      body = compressed.get(file)
      head["content-encoding"] = "gzip"
    }
    res.writeHead(200, head).end(body)
  })
  return new Promise(resolve =>
    server.listen(0, "127.0.0.1", () => {
      resolve({url: `http://127.0.0.1:${server.address().port}`, close: () => new Promise(done => server.close(done))})
    }),
  )
}

/** The `rollcall` binary cargo builds (debug unless `release`), under cargo's target directory. */
export function rollcallBinary({release = false} = {}) {
  const meta = JSON.parse(
    execFileSync("cargo", ["metadata", "--format-version", "1", "--no-deps"], {
      cwd: repoDir,
      encoding: "utf8",
      maxBuffer: 64 << 20,
    }),
  )
  return path.join(meta.target_directory, release ? "release" : "debug", "rollcall")
}

/** Starts `rollcall serve` on a free port: {url, ws, close}. */
export function startRollcall({release = false, args = []} = {}) {
  const bin = rollcallBinary({release})
  if (!fs.existsSync(bin)) {
    throw new Error(`${bin} is not built (cargo build ${release ? "--release " : ""}-p rollcall-server)`)
  }
  const proc = spawn(bin, ["serve", "--host", "127.0.0.1", "--port", "0", ...args], {
    stdio: ["ignore", "pipe", "inherit"],
    env: {...process.env, RUST_LOG: "warn"},
  })
  return new Promise((resolve, reject) => {
    let out = ""
    const timer = setTimeout(() => {
      proc.kill("SIGKILL")
      reject(new Error("rollcall did not start within 20 s"))
    }, 20000)
    proc.on("exit", code => {
      clearTimeout(timer)
      reject(new Error(`rollcall exited (${code}) before listening:\n${out}`))
    })
    proc.stdout.on("data", chunk => {
      out += chunk
      const found = out.match(/listening on http:\/\/(\S+)/)
      if (!found) {
        return
      }
      clearTimeout(timer)
      proc.stdout.resume()
      resolve({
        url: `http://${found[1]}`,
        ws: `ws://${found[1]}/socket`,
        close: () =>
          new Promise(done => {
            proc.once("exit", done)
            proc.kill("SIGTERM")
          }),
      })
    })
  })
}

/** Headless Debian Chromium through playwright-core (no downloaded browser). */
export async function launchChromium() {
  const {chromium} = await import(path.join(pkgDir, "node_modules", "playwright-core", "index.mjs"))
  return chromium.launch({
    executablePath: process.env.CHROMIUM || "/usr/bin/chromium",
    args: [
      "--headless",
      "--no-sandbox",
      "--disable-gpu",
      "--disable-quic",
      "--no-first-run",
      "--disable-background-networking",
      "--disable-component-update",
      "--disable-sync",
      "--disable-dev-shm-usage",
    ],
  })
}

/** Polls `check` until it returns a truthy value (returned) or `ms` pass (throws `what`). */
export async function until(check, what, ms = 15000) {
  const deadline = Date.now() + ms
  for (;;) {
    const value = await check()
    if (value) {
      return value
    }
    if (Date.now() > deadline) {
      throw new Error(`timed out after ${ms} ms waiting for ${what}`)
    }
    await new Promise(r => setTimeout(r, 25))
  }
}

/**
 * The page the size budget and the start-up benchmark use: it joins a room as `?user=` and
 * renders `presence.list()`; `window.firstSync` is the time (ms since navigation) of the first
 * sync that shows `?members=` members.
 */
export function presencePage(from) {
  return {
    "index.html": `<!doctype html><html><head><meta charset="utf-8"><title>room</title><link rel="icon" href="data:,"></head>
<body><ul id="members"></ul><script type="module" src="./main.js"></script></body></html>
`,
    "main.js": `import {Socket, Presence} from "${from}"
const query = new URLSearchParams(location.search)
const want = Number(query.get("members") || 2)
const socket = new Socket(query.get("ws"), {params: {user_id: query.get("user")}})
socket.connect()
const channel = socket.channel("room:" + (query.get("room") || "lobby"), {meta: {name: query.get("user")}})
const presence = new Presence(channel)
presence.onSync(() => {
  const names = presence.list((id, {metas: [first]}) => first.name || id)
  document.getElementById("members").replaceChildren(...names.map((n) => Object.assign(document.createElement("li"), {textContent: n})))
  if(names.length >= want && window.firstSync === undefined){ window.firstSync = performance.now() }
})
channel.join()
`,
  }
}

/** A page that uses only Socket (for the Socket-only size budget). */
export function socketPage(from) {
  return {
    "index.html": `<!doctype html><html><head><meta charset="utf-8"><link rel="icon" href="data:,"></head><body><script type="module" src="./main.js"></script></body></html>
`,
    "main.js": `import {Socket} from "${from}"
const socket = new Socket("/socket")
socket.connect()
socket.channel("room:lobby").join().receive("ok", () => { document.title = "joined" })
`,
  }
}
