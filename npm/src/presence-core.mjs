// The phoenix.js-compatible Presence, on rollcall's Rust core (wasm).
//
// Division of labour (see docs/ARCHITECTURE.md, "Presence in the npm package"):
// - the Rust core decides: which metas a join keeps, which metas a leave removes, which keys a
//   syncState joins and leaves, and (for an instance) which keys the state holds in JavaScript
//   order under stable slot numbers;
// - this file keeps the JS objects, because callers must see live objects with phoenix.js's
//   aliasing (onLeave's `current` is the stored object, list() returns stored objects, ...),
//   and applies the core's answers to them.
// The core is asked once per call with one JSON string and answers with one Int32Array, so a
// diff costs one boundary crossing whatever its size, and never anything O(state).
//
// This module has no imports: presence.mjs (ESM) and the generated dist/presence-core.cjs
// (CommonJS) each hand it their own wasm bindings.

const OBJECT_PROTO = Object.prototype
const ARRAY_PROTO = Array.prototype
const BAIL = Symbol("rollcall.clone.bail")
const noop = function (){ }

// JSON.parse(JSON.stringify(v)) for the data presences are made of (plain objects, arrays,
// strings, finite numbers, booleans, null), without the text round trip. Anything else — a
// toJSON method, a Date, a class instance, a BigInt, a cycle, very deep nesting — goes through
// JSON itself, so results and errors are JSON's.
function cloneValue(v, depth){
  switch(typeof v){
    case "string": case "boolean": return v
    case "number": return Number.isFinite(v) ? (v === 0 ? 0 : v) : null
    case "object": {
      if(v === null){ return null }
      if(depth > 64){ throw BAIL }
      const proto = Object.getPrototypeOf(v)
      if(proto === ARRAY_PROTO){
        if(!Array.isArray(v)){ throw BAIL }
        const n = v.length
        const out = new Array(n)
        for(let i = 0; i < n; i++){
          const e = v[i]
          // leaf values inline: most of a presence is strings and numbers
          switch(typeof e){
            case "string": case "boolean": out[i] = e; break
            case "number": out[i] = Number.isFinite(e) ? (e === 0 ? 0 : e) : null; break
            case "undefined": case "function": case "symbol": out[i] = null; break
            default: out[i] = cloneValue(e, depth + 1)
          }
        }
        return out
      }
      if((proto !== OBJECT_PROTO && proto !== null) || Array.isArray(v)){ throw BAIL }
      // for-in walks own enumerable keys in Object.keys order here: clone() has checked that
      // Object.prototype has no enumerable keys. An own toJSON is JSON's business.
      const out = {}
      for(const k in v){
        if(k === "toJSON"){ throw BAIL }
        const e = v[k]
        const t = typeof e
        if(t === "undefined" || t === "function" || t === "symbol"){ continue }
        if(k === "__proto__"){
          // JSON.parse makes an own property here; assignment would set the prototype
          Object.defineProperty(out, k, {value: cloneValue(e, depth + 1), enumerable: true, writable: true, configurable: true})
        } else if(t === "string" || t === "boolean"){
          out[k] = e
        } else if(t === "number"){
          out[k] = Number.isFinite(e) ? (e === 0 ? 0 : e) : null
        } else {
          out[k] = cloneValue(e, depth + 1)
        }
      }
      return out
    }
    default: throw BAIL
  }
}

// Whether the built-in prototypes are as JSON.stringify expects for the fast path: no toJSON
// and no enumerable keys on Object.prototype or Array.prototype.
function prototypesArePristine(){
  if(OBJECT_PROTO.toJSON !== undefined || ARRAY_PROTO.toJSON !== undefined){ return false }
  for(const _ in OBJECT_PROTO){ return false }
  return true
}

function clone(v){
  if(!prototypesArePristine()){ return JSON.parse(JSON.stringify(v)) }
  try {
    return cloneValue(v, 0)
  } catch (e){
    if(e === BAIL){ return JSON.parse(JSON.stringify(v)) }
    throw e
  }
}

function toNullProtoObj(obj){
  if(Object.getPrototypeOf(obj) === null){ return obj }
  const cleaned = Object.create(null)
  const keys = Object.getOwnPropertyNames(obj)
  for(let i = 0; i < keys.length; i++){ cleaned[keys[i]] = obj[keys[i]] }
  return cleaned
}

// A phx_ref as the core reads it (core::presence::plan::RefKey): strings, finite numbers,
// booleans and null as themselves, [] for undefined, {} for a ref that is === to nothing it can
// be compared with here (an object: one side of every comparison is a fresh JSON copy; NaN and
// the infinities, which such a copy turns into null; BigInt and symbols, which JSON refuses).
const UNDEFINED_REF = []
const NEVER_REF = {}
function refKey(m){
  const r = m.phx_ref
  switch(typeof r){
    case "string": case "boolean": return r
    case "number": return Number.isFinite(r) ? r : NEVER_REF
    case "undefined": return UNDEFINED_REF
    case "object": return r === null ? null : NEVER_REF
    default: return NEVER_REF
  }
}

// pushes the count and the refs of a presence's metas onto a flat input
function pushRefs(out, presence){
  const metas = presence.metas
  const n = metas.length
  out.push(n)
  for(let i = 0; i < n; i++){ out.push(refKey(metas[i])) }
}

// toNullProtoObj(clone(obj)) without the intermediate plain object. Also returns the keys and
// values of the copy in key order, which saves the caller N lookups in a dictionary object.
function cloneToNullProto(obj){
  if(obj !== null && typeof obj === "object" && !Array.isArray(obj) && prototypesArePristine()){
    const proto = Object.getPrototypeOf(obj)
    if((proto === OBJECT_PROTO || proto === null) && obj.toJSON === undefined){
      try {
        const out = Object.create(null)
        const keys = Object.keys(obj)
        const n = keys.length
        // keys[i] and values[i] describe the i-th copied entry; entries JSON drops move the
        // rest up (rare: the arrays stay as they are until the first one)
        const values = new Array(n)
        let m = 0
        for(let i = 0; i < n; i++){
          const key = keys[i]
          const v = obj[key]
          const t = typeof v
          if(t === "undefined" || t === "function" || t === "symbol"){ continue }
          const copy = cloneValue(v, 1)
          out[key] = copy
          keys[m] = key
          values[m++] = copy
        }
        keys.length = m
        values.length = m
        return {out, keys, values}
      } catch (e){
        if(e !== BAIL){ throw e }
      }
    }
  }
  const out = toNullProtoObj(JSON.parse(JSON.stringify(obj)))
  const keys = Object.getOwnPropertyNames(out)
  return {out, keys, values: keys.map(k => out[k])}
}

const hasOwn = (obj, key) => OBJECT_PROTO.hasOwnProperty.call(obj, key)

// Whether JavaScript lists `key` among the integer-like keys ("0".."4294967294", no leading
// zeros), which come first in ascending order.
function isArrayIndex(key){
  const n = key.length
  const c = key.charCodeAt(0)
  if(n === 0 || n > 10 || c < 48 || c > 57 || (c === 48 && n > 1)){ return false }
  for(let i = 1; i < n; i++){
    const d = key.charCodeAt(i)
    if(d < 48 || d > 57){ return false }
  }
  return Number(key) < 4294967295
}

// The keys (with their values) in the order an object would list them had they been added in
// the given order: integer-like keys ascending, then the rest as given.
function arrayIndexKeysFirst(keys, values){
  let ints = null
  for(let i = 0; i < keys.length; i++){
    if(isArrayIndex(keys[i])){ (ints || (ints = [])).push(i) }
  }
  if(ints === null){ return {keys, values} }
  ints.sort((a, b) => Number(keys[a]) - Number(keys[b]))
  const order = ints.concat(keys.map((_, i) => i).filter(i => !isArrayIndex(keys[i])))
  return {keys: order.map(i => keys[i]), values: order.map(i => values[i])}
}

// JSON copies of the values, dropping the entries JSON.stringify would drop from an object
// (undefined, functions, symbols)
function copyEntries(keys, values){
  const outKeys = []
  const outValues = []
  for(let i = 0; i < keys.length; i++){
    const v = values[i]
    const t = typeof v
    if(t === "undefined" || t === "function" || t === "symbol"){ continue }
    outKeys.push(keys[i])
    outValues.push(clone(v))
  }
  return {keys: outKeys, values: outValues}
}

// Whether two metas lists have ===-equal refs position by position: then every ref of each is
// among the other's (phoenix.js's indexOf test), so nothing joins and nothing leaves. Anything
// else (other lengths, orders, NaN, non-arrays) is left to the core, and to its errors.
function sameRefs(a, b){
  if(!Array.isArray(a) || !Array.isArray(b)){ return false }
  const n = a.length
  if(n !== b.length){ return false }
  for(let i = 0; i < n; i++){
    if(a[i].phx_ref !== b[i].phx_ref){ return false }
  }
  return true
}

function pick(list, plan, at, n){
  const out = new Array(n)
  for(let i = 0; i < n; i++){ out[i] = list[plan[at + i]] }
  return out
}

export function definePresence(wasm){
  // the answer of a static diff plan is read straight from wasm memory (one-key diffs are
  // dominated by per-call costs), and copied before any callback can call into wasm again
  const memory = wasm.answerMemory()
  let memoryView = new Int32Array(memory.buffer)
  function planDiff(input){
    const n = wasm.planDiffInto(JSON.stringify(input))
    if(n < 0){ throw new Error(wasm.lastError()) }
    if(memoryView.buffer !== memory.buffer){ memoryView = new Int32Array(memory.buffer) }
    const at = wasm.answerPtr() >>> 2
    return memoryView.slice(at, at + n)
  }
  const utf8 = new TextEncoder()
  const planState = (input) => wasm.planState(utf8.encode(JSON.stringify(input)))

  // Applies {joins, leaves} (already cloned) to `state` (null-prototype), phoenix.js order:
  // every join, then every leave. `index` is an instance's key index or null (static API).
  function applyDiff(state, joins, leaves, onJoin, onLeave, index){
    // packed arrays built by push, like syncState's: one shape for applyEntries to optimize for
    const jKeys = []
    const jVals = []
    const jNames = Object.getOwnPropertyNames(joins)
    for(let i = 0; i < jNames.length; i++){
      jKeys.push(jNames[i])
      jVals.push(joins[jNames[i]])
    }
    // phoenix.js applies the joins before it trips over missing leaves
    if(leaves === null || leaves === undefined){
      applyEntries(state, jKeys, jVals, null, null, onJoin, onLeave, index)
      Object.getOwnPropertyNames(leaves) // throws phoenix.js's TypeError
    }
    const lKeys = []
    const lVals = []
    const lNames = Object.getOwnPropertyNames(leaves)
    for(let i = 0; i < lNames.length; i++){
      lKeys.push(lNames[i])
      lVals.push(leaves[lNames[i]])
    }
    return applyEntries(state, jKeys, jVals, lKeys, lVals, onJoin, onLeave, index)
  }

  // applyDiff over the diff's keys and (cloned) presences, each in JavaScript key order
  // One loop per function: syncState runs these over N keys, a diff over one or two, and V8
  // optimizes a function with one hot loop for both without falling into deopt loops.
  function applyEntries(state, jKeys, joins, lKeys, leaves, onJoin, onLeave, index){
    const run = new DiffRun(state, jKeys, joins, lKeys, leaves, index)
    joinTokens(run)
    leaveTokens(run)
    let plan = null
    if(run.sentJoins > 0 || run.nl > 0){
      if(index !== null){
        plan = index.plan(run.tokens, state)
        // still out of step after a reset (a falsy value stored under a key): plan without it
        if(plan === null){ run.index = index = null }
      }
      if(index === null){ plan = planDiff(run.tokens) }
    }
    run.plan = plan
    // a callback that throws leaves the state half-updated, as in phoenix.js; the index then
    // is out of step, so it only counts as in step again once the whole diff is applied
    if(index !== null){
      index.of = null
      // an instance plan carries the slots after the plan proper: one per join, then one per
      // leave that is not skipped
      run.slotAt = plan === null ? 0 : plan.length - run.sentJoins - countKept(plan, run.sentJoins, run.nl)
    }
    applyJoins(run, onJoin)
    applyLeaves(run, onLeave)
    if(index !== null && !run.stale){ index.of = state }
    return state
  }

  class DiffRun {
    constructor(state, jKeys, joins, lKeys, leaves, index){
      this.state = state
      this.jKeys = jKeys
      this.joins = joins
      this.lKeys = lKeys
      this.leaves = leaves
      this.index = index
      this.nj = jKeys.length
      this.nl = lKeys === null ? 0 : lKeys.length
      this.curs = new Array(this.nj)
      // position of each join among those sent to the core (-1: nothing to match)
      this.sent = new Array(this.nj)
      // the flat plan input of core::presence::plan::DiffInput::from_flat
      this.tokens = [0]
      this.sentJoins = 0
      this.plan = null
      this.at = 0
      this.slotAt = 0
      this.stale = false
    }
  }

  function joinTokens(run){
    const {state, jKeys, joins, curs, sent, tokens, nj} = run
    const all = run.index !== null
    let sentJoins = 0
    for(let i = 0; i < nj; i++){
      const key = jKeys[i]
      const cur = state[key]
      curs[i] = cur
      if(cur || all){
        sent[i] = sentJoins++
        tokens.push(key)
        if(cur){ pushRefs(tokens, cur) } else { tokens.push(-1) }
        pushRefs(tokens, joins[i])
      } else {
        sent[i] = -1
      }
    }
    tokens[0] = sentJoins
    run.sentJoins = sentJoins
  }

  function leaveTokens(run){
    const {state, jKeys, joins, lKeys, leaves, sent, tokens, nj, nl} = run
    tokens.push(nl)
    let joinPos = null
    for(let i = 0; i < nl; i++){
      const key = lKeys[i]
      tokens.push(key)
      let k
      if(nj > 0){
        if(joinPos === null){
          joinPos = new Map()
          for(let q = 0; q < nj; q++){ joinPos.set(jKeys[q], q) }
        }
        k = joinPos.get(key)
      }
      if(k !== undefined && sent[k] >= 0){
        tokens.push(sent[k], -1)
      } else if(k !== undefined){
        // joined as a new key without a plan entry: it holds exactly the joined metas
        tokens.push(-1)
        pushRefs(tokens, joins[k])
      } else {
        const cur = state[key]
        tokens.push(-1)
        if(cur){ pushRefs(tokens, cur) } else { tokens.push(-1) }
      }
      pushRefs(tokens, leaves[i])
    }
  }

  function applyJoins(run, onJoin){
    const {state, jKeys, joins, curs, sent, plan, index, nj} = run
    for(let i = 0; i < nj; i++){
      const key = jKeys[i]
      const newPresence = joins[i]
      const cur = curs[i]
      const stored = clone(newPresence)
      if(sent[i] >= 0){
        const n = plan[run.at++]
        if(n > 0){ stored.metas.unshift(...pick(cur.metas, plan, run.at, n)) }
        run.at += n
      }
      state[key] = stored
      if(index !== null){ index.stored(plan[run.slotAt++], key, stored) }
      onJoin(key, cur, newPresence)
    }
  }

  function applyLeaves(run, onLeave){
    const {state, lKeys, leaves, plan, index, nl} = run
    for(let i = 0; i < nl; i++){
      const n = plan[run.at++]
      if(n < 0){ continue }
      const key = lKeys[i]
      const cur = state[key]
      const slot = index === null ? -1 : plan[run.slotAt++]
      if(!cur){
        // an earlier callback deleted the key: phoenix.js would skip it too
        run.at += n
        run.stale = true
        continue
      }
      cur.metas = pick(cur.metas, plan, run.at, n)
      run.at += n
      onLeave(key, cur, leaves[i])
      if(cur.metas.length === 0){
        delete state[key]
        if(index !== null){ index.removed(slot) }
      }
    }
  }

  // number of non-skipped leaves in a plan (each gets a slot after the plan proper)
  function countKept(plan, nj, nl){
    let at = 0
    for(let i = 0; i < nj; i++){ at += 1 + plan[at] }
    let kept = 0
    for(let i = 0; i < nl; i++){
      const n = plan[at++]
      if(n >= 0){ kept++; at += n }
    }
    return kept
  }

  // phoenix.js's syncState builds {joins, leaves} objects and hands syncDiff a JSON copy of
  // them. The same diff is built here directly as key/presence arrays in the order those objects
  // would list their keys, with each presence copied the way the JSON copy would: no N-key
  // dictionary objects to fill and walk twice.
  function syncState(currentState, newState, onJoin, onLeave){
    const {out: state, keys: sKeys, values: sValues} = cloneToNullProto(currentState)
    const nKeys = Object.getOwnPropertyNames(newState)
    const nn = nKeys.length
    const nValues = new Array(nn)
    for(let i = 0; i < nn; i++){ nValues[i] = newState[nKeys[i]] }
    // phoenix.js copies newState into a null-prototype object only so that lookups cannot hit
    // Object.prototype; checking own-ness where that could happen does the same without
    // copying N keys. A resync usually lists the same keys in the same order: where the i-th
    // keys agree, the values at hand are the lookups' answers (both are own properties).
    const newProto = Object.getPrototypeOf(newState)
    const lKeys = []
    const lVals = []
    for(let i = 0; i < sKeys.length; i++){
      const key = sKeys[i]
      let v
      if(i < nn && nKeys[i] === key){
        v = nValues[i]
      } else {
        v = newState[key]
        if(v && newProto !== null && (newProto !== OBJECT_PROTO || key in OBJECT_PROTO) && !hasOwn(newState, key)){ v = undefined }
      }
      if(!v){
        lKeys.push(key)
        lVals.push(sValues[i])
      }
    }
    const curs = new Array(nn)
    // per key of newState: 0 no current presence, 1 the same refs in the same order (nothing
    // joins or leaves, no need to ask the core), 2 planned by the core
    const kinds = new Uint8Array(nn)
    const input = []
    for(let i = 0; i < nn; i++){
      const key = nKeys[i]
      const newPresence = nValues[i]
      const cur = curs[i] = (i < sKeys.length && sKeys[i] === key) ? sValues[i] : state[key]
      if(cur){
        if(sameRefs(cur.metas, newPresence.metas)){
          kinds[i] = 1
        } else {
          kinds[i] = 2
          pushRefs(input, cur)
          pushRefs(input, newPresence)
        }
      }
    }
    const plan = input.length > 0 ? planState(input) : null
    const jKeys = []
    const jVals = []
    let at = 0
    for(let i = 0; i < nn; i++){
      const kind = kinds[i]
      if(kind === 1){ continue }
      const key = nKeys[i]
      const newPresence = nValues[i]
      const cur = curs[i]
      if(kind === 0){
        jKeys.push(key)
        jVals.push(newPresence)
        continue
      }
      const nJoined = plan[at++]
      const joinedMetas = nJoined > 0 ? pick(newPresence.metas, plan, at, nJoined) : null
      at += nJoined
      const nLeft = plan[at++]
      const leftMetas = nLeft > 0 ? pick(cur.metas, plan, at, nLeft) : null
      at += nLeft
      if(nJoined > 0){
        jKeys.push(key)
        jVals.push(newPresence)
        newPresence.metas = joinedMetas
      }
      if(nLeft > 0){
        const left = clone(cur)
        left.metas = leftMetas
        lKeys.push(key)
        lVals.push(left)
      }
    }
    // joins follow newState's order, which already lists integer-like keys first; leaves mix
    // state order and newState order, so their integer-like keys may need to move up
    const leaves = arrayIndexKeysFirst(lKeys, lVals)
    const joins = copyEntries(jKeys, jVals)
    const leftCopies = copyEntries(leaves.keys, leaves.values)
    return applyEntries(state, joins.keys, joins.values, leftCopies.keys, leftCopies.values, onJoin || noop, onLeave || noop, null)
  }

  function syncDiff(state, diff, onJoin, onLeave){
    state = toNullProtoObj(state)
    const owner = indexOfState.get(state)
    if(owner !== undefined){ owner.of = null }
    const {joins, leaves} = clone(diff)
    return applyDiff(state, joins, leaves, onJoin || noop, onLeave || noop, null)
  }

  function list(presences, chooser){
    const keys = Object.getOwnPropertyNames(presences)
    const out = new Array(keys.length)
    if(!chooser){
      for(let i = 0; i < keys.length; i++){ out[i] = presences[keys[i]] }
    } else {
      for(let i = 0; i < keys.length; i++){ out[i] = chooser(keys[i], presences[keys[i]]) }
    }
    return out
  }

  // An instance's view of its state, kept in step diff by diff: the core's KeyIndex (keys in
  // JavaScript order under slots) plus, per slot, the key and the stored presence object. The
  // list is rebuilt from it in O(N) array work only after the key set or a stored object
  // changed; a diff that only removes metas keeps it.
  // which StateIndex describes a state object, so that a static syncDiff on an instance's
  // state (mutating it behind the index's back) puts that index out of step
  const indexOfState = new WeakMap()

  class StateIndex {
    // the state object the index describes and keeps in step, or null
    get of(){ return this.described }

    set of(state){
      if(this.described !== null){ indexOfState.delete(this.described) }
      this.described = state
      if(state !== null){ indexOfState.set(state, this) }
    }

    constructor(){
      this.core = new wasm.KeyIndex()
      this.keys = []
      this.objs = []
      this.described = null
      this.order = null // slots in key order, null when the key set changed
      this.cache = null // presences in key order, null when anything changed
    }

    // (re)index `state` from scratch: after a presence_state, or when someone changed the
    // state behind our back
    reset(state){
      const keys = Object.getOwnPropertyNames(state)
      const slots = this.core.reset(JSON.stringify(keys))
      this.keys = new Array(keys.length)
      this.objs = new Array(keys.length)
      for(let i = 0; i < keys.length; i++){
        this.keys[slots[i]] = keys[i]
        this.objs[slots[i]] = state[keys[i]]
      }
      this.of = state
      this.order = null
      this.cache = null
    }

    plan(input, state){
      if(this.of !== state){ this.reset(state) }
      const s = JSON.stringify(input)
      let plan = this.core.planDiff(s)
      if(plan === undefined){
        this.reset(state)
        plan = this.core.planDiff(s)
      }
      if(plan === undefined){
        this.of = null
        return null
      }
      return plan
    }

    stored(slot, key, presence){
      if(slot >= this.keys.length || this.keys[slot] !== key){ this.order = null }
      this.keys[slot] = key
      this.objs[slot] = presence
      this.cache = null
    }

    removed(slot){
      this.objs[slot] = undefined
      this.keys[slot] = undefined
      this.order = null
      this.cache = null
    }

    list(state, by){
      if(this.of !== state){ this.reset(state) }
      if(this.cache === null){
        if(this.order === null){ this.order = this.core.order() }
        const order = this.order
        const objs = this.objs
        const cache = new Array(order.length)
        for(let i = 0; i < order.length; i++){ cache[i] = objs[order[i]] }
        this.cache = cache
      }
      const cache = this.cache
      if(!by){ return cache.slice() }
      const order = this.order
      const keys = this.keys
      const out = new Array(cache.length)
      for(let i = 0; i < cache.length; i++){ out[i] = by(keys[order[i]], cache[i]) }
      return out
    }
  }

  // each instance's StateIndex, kept outside the instance so that it shows phoenix.js's members
  // and nothing else
  const indexes = new WeakMap()

  class Presence {
    constructor(channel, opts = {}){
      const events = opts.events || {state: "presence_state", diff: "presence_diff"}
      this.state = Object.create(null)
      this.pendingDiffs = []
      this.channel = channel
      this.joinRef = null
      this.caller = {
        onJoin: function (){ },
        onLeave: function (){ },
        onSync: function (){ }
      }
      indexes.set(this, new StateIndex())

      this.channel.on(events.state, newState => {
        const {onJoin, onLeave, onSync} = this.caller
        this.joinRef = this.channel.joinRef()
        this.state = syncState(this.state, newState, onJoin, onLeave)
        this.pendingDiffs.forEach(diff => {
          this.state = applyOwnDiff(this, diff, onJoin, onLeave)
        })
        this.pendingDiffs = []
        onSync()
      })

      this.channel.on(events.diff, diff => {
        const {onJoin, onLeave, onSync} = this.caller
        if(this.inPendingSyncState()){
          this.pendingDiffs.push(diff)
        } else {
          this.state = applyOwnDiff(this, diff, onJoin, onLeave)
          onSync()
        }
      })
    }

    onJoin(callback){ this.caller.onJoin = callback }

    onLeave(callback){ this.caller.onLeave = callback }

    onSync(callback){ this.caller.onSync = callback }

    list(by){
      const state = this.state
      if(state === null || typeof state !== "object" || Object.getPrototypeOf(state) !== null){
        return list(state, by)
      }
      return indexes.get(this).list(state, by)
    }

    inPendingSyncState(){
      return !this.joinRef || (this.joinRef !== this.channel.joinRef())
    }

    static syncState(currentState, newState, onJoin, onLeave){
      return syncState(currentState, newState, onJoin, onLeave)
    }

    static syncDiff(state, diff, onJoin, onLeave){
      return syncDiff(state, diff, onJoin, onLeave)
    }

    static list(presences, chooser){
      return list(presences, chooser)
    }

    // phoenix.js's private static helpers, kept for code that reaches for them
    static map(obj, func){
      return Object.getOwnPropertyNames(obj).map(key => func(key, obj[key]))
    }

    static toNullProtoObj(obj){ return toNullProtoObj(obj) }

    static clone(obj){ return clone(obj) }
  }

  // syncDiff for an instance's own state: the same rules, plus its key index kept in step
  // once list() has built it. Until then (and after each presence_state) diffs take the static
  // path, so an app that never calls list() never pays for the index.
  function applyOwnDiff(presence, diff, onJoin, onLeave){
    const state = toNullProtoObj(presence.state)
    const {joins, leaves} = clone(diff)
    const index = indexes.get(presence)
    const inStep = index.of === state
    if(!inStep){ index.of = null }
    return applyDiff(state, joins, leaves, onJoin || noop, onLeave || noop, inStep ? index : null)
  }

  return Presence
}
