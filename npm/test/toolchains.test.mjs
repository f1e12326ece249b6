// The packed package in the toolchains front ends are built and tested with, each used with its
// defaults, as a new user would: Vite 5, 6 and 8 (production build and dev server), webpack 5,
// esbuild, Rollup with node-resolve, Jest with jsdom, Vitest with jsdom, Node ESM and CommonJS.
// The tools are pinned in toolchains/package.json. Pages run in headless Chromium against a
// real `rollcall serve` on 127.0.0.1, where two users must see each other; test runners and
// Node run Presence's static functions and an instance, and two sockets meet in a room. Also
// here: what the package costs on the wire (Vite 8 production builds, gzip -9), and publint and
// arethetypeswrong on the tarball.
//
//   (cd npm && npm run build) && cargo build -p rollcall-server
//   npm ci --prefix npm/toolchains
//   cd npm && node --test --test-timeout=240000 test/toolchains.test.mjs

import assert from "node:assert/strict"
import fs from "node:fs"
import path from "node:path"
import {after, before, test} from "node:test"
import {
  gzipSize,
  launchChromium,
  limit,
  makeApp,
  packPackage,
  pkgDir,
  presencePage,
  runAsync,
  scratch,
  serveStatic,
  socketPage,
  startProcess,
  startRollcall,
  toolBin,
  until,
} from "../toolchains/support.mjs"

/** What rollcall may add to the Vite 8 build of presencePage: every JS chunk, gzip -9, summed. */
const PRESENCE_BUDGET = 25000
/** How much more than phoenix a page that uses only Socket may weigh (gzip -9). */
const SOCKET_ONLY_MARGIN = 2048
/** The WebAssembly magic number as the package embeds it (hexadecimal). */
const WASM_MAGIC_HEX = "0061736d"

const node = process.execPath
const VITE = {vite5: "vite5", vite6: "vite6", vite8: "vite"}

// ---------------------------------------------------------------------------------------------
// The apps

/** Every file under `dir`, recursively. */
const filesUnder = dir =>
  fs
    .readdirSync(dir, {recursive: true})
    .map(f => path.join(dir, f))
    .filter(f => fs.statSync(f).isFile())

const appPackage = (extra = {}) => JSON.stringify({name: "app", private: true, version: "1.0.0", ...extra}, null, 2)

/**
 * The check test runners and Node run (as an ES module or CommonJS): Presence's static
 * functions, an instance on a channel that gets a diff before its state, and two sockets that
 * join one room on the server and wait, with a deadline, until each sees both.
 */
const CHECK = `
function meet({Socket, Presence}, {ws, room, users, transport}){
  const sockets = []
  const seen = users.map(() => [])
  return new Promise((resolve, reject) => {
    let settled = false
    const done = (error) => {
      if(settled){ return }
      settled = true
      clearTimeout(timer)
      for(const socket of sockets){ socket.disconnect() }
      if(error){ reject(error) } else { resolve(seen) }
    }
    const timer = setTimeout(() => done(new Error(users + " did not see each other in " + room + " within 15 s; they saw " + JSON.stringify(seen))), 15000)
    users.forEach((user, i) => {
      const socket = new Socket(ws, transport ? {params: {user_id: user}, transport} : {params: {user_id: user}})
      sockets.push(socket)
      socket.connect()
      const channel = socket.channel(room, {meta: {name: user}})
      const presence = new Presence(channel)
      presence.onSync(() => {
        seen[i] = presence.list((key) => key).sort()
        if(seen.every((keys) => users.every((u) => keys.includes(u)))){ done() }
      })
      channel.join().receive("error", (reason) => done(new Error("join " + room + " as " + user + ": " + JSON.stringify(reason))))
    })
  })
}

async function check(rollcall, options){
  const {Socket, Presence} = rollcall
  const joined = []
  const left = []
  let state = Presence.syncState({}, {alice: {metas: [{phx_ref: "1", device: "web"}]}}, (key) => joined.push(key))
  state = Presence.syncDiff(state, {joins: {bob: {metas: [{phx_ref: "2"}]}}, leaves: {alice: {metas: [{phx_ref: "1"}]}}},
    (key) => joined.push(key), (key, current) => left.push(key + ":" + current.metas.length))

  const handlers = {}
  const presence = new Presence({on: (event, callback) => { handlers[event] = callback }, joinRef: () => "7"})
  const syncs = []
  presence.onSync(() => syncs.push(presence.list((key) => key).join(",")))
  handlers.presence_diff({joins: {carol: {metas: [{phx_ref: "3"}]}}, leaves: {}})
  const pendingBefore = presence.inPendingSyncState()
  handlers.presence_state({dave: {metas: [{phx_ref: "4"}]}})

  return {
    dom: typeof document !== "undefined",
    endPoint: new Socket("ws://127.0.0.1:9/socket").endPointURL(),
    static: {keys: Presence.list(state, (key) => key), joined, left},
    instance: {pendingBefore, pendingAfter: presence.inPendingSyncState(), joinRef: presence.joinRef, syncs,
      list: presence.list((key, {metas}) => key + ":" + metas.length)},
    room: await meet(rollcall, options),
  }
}
`

/** What `check` gives for case `name` (`dom`: whether the environment has a document). */
const expected = (name, dom) => ({
  dom,
  endPoint: "ws://127.0.0.1:9/socket/websocket?vsn=2.0.0",
  static: {keys: ["bob"], joined: ["alice", "bob"], left: ["alice:0"]},
  // the diff that came before the state waits for it, as phoenix.js's pendingDiffs
  instance: {
    pendingBefore: true,
    pendingAfter: false,
    joinRef: "7",
    syncs: ["dave,carol"],
    list: ["dave:1", "carol:1"],
  },
  room: [users(name), users(name)],
})

const users = name => [`${name}-a`, `${name}-b`]

/** The settings a check run gets: the server, its room and users, and where to write the result. */
const checkEnv = (app, name) => ({
  ROLLCALL_WS: server.ws,
  ROLLCALL_ROOM: `room:${name}`,
  ROLLCALL_USERS: users(name).join(","),
  ROLLCALL_RESULT: path.join(app, "result.json"),
})
const OPTIONS = `{ws: process.env.ROLLCALL_WS, room: process.env.ROLLCALL_ROOM, users: process.env.ROLLCALL_USERS.split(",")}`

/** The presence page's source (presencePage's main.js) at `file`, next to an HTML page loading `script`. */
function pageAt(file, script) {
  return {
    [file]: presencePage("rollcall")["main.js"],
    "index.html": `<!doctype html><html><head><meta charset="utf-8"><title>room</title><link rel="icon" href="data:,"></head>
<body><ul id="members"></ul>${script}</body></html>
`,
  }
}

/**
 * Each case: the app's files, and how to build it or run it. A build resolves to the directory to
 * serve, the directory of the JS it emitted, and the warnings it printed (a build of the package
 * should have none); a run writes result.json (what `check` returned).
 */
const CASES = {
  ...Object.fromEntries(
    Object.entries(VITE).map(([name, pkg]) => [
      `${name}-build`,
      {
        files: {"package.json": appPackage({type: "module"}), ...presencePage("rollcall")},
        async build(app) {
          const {stdout, stderr} = await runAsync(
            node,
            [toolBin(pkg, "bin/vite.js"), "build", "--logLevel", "warn"],
            app,
          )
          return {
            serve: path.join(app, "dist"),
            emitted: path.join(app, "dist", "assets"),
            warnings: (stdout + stderr).trim(),
          }
        },
      },
    ]),
  ),
  webpack: {
    files: {"package.json": appPackage(), ...pageAt("src/index.js", `<script defer src="dist/main.js"></script>`)},
    async build(app) {
      const {stdout, stderr} = await runAsync(node, [toolBin("webpack", "bin/webpack.js"), "--mode", "production"], app)
      return {
        serve: app,
        emitted: path.join(app, "dist"),
        warnings: /WARNING/.test(stdout + stderr) ? stdout + stderr : "",
      }
    },
  },
  esbuild: {
    files: {
      "package.json": appPackage(),
      ...pageAt("src/main.js", `<script type="module" src="dist/main.js"></script>`),
    },
    async build(app) {
      const {stdout, stderr} = await runAsync(
        toolBin("esbuild", "bin/esbuild"),
        ["src/main.js", "--bundle", "--format=esm", "--outfile=dist/main.js", "--log-level=warning"],
        app,
      )
      return {serve: app, emitted: path.join(app, "dist"), warnings: (stdout + stderr).trim()}
    },
  },
  rollup: {
    files: {
      "package.json": appPackage({type: "module"}),
      ...pageAt("src/main.js", `<script type="module" src="dist/main.js"></script>`),
      "rollup.config.mjs": `import {nodeResolve} from "@rollup/plugin-node-resolve"
export default {input: "src/main.js", output: {file: "dist/main.js", format: "es"}, plugins: [nodeResolve()]}
`,
    },
    async build(app) {
      const {stdout, stderr} = await runAsync(node, [toolBin("rollup", "dist/bin/rollup"), "-c"], app)
      return {
        serve: app,
        emitted: path.join(app, "dist"),
        warnings: /\(!\)/.test(stdout + stderr) ? stdout + stderr : "",
      }
    },
  },
  jest: {
    // a React app's test set-up: CommonJS test files, the jsdom environment
    files: {
      "package.json": appPackage({jest: {testEnvironment: "jsdom"}}),
      "check.js": `${CHECK}\nmodule.exports = check\n`,
      "presence.test.js": `const fs = require("fs")
const rollcall = require("rollcall")
const check = require("./check.js")

test("Presence and Socket work under Jest with jsdom", async () => {
  fs.writeFileSync(process.env.ROLLCALL_RESULT, JSON.stringify(await check(rollcall, ${OPTIONS})))
}, 20000)
`,
    },
    run: (app, env) => runAsync(node, [toolBin("jest", "bin/jest.js"), "--ci", "--runInBand"], app, {env}),
    dom: true,
  },
  vitest: {
    files: {
      "package.json": appPackage({type: "module"}),
      "vitest.config.js": `export default {test: {environment: "jsdom"}}\n`,
      "check.js": `${CHECK}\nexport default check\n`,
      "presence.test.js": `import fs from "node:fs"
import {test} from "vitest"
import * as rollcall from "rollcall"
import check from "./check.js"

test("Presence and Socket work under Vitest with jsdom", async () => {
  fs.writeFileSync(process.env.ROLLCALL_RESULT, JSON.stringify(await check(rollcall, ${OPTIONS})))
}, 20000)
`,
    },
    run: (app, env) => runAsync(node, [toolBin("vitest", "vitest.mjs"), "run"], app, {env}),
    dom: true,
  },
  "node-esm": {
    files: {
      "package.json": appPackage({type: "module"}),
      "check.js": `${CHECK}\nexport default check\n`,
      "app.js": `import fs from "node:fs"
import WebSocket from "ws"
import * as rollcall from "rollcall"
import check from "./check.js"

fs.writeFileSync(process.env.ROLLCALL_RESULT, JSON.stringify(await check(rollcall, {...${OPTIONS}, transport: WebSocket})))
`,
    },
    run: (app, env) => runAsync(node, ["app.js"], app, {env}),
    dom: false,
  },
  "node-cjs": {
    files: {
      "package.json": appPackage(),
      "check.js": `${CHECK}\nmodule.exports = check\n`,
      "app.js": `const fs = require("fs")
const WebSocket = require("ws")
const rollcall = require("rollcall")
const check = require("./check.js")

check(rollcall, {...${OPTIONS}, transport: WebSocket})
  .then((result) => fs.writeFileSync(process.env.ROLLCALL_RESULT, JSON.stringify(result)))
  .catch((error) => { console.error(error); process.exitCode = 1 })
`,
    },
    run: (app, env) => runAsync(node, ["app.js"], app, {env}),
    dom: false,
  },
}

/** The size budget's Vite 8 builds besides vite8-build: Socket-only pages, and phoenix's presence page. */
const SIZE_PAGES = {
  "socket-rollcall": socketPage("rollcall"),
  "socket-phoenix": socketPage("phoenix"),
  "presence-phoenix": presencePage("phoenix"),
}

// ---------------------------------------------------------------------------------------------
// Set-up: one tarball, one server, one browser; every build and run starts at once, two at a time

let work
let tarball
let rollcall
let server
let browser
const cleanup = []
/** name → promise of the build's or run's outcome (settled or not, never unhandled). */
const jobs = new Map()

function start(name, task) {
  const job = task()
  job.catch(() => {})
  jobs.set(name, job)
}

before(async () => {
  for (const [file, fix] of [
    [path.join(pkgDir, "dist", "index.js"), "cd npm && npm run build"],
    [toolBin("vite", "package.json"), "npm ci --prefix npm/toolchains"],
  ]) {
    if (!fs.existsSync(file)) {
      throw new Error(`${file} is missing: run ${fix}`)
    }
  }
  work = scratch("toolchains")
  ;({dir: rollcall, tarball} = packPackage(work))
  server = await startRollcall()
  cleanup.push(server.close)
  const queue = limit(2)
  for (const [name, spec] of Object.entries(CASES)) {
    const app = makeApp(path.join(work, name), spec.files, {rollcall})
    start(name, () => queue(() => (spec.build ? spec.build(app) : spec.run(app, checkEnv(app, name)))))
  }
  for (const [name, files] of Object.entries(SIZE_PAGES)) {
    const app = makeApp(path.join(work, name), {"package.json": appPackage({type: "module"}), ...files}, {rollcall})
    start(name, () =>
      queue(async () => {
        await runAsync(node, [toolBin("vite", "bin/vite.js"), "build", "--logLevel", "warn"], app)
        return path.join(app, "dist")
      }),
    )
  }
  browser = await launchChromium()
  cleanup.push(() => browser.close())
})

after(async () => {
  // the queue may still be running tools when a case failed early: let them finish
  await Promise.allSettled(jobs.values())
  for (const close of cleanup.reverse()) {
    await close()
  }
  if (work) {
    fs.rmSync(work, {recursive: true, force: true})
  }
})

// ---------------------------------------------------------------------------------------------
// Pages

/**
 * Opens the presence page at `url` as two users (two browser contexts) in room `name` and waits
 * until each lists both. Fails with what the pages reported (errors, failed requests) if they
 * do not, and also if they did but reported errors along the way.
 */
async function twoUsersSeeEachOther(url, name) {
  const problems = []
  const contexts = []
  const pages = []
  const [a, b] = users(name)
  try {
    for (const user of [a, b]) {
      const context = await browser.newContext()
      contexts.push(context)
      const page = await context.newPage()
      page.on("pageerror", e => problems.push(`${user}: uncaught ${e.stack || e.message}`))
      page.on("console", m => {
        if (m.type() === "error") {
          problems.push(`${user}: console.error ${m.text()}`)
        }
      })
      page.on("requestfailed", r => problems.push(`${user}: request failed ${r.url()} (${r.failure()?.errorText})`))
      page.on("response", r => {
        if (r.status() >= 400) {
          problems.push(`${user}: HTTP ${r.status()} ${r.url()}`)
        }
      })
      await page.goto(`${url}?${new URLSearchParams({ws: server.ws, user, room: name, members: "2"})}`)
      pages.push(page)
    }
    const listed = () =>
      Promise.all(
        pages.map(page => page.$$eval("#members li", items => items.map(li => li.textContent)).catch(() => [])),
      )
    try {
      await until(
        async () => (await listed()).every(names => names.includes(a) && names.includes(b)),
        `${a} and ${b} to list each other`,
        20000,
      )
    } catch (e) {
      throw new Error(
        `${e.message}; the pages list ${JSON.stringify(await listed())}; they reported:\n${problems.join("\n") || "(nothing)"}`,
      )
    }
  } finally {
    for (const context of contexts) {
      await context.close()
    }
  }
  assert.deepEqual(problems, [], "the pages worked, but reported errors")
}

/** Serves a finished build and checks its page. */
async function checkBuild(t, name) {
  const {serve, emitted, warnings} = await jobs.get(name)
  const scripts = filesUnder(emitted).filter(f => f.endsWith(".js"))
  t.diagnostic(
    `emitted JS (gzip -9 bytes): ${scripts.map(f => `${path.relative(serve, f)} ${gzipSize(f)}`).join(", ")}`,
  )
  const site = await serveStatic(serve)
  cleanup.push(site.close)
  await twoUsersSeeEachOther(`${site.url}/index.html`, name)
  assert.equal(warnings, "", `${name} built with warnings`)
}

for (const name of ["vite5-build", "vite6-build", "vite8-build", "webpack", "esbuild", "rollup"]) {
  test(`${name}: a page built with the tool's defaults lets two users see each other`, t => checkBuild(t, name))
}

for (const [name, pkg] of Object.entries(VITE)) {
  test(`${name} dev server: the page it serves lets two users see each other`, async () => {
    const app = makeApp(
      path.join(work, `${name}-dev`),
      {"package.json": appPackage({type: "module"}), ...presencePage("rollcall")},
      {rollcall},
    )
    // Vite takes its default port or, when that is taken, the next free one (Vite 5 and 6 read
    // `--port 0` as the default), and prints the URL it listens on: that URL is the one used.
    const dev = await startProcess(node, [toolBin(pkg, "bin/vite.js"), "--host", "127.0.0.1"], app, {
      ready: /Local:\s+(http:\/\/127\.0\.0\.1:\d+)\//,
    })
    try {
      await twoUsersSeeEachOther(`${dev.match[1]}/`, `${name}-dev`)
    } catch (e) {
      throw new Error(`${e.message}\nthe dev server printed:\n${dev.output()}`)
    } finally {
      await dev.close()
    }
  })
}

// ---------------------------------------------------------------------------------------------
// Test runners and Node

for (const [name, spec] of Object.entries(CASES).filter(([, spec]) => spec.run)) {
  test(`${name}: static functions, an instance and two sockets in a room give phoenix.js's results`, async () => {
    await jobs.get(name)
    const result = JSON.parse(fs.readFileSync(path.join(work, name, "result.json"), "utf8"))
    assert.deepEqual(result, expected(name, spec.dom))
  })
}

// ---------------------------------------------------------------------------------------------
// Size

/** The gzip -9 size of each JavaScript file a Vite build emitted, and their sum. */
function jsSizes(dist) {
  const assets = path.join(dist, "assets")
  const sizes = Object.fromEntries(
    fs
      .readdirSync(assets)
      .filter(f => f.endsWith(".js"))
      .map(f => [f, gzipSize(path.join(assets, f))]),
  )
  return {sizes, total: Object.values(sizes).reduce((sum, n) => sum + n, 0)}
}

test("size: a Vite 8 page with Presence stays within 25,000 bytes of gzip JS", async t => {
  const {serve} = await jobs.get("vite8-build")
  const rollcallPage = jsSizes(serve)
  const phoenixPage = jsSizes(await jobs.get("presence-phoenix"))
  t.diagnostic(`presence page, rollcall: ${rollcallPage.total} bytes gzip -9 (${JSON.stringify(rollcallPage.sizes)})`)
  t.diagnostic(`presence page, phoenix: ${phoenixPage.total} bytes gzip -9`)
  assert.ok(
    rollcallPage.total <= PRESENCE_BUDGET,
    `the presence page's JS is ${rollcallPage.total} bytes gzip, over the budget of ${PRESENCE_BUDGET}`,
  )
})

test("size: a Vite 8 page with only Socket weighs at most phoenix's + 2,048 bytes, and carries no WebAssembly", async t => {
  const rollcallDist = await jobs.get("socket-rollcall")
  const rollcallPage = jsSizes(rollcallDist)
  const phoenixPage = jsSizes(await jobs.get("socket-phoenix"))
  t.diagnostic(
    `Socket-only page: rollcall ${rollcallPage.total} bytes gzip -9, phoenix ${phoenixPage.total} (+${rollcallPage.total - phoenixPage.total})`,
  )
  assert.ok(
    rollcallPage.total <= phoenixPage.total + SOCKET_ONLY_MARGIN,
    `the Socket-only page's JS is ${rollcallPage.total} bytes gzip, phoenix's ${phoenixPage.total}: more than ${SOCKET_ONLY_MARGIN} over`,
  )
  const carrying = filesUnder(rollcallDist).filter(
    f => fs.readFileSync(f, "latin1").includes(WASM_MAGIC_HEX) || f.endsWith(".wasm"),
  )
  assert.deepEqual(
    carrying.map(f => path.relative(rollcallDist, f)),
    [],
    "files of the Socket-only build that carry the WebAssembly module",
  )
})

// ---------------------------------------------------------------------------------------------
// Package lint

test("publint finds nothing to report in the tarball (suggestions included)", async () => {
  let output
  try {
    const {stdout, stderr} = await runAsync(
      node,
      [toolBin("publint", "src/cli.js"), "run", tarball, "--strict", "--level", "suggestion"],
      work,
    )
    output = stdout + stderr
  } catch (e) {
    assert.fail(e.message)
  }
  assert.match(output, /All good!/, output)
})

test("arethetypeswrong finds no problem in the tarball, in any resolution mode", async () => {
  const attw = toolBin("@arethetypeswrong/cli", "dist/index.js")
  const {stdout} = await runAsync(node, [attw, tarball, "--format", "json"], work).catch(async () => {
    // its table says what is wrong better than its JSON
    const table = await runAsync(node, [attw, tarball, "--format", "ascii"], work).catch(e => ({stdout: e.message}))
    assert.fail(`attw reports problems:\n${table.stdout}`)
  })
  const {analysis} = JSON.parse(stdout)
  assert.ok(analysis.entrypoints["."], "attw checked the package's main entry")
  for (const [entry, {resolutions}] of Object.entries(analysis.entrypoints)) {
    assert.deepEqual(
      Object.keys(resolutions).sort(),
      ["bundler", "node10", "node16-cjs", "node16-esm"],
      `the resolution modes attw checked ${entry} in`,
    )
  }
  assert.deepEqual(analysis.problems, [])
})
