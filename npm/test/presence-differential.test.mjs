// rollcall's Presence against phoenix.js's on seeded random histories: the same operations on
// both must give the same states (key order included), the same callbacks with the same
// arguments, and the same list() results. Keys include integer-like ones and names of
// Object.prototype members; refs include numbers, null and missing ones; presences carry
// presence-level fields.
import {test} from "node:test"
import assert from "node:assert/strict"
import * as phoenix from "phoenix"
import {Presence as Ours} from "rollcall"

const Reference = phoenix.Presence

// xorshift32: a reproducible stream from a seed
function rng(seed){
  let x = seed >>> 0 || 1
  const next = () => {
    x ^= x << 13; x >>>= 0
    x ^= x >>> 17
    x ^= x << 5; x >>>= 0
    return x / 4294967296
  }
  return {
    int: (n) => Math.floor(next() * n),
    pick: (xs) => xs[Math.floor(next() * xs.length)],
    chance: (p) => next() < p,
  }
}

const KEYS = ["a", "b", "c", "7", "12", "0", "01", "__proto__", "constructor", "toString", "user:1", "4294967295"]
const REFS = ["r1", "r2", "r3", "r4", "r5", 1, 2, null, undefined]

function meta(r, extra){
  const m = {device: r.pick(["web", "ios"]), n: r.int(5)}
  const ref = r.pick(REFS)
  if(ref !== undefined){ m.phx_ref = ref }
  if(extra){ m.phx_ref_prev = r.pick(REFS.filter(x => typeof x === "string")) }
  return m
}

function presence(r){
  const p = {}
  if(r.chance(0.3)){ p.user = {name: r.pick(["Ada", "Grace"])} }
  p.metas = Array.from({length: 1 + r.int(3)}, () => meta(r, r.chance(0.2)))
  if(r.chance(0.2)){ p.extra = r.int(100) }
  return p
}

// an object with the given own keys, JSON.parse style (so "__proto__" is an own key)
function objectOf(r, n){
  const entries = []
  for(let i = 0; i < n; i++){ entries.push([r.pick(KEYS), presence(r)]) }
  const text = "{" + entries.map(([k, v]) => `${JSON.stringify(k)}:${JSON.stringify(v)}`).join(",") + "}"
  return JSON.parse(text)
}

// a leave that names metas the state may hold: reuse refs from the reference's state
function diffFor(r, refState){
  const joins = objectOf(r, r.int(3))
  const leaves = {}
  const keys = Object.getOwnPropertyNames(refState)
  for(let i = r.int(3); i > 0; i--){
    if(keys.length > 0 && r.chance(0.8)){
      const k = r.pick(keys)
      const metas = refState[k].metas.filter(() => r.chance(0.6)).map(m => ({...m}))
      if(r.chance(0.2)){ metas.push(meta(r, false)) }
      Object.defineProperty(leaves, k, {value: {metas}, enumerable: true, writable: true, configurable: true})
    } else {
      const k = r.pick(KEYS)
      Object.defineProperty(leaves, k, {value: presence(r), enumerable: true, writable: true, configurable: true})
    }
  }
  return {joins, leaves}
}

// what a callback saw, frozen at call time (key order of nested objects included)
const snap = (x) => x === undefined ? "undefined" : JSON.stringify(x)
const dump = (state) => JSON.stringify(Object.getOwnPropertyNames(state).map(k => [k, state[k]]))
const recorder = (log) => ({
  onJoin: (key, cur, pres) => log.push(["join", key, snap(cur), snap(pres)]),
  onLeave: (key, cur, pres) => log.push(["leave", key, snap(cur), snap(pres)]),
})

function clone(x){ return x === undefined ? undefined : JSON.parse(JSON.stringify(x)) }

test("static syncState / syncDiff agree with phoenix.js on random histories", () => {
  for(let seed = 1; seed <= 300; seed++){
    const r = rng(seed)
    let refState = {}
    let ourState = {}
    for(let step = 0; step < 25; step++){
      const refLog = []
      const ourLog = []
      const ref = recorder(refLog)
      const ours = recorder(ourLog)
      if(step === 0 || r.chance(0.15)){
        const next = objectOf(r, r.int(6))
        const refNext = clone(next)
        const ourNext = clone(next)
        refState = Reference.syncState(refState, refNext, ref.onJoin, ref.onLeave)
        ourState = Ours.syncState(ourState, ourNext, ours.onJoin, ours.onLeave)
        assert.equal(dump(ourNext), dump(refNext), `seed ${seed} step ${step}: newState after syncState`)
      } else {
        const diff = diffFor(r, refState)
        refState = Reference.syncDiff(refState, clone(diff), ref.onJoin, ref.onLeave)
        ourState = Ours.syncDiff(ourState, clone(diff), ours.onJoin, ours.onLeave)
      }
      assert.deepEqual(ourLog, refLog, `seed ${seed} step ${step}: callbacks`)
      assert.equal(dump(ourState), dump(refState), `seed ${seed} step ${step}: state`)
      assert.equal(Object.getPrototypeOf(ourState), null)
    }
  }
})

test("instances agree with phoenix.js on random histories, list() after every event", () => {
  for(let seed = 1; seed <= 200; seed++){
    const r = rng(seed * 7919)
    const make = (P, log) => {
      const handlers = {}
      const channel = {on: (ev, cb) => { handlers[ev] = cb }, joinRef: () => channel.ref, ref: "1"}
      const p = new P(channel)
      const rec = recorder(log)
      p.onJoin(rec.onJoin)
      p.onLeave(rec.onLeave)
      p.onSync(() => log.push(["sync"]))
      return {p, handlers, channel}
    }
    const refLog = []
    const ourLog = []
    const ref = make(Reference, refLog)
    const ours = make(Ours, ourLog)
    const by = (k, p) => `${k}=${p.metas.length}`
    for(let step = 0; step < 30; step++){
      const roll = r.int(10)
      if(roll === 0){
        const joinRef = String(2 + r.int(3))
        ref.channel.ref = joinRef
        ours.channel.ref = joinRef
      } else if(roll <= 2){
        const next = objectOf(r, r.int(6))
        ref.handlers.presence_state(clone(next))
        ours.handlers.presence_state(clone(next))
      } else {
        const diff = diffFor(r, ref.p.state)
        ref.handlers.presence_diff(clone(diff))
        ours.handlers.presence_diff(clone(diff))
      }
      const where = `seed ${seed} step ${step}`
      assert.deepEqual(ourLog, refLog, `${where}: callbacks`)
      assert.equal(dump(ours.p.state), dump(ref.p.state), `${where}: state`)
      assert.equal(ours.p.pendingDiffs.length, ref.p.pendingDiffs.length, `${where}: pending diffs`)
      assert.equal(ours.p.inPendingSyncState(), ref.p.inPendingSyncState(), `${where}: pending`)
      if(r.chance(0.7)){
        assert.deepEqual(ours.p.list(by), ref.p.list(by), `${where}: list(by)`)
        const listed = ours.p.list()
        const keys = Object.getOwnPropertyNames(ours.p.state)
        assert.equal(listed.length, keys.length, `${where}: list() length`)
        listed.forEach((x, i) => assert.equal(x, ours.p.state[keys[i]], `${where}: list() live object ${i}`))
      }
    }
  }
})
