// rollcall's Presence against phoenix.js's, in the same run.
//
//   cd npm && npm run build && node bench/presence-bench.mjs    (the built package, dist/)
//   BENCH_SIZES=100,10000 BENCH_ROUNDS=5 node bench/presence-bench.mjs      # quicker
//   BENCH_ONLY=syncDiff node bench/presence-bench.mjs                       # rows whose name has it
//
// Fixtures and operations are those of the project's shared baseline benchmark
// of phoenix.js: every presence has one meta {phx_ref, online_at, device}, keys are
// "user:<i>", the client state is what syncState returns. Each (operation, N, implementation)
// sample runs in a fresh Node process started with --expose-gc; the two implementations
// alternate, round after round, so that load from other processes on a shared machine hits
// both alike. A row reports each side's median over rounds and the median of the per-round
// ratios (phoenix time / rollcall time: above 1 means rollcall is faster).

import {spawnSync} from "node:child_process"
import os from "node:os"
import {performance} from "node:perf_hooks"
import {fileURLToPath} from "node:url"

const SELF = fileURLToPath(import.meta.url)
const OURS = "rollcall"
const SIZES = (process.env.BENCH_SIZES || "100,1000,10000,100000").split(",").map(Number)
const ROUNDS = Number(process.env.BENCH_ROUNDS || 5)
const ONLY = process.env.BENCH_ONLY || ""
const STREAM_N = 10000
const STREAM_LEN = 1000
const noop = () => {}

// ---------- fixtures ----------
const ref = (i, gen = 0) => `F${gen.toString(36)}x${i.toString(36).padStart(6, "0")}AbCdEf`
const meta = (i, gen = 0) => ({phx_ref: ref(i, gen), online_at: 1700000000 + i, device: "web"})
const key = i => `user:${i}`
function serverState(n, gen = 0) {
  const s = {}
  for (let i = 0; i < n; i++) {
    s[key(i)] = {metas: [meta(i, gen)]}
  }
  return s
}
// diff i: a new key joins (i % 3 == 0), a key leaves (1), a key's meta is updated (2)
function stream(n, len) {
  const diffs = []
  for (let i = 0; i < len; i++) {
    if (i % 3 === 0) {
      diffs.push({joins: {[`new:${i}`]: {metas: [meta(n + i, 2)]}}, leaves: {}})
    } else if (i % 3 === 1) {
      const idx = (i * 7) % n
      diffs.push({joins: {}, leaves: {[key(idx)]: {metas: [meta(idx)]}}})
    } else {
      const idx = (i * 7 + 3) % n
      const updated = {...meta(idx, 3), phx_ref_prev: ref(idx)}
      diffs.push({joins: {[key(idx)]: {metas: [updated]}}, leaves: {[key(idx)]: {metas: [meta(idx)]}}})
    }
  }
  return diffs
}

const median = xs => [...xs].sort((a, b) => a - b)[Math.floor(xs.length / 2)]
const gc = () => globalThis.gc && globalThis.gc()

function timeRuns(runs, warmups, setup, fn) {
  const out = []
  for (let r = -warmups; r < runs; r++) {
    const ctx = setup()
    gc()
    const t0 = performance.now()
    fn(ctx)
    const t1 = performance.now()
    if (r >= 0) {
      out.push(t1 - t0)
    }
  }
  return median(out)
}

function perCall(samples, setup, call, undo) {
  const out = []
  for (let i = -200; i < samples; i++) {
    const ctx = setup(i)
    const t0 = performance.now()
    const r = call(ctx)
    const t1 = performance.now()
    if (i >= 0) {
      out.push(t1 - t0)
    }
    undo(ctx, r)
  }
  return median(out)
}

// ---------- tasks: id -> (Presence) => median ms ----------
function tasks() {
  const t = []
  for (const n of SIZES) {
    const runs = n <= 1000 ? 31 : n >= 100000 ? 3 : 7
    const warm = n <= 1000 ? 20 : n <= 10000 ? 3 : 1
    t.push({
      id: `syncState empty -> N`,
      n,
      run: P => {
        const s = serverState(n)
        return timeRuns(
          runs,
          warm,
          () => s,
          x => P.syncState({}, x, noop, noop),
        )
      },
    })
    t.push({
      id: `syncState N -> identical N`,
      n,
      run: P => {
        const client = P.syncState({}, serverState(n))
        return timeRuns(
          runs,
          warm,
          () => serverState(n),
          x => P.syncState(client, x, noop, noop),
        )
      },
    })
    t.push({
      id: `syncDiff, 1 join (new key)`,
      n,
      run: P => {
        const state = P.syncState({}, serverState(n))
        return perCall(
          2000,
          i => ({k: `joiner:${i}`, d: {joins: {[`joiner:${i}`]: {metas: [meta(n + 1 + (i & 1023), 1)]}}, leaves: {}}}),
          c => P.syncDiff(state, c.d, noop, noop),
          (c, s) => {
            delete s[c.k]
          },
        )
      },
    })
    t.push({
      id: `syncDiff, 1 leave (key removed)`,
      n,
      run: P => {
        const state = P.syncState({}, serverState(n))
        return perCall(
          2000,
          i => {
            const idx = ((i + 200) * 7919) % n
            return {k: key(idx), idx, d: {joins: {}, leaves: {[key(idx)]: {metas: [meta(idx)]}}}}
          },
          c => P.syncDiff(state, c.d, noop, noop),
          (c, s) => {
            s[c.k] = {metas: [meta(c.idx)]}
          },
        )
      },
    })
    t.push({
      id: `list (default chooser)`,
      n,
      run: P => {
        const state = P.syncState({}, serverState(n))
        return timeRuns(
          runs,
          warm,
          () => state,
          s => P.list(s),
        )
      },
    })
  }
  const instance = (P, withList) => {
    const handlers = {}
    const p = new P({
      on: (ev, cb) => {
        handlers[ev] = cb
      },
      joinRef: () => "1",
    })
    let _sink = 0
    p.onJoin(noop)
    p.onLeave(noop)
    p.onSync(
      withList
        ? () => {
            _sink += p.list().length
          }
        : noop,
    )
    handlers.presence_state(serverState(STREAM_N))
    return handlers
  }
  t.push({
    id: `${STREAM_LEN} diffs, new Presence(ch), onSync no-op`,
    n: STREAM_N,
    run: P => {
      const diffs = stream(STREAM_N, STREAM_LEN)
      return timeRuns(
        5,
        1,
        () => instance(P, false),
        h => {
          for (const d of diffs) {
            h.presence_diff(d)
          }
        },
      )
    },
  })
  t.push({
    id: `${STREAM_LEN} diffs, new Presence(ch), onSync calls list()`,
    n: STREAM_N,
    run: P => {
      const diffs = stream(STREAM_N, STREAM_LEN)
      return timeRuns(
        3,
        1,
        () => instance(P, true),
        h => {
          for (const d of diffs) {
            h.presence_diff(d)
          }
        },
      )
    },
  })
  return t
}

function fmt(ms) {
  if (ms < 1) {
    return `${(ms * 1e3).toFixed(2)} µs`
  }
  if (ms < 1000) {
    return `${ms.toFixed(2)} ms`
  }
  return `${(ms / 1000).toFixed(2)} s`
}

const taskArg = process.argv.find(a => a.startsWith("--task="))
if (taskArg) {
  const [index, impl] = taskArg.slice("--task=".length).split(":")
  const mod = impl === "phoenix" ? await import("phoenix") : await import(OURS)
  process.stdout.write(JSON.stringify(tasks()[Number(index)].run(mod.Presence)))
} else {
  console.log(
    `Presence: rollcall vs phoenix.js, node ${process.version}, ${os.cpus().length} CPUs, ${ROUNDS} alternating rounds, fresh process per sample\n`,
  )
  console.log("| operation | N | phoenix.js | rollcall | phoenix / rollcall |")
  console.log("|---|---:|---:|---:|---:|")
  const all = tasks()
  for (let i = 0; i < all.length; i++) {
    if (!all[i].id.includes(ONLY)) {
      continue
    }
    const times = {phoenix: [], rollcall: []}
    const ratios = []
    for (let r = 0; r < ROUNDS; r++) {
      const round = {}
      for (const impl of ["phoenix", "rollcall"]) {
        const child = spawnSync(process.execPath, ["--expose-gc", SELF, `--task=${i}:${impl}`], {encoding: "utf8"})
        if (child.status !== 0) {
          throw new Error(`${all[i].id} (${impl}) failed:\n${child.stderr}`)
        }
        round[impl] = Number(child.stdout)
        times[impl].push(round[impl])
      }
      ratios.push(round.phoenix / round.rollcall)
    }
    console.log(
      `| ${all[i].id} | ${all[i].n.toLocaleString("en-US")} | ${fmt(median(times.phoenix))} | ${fmt(median(times.rollcall))} | ${median(ratios).toFixed(2)}× |`,
    )
  }
}
