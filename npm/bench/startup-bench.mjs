// Start-up of a page that uses rollcall against the same page using phoenix, over a slow
// network: navigation → the first onSync that lists both members of a room.
//
//   cd npm && npm run build && node bench/startup-bench.mjs            # 9 rounds
//   BENCH_ROUNDS=15 node bench/startup-bench.mjs
//
// Both pages are Vite production builds (toolchains/: the pinned Vite) of one source
// (toolchains/support.mjs, presencePage) importing {Socket, Presence} from "rollcall" or from
// "phoenix", served gzip-compressed from 127.0.0.1. Chromium emulates Slow 4G through the
// DevTools protocol (150 ms latency, 1.6 Mbit/s down, 750 kbit/s up, no cache). Another member
// (a Node phoenix client) is already in the room, so the page's first sync with two members is
// the one after its own join. The two pages alternate, round after round, and the table reports
// each side's median and the median of the per-round ratios.
import path from "node:path"
import fs from "node:fs"
import WebSocket from "ws"
import {Socket} from "phoenix"
import {gzipSize, launchChromium, makeApp, packPackage, presencePage, rollcallBinary, run, scratch, serveStatic, startRollcall, toolBin, until} from "../toolchains/support.mjs"

const ROUNDS = Number(process.env.BENCH_ROUNDS || 9)
const SLOW_4G = {offline: false, latency: 150, downloadThroughput: 1.6e6 / 8, uploadThroughput: 750e3 / 8, connectionType: "cellular4g"}
const median = (xs) => [...xs].sort((a, b) => a - b)[Math.floor(xs.length / 2)]

const work = scratch("startup")
const cleanup = []
try {
  const {dir: rollcall} = packPackage(work)
  const sites = {}
  for(const from of ["phoenix", "rollcall"]){
    const app = makeApp(path.join(work, from), presencePage(from), {rollcall})
    run(process.execPath, [toolBin("vite", "bin/vite.js"), "build", "--logLevel", "warn"], app)
    const assets = path.join(app, "dist", "assets")
    const bytes = fs.readdirSync(assets).reduce((sum, f) => sum + gzipSize(path.join(assets, f)), 0)
    const server = await serveStatic(path.join(app, "dist"))
    cleanup.push(server.close)
    sites[from] = {url: server.url, bytes}
  }

  const release = fs.existsSync(rollcallBinary({release: true}))
  const node = await startRollcall({release})
  cleanup.push(node.close)
  // the member already in the room
  const bot = new Socket(node.ws, {transport: WebSocket, params: {user_id: "bot"}})
  bot.connect()
  const botChannel = bot.channel("room:lobby", {meta: {name: "bot"}})
  await new Promise((resolve, reject) => botChannel.join().receive("ok", resolve).receive("error", reject))
  cleanup.push(() => bot.disconnect())

  const browser = await launchChromium()
  cleanup.push(() => browser.close())
  const times = {phoenix: [], rollcall: []}
  const ratios = []
  for(let round = 0; round < ROUNDS; round++){
    const order = round % 2 === 0 ? ["phoenix", "rollcall"] : ["rollcall", "phoenix"]
    const sample = {}
    for(const from of order){
      const context = await browser.newContext()
      const page = await context.newPage()
      const cdp = await context.newCDPSession(page)
      await cdp.send("Network.enable")
      await cdp.send("Network.setCacheDisabled", {cacheDisabled: true})
      await cdp.send("Network.emulateNetworkConditions", SLOW_4G)
      const query = new URLSearchParams({ws: node.ws, user: `${from}-${round}`, members: "2"})
      await page.goto(`${sites[from].url}/index.html?${query}`, {waitUntil: "commit"})
      sample[from] = await until(() => page.evaluate(() => window.firstSync), `${from}'s first sync`, 30000)
      times[from].push(sample[from])
      await context.close()
    }
    ratios.push(sample.rollcall / sample.phoenix)
  }

  console.log(`Start-up over Slow 4G (150 ms, 1.6 Mbit/s): navigation → first onSync with 2 members, ${ROUNDS} alternating rounds, Vite ${JSON.parse(fs.readFileSync(toolBin("vite", "package.json"), "utf8")).version} production builds, ${release ? "release" : "debug"} server\n`)
  console.log("| page | JS + wasm (gzip) | median | rollcall / phoenix |")
  console.log("|---|---:|---:|---:|")
  console.log(`| phoenix 1.8.12 | ${(sites.phoenix.bytes / 1024).toFixed(1)} KB | ${median(times.phoenix).toFixed(0)} ms | |`)
  console.log(`| rollcall | ${(sites.rollcall.bytes / 1024).toFixed(1)} KB | ${median(times.rollcall).toFixed(0)} ms | ${median(ratios).toFixed(2)}× |`)
} finally {
  for(const close of cleanup.reverse()){ await close() }
  fs.rmSync(work, {recursive: true, force: true})
}
