// The few things the Rust Presence asks of JavaScript itself: JSON copies of plain data, faster
// than a JSON text round trip, and the property reads and writes of presence objects, each one
// call across the boundary. No rule of the presence algorithm lives here.

const OBJECT_PROTO = Object.prototype
const ARRAY_PROTO = Array.prototype
const BAIL = Symbol("rollcall.copy.bail")

// JSON.parse(JSON.stringify(v)) for plain data (objects, arrays, strings, finite numbers,
// booleans, null), without the text. Anything else (a toJSON method, a Date, a class instance,
// a BigInt, a cycle, deep nesting) throws BAIL, and the caller lets JSON itself decide.
function copyValue(v, depth){
  switch(typeof v){
    case "string": case "boolean": return v
    case "number": return Number.isFinite(v) ? (v === 0 ? 0 : v) : null
    case "object": return v === null ? null : copyObject(v, depth)
    default: throw BAIL
  }
}

function copyObject(v, depth){
  if(depth > 64){ throw BAIL }
  const proto = Object.getPrototypeOf(v)
  if(proto === ARRAY_PROTO){
    if(!Array.isArray(v)){ throw BAIL }
    const n = v.length
    const out = new Array(n)
    for(let i = 0; i < n; i++){
      const e = v[i]
      // leaves inline: most of a presence is strings and numbers
      switch(typeof e){
        case "string": case "boolean": out[i] = e; break
        case "number": out[i] = Number.isFinite(e) ? (e === 0 ? 0 : e) : null; break
        case "undefined": case "function": case "symbol": out[i] = null; break
        case "object": out[i] = e === null ? null : copyObject(e, depth + 1); break
        default: throw BAIL
      }
    }
    return out
  }
  if((proto !== OBJECT_PROTO && proto !== null) || Array.isArray(v)){ throw BAIL }
  const out = {}
  // for-in lists own enumerable keys in Object.keys order here: pristine() checked that
  // Object.prototype has no enumerable keys
  for(const k in v){
    const e = v[k]
    if(k === "__proto__" || k === "toJSON"){
      if(k === "toJSON"){ throw BAIL }
      // JSON.parse makes an own property; an assignment would set the prototype
      const t = typeof e
      if(t !== "undefined" && t !== "function" && t !== "symbol"){
        Object.defineProperty(out, k, {value: copyValue(e, depth + 1), enumerable: true, writable: true, configurable: true})
      }
      continue
    }
    switch(typeof e){
      case "string": case "boolean": out[k] = e; break
      case "number": out[k] = Number.isFinite(e) ? (e === 0 ? 0 : e) : null; break
      case "undefined": case "function": case "symbol": break
      case "object": out[k] = e === null ? null : copyObject(e, depth + 1); break
      default: throw BAIL
    }
  }
  return out
}

// Whether the built-in prototypes are as the fast path assumes: no toJSON, nothing enumerable.
function pristine(){
  if(OBJECT_PROTO.toJSON !== undefined || ARRAY_PROTO.toJSON !== undefined){ return false }
  for(const _ in OBJECT_PROTO){ return false }
  return true
}

function jsonCopy(v){
  if(v === undefined){ return JSON.parse(JSON.stringify(v)) }
  if(pristine()){
    try {
      return copyValue(v, 0)
    } catch (e){
      if(e !== BAIL){ throw e }
    }
  }
  return JSON.parse(JSON.stringify(v))
}

// A JSON copy of `v` as an object member would be copied, or undefined when JSON drops it.
function copyMemberOf(v){
  const t = typeof v
  if(t === "undefined" || t === "function" || t === "symbol"){ return undefined }
  return jsonCopy(v)
}

function toNullProtoObj(obj){
  if(Object.getPrototypeOf(obj) === null){ return obj }
  const out = Object.create(null)
  const keys = Object.getOwnPropertyNames(obj)
  for(let i = 0; i < keys.length; i++){ out[keys[i]] = obj[keys[i]] }
  return out
}



// Calls that can throw (a callback, a getter, JSON on a cycle) answer a status instead, so that
// no exception ever unwinds through WebAssembly: a number, and the value (or the exception) in
// `held` for take(). A negative status means the call threw.
let held
export function take(){
  const v = held
  held = undefined
  return v
}

// [copy, keys, values]: toNullProtoObj(clone(state)) with its own keys and values, in order.
// A plain or null-prototype object is copied key by key straight into the null-prototype copy;
// anything else goes through JSON itself.
export function copyState(state){
  try {
    held = copyToNullProto(state)
    return 1
  } catch (e){ held = e; return -1 }
}

function copyToNullProto(obj){
  if(obj !== null && typeof obj === "object" && !Array.isArray(obj) && pristine()){
    const proto = Object.getPrototypeOf(obj)
    if((proto === OBJECT_PROTO || proto === null) && obj.toJSON === undefined){
      try {
        const out = Object.create(null)
        const names = Object.keys(obj)
        const keys = []
        const values = []
        for(let i = 0; i < names.length; i++){
          const key = names[i]
          const v = obj[key]
          const t = typeof v
          if(t === "undefined" || t === "function" || t === "symbol"){ continue }
          const copy = copyValue(v, 1)
          out[key] = copy
          keys.push(key)
          values.push(copy)
        }
        return [out, keys, values]
      } catch (e){
        if(e !== BAIL){ throw e }
      }
    }
  }
  const out = toNullProtoObj(JSON.parse(JSON.stringify(obj)))
  const keys = Object.getOwnPropertyNames(out)
  return [out, keys, keys.map(k => out[k])]
}

// 1 and a JSON copy of `v` held, 0 when JSON drops it
export function copyMember(v){
  try {
    held = copyMemberOf(v)
    return held === undefined ? 0 : 1
  } catch (e){ held = e; return -1 }
}

// [keys, values] of obj's own properties held
export function entriesOf(obj){
  try {
    const keys = Object.getOwnPropertyNames(obj)
    const values = new Array(keys.length)
    for(let i = 0; i < keys.length; i++){ values[i] = obj[keys[i]] }
    held = [keys, values]
    return keys.length
  } catch (e){ held = e; return -1 }
}

// What syncDiff reads before it changes anything, in phoenix.js's order: toNullProtoObj(state),
// then `const {joins, leaves} = clone(diff)` and the own keys of each with their values.
// Held: [state, joinKeys, joinValues, leaveKeys, leaveValues]. 1; 2 when leaves is missing
// (phoenix.js applies the joins before it trips over that); -2 the copy is null or undefined,
// -3 joins is missing.
export function openDiff(state, diff){
  try {
    const s = toNullProtoObj(state)
    const copy = jsonCopy(diff)
    if(copy === null || copy === undefined){ return -2 }
    const {joins, leaves} = copy
    if(joins === null || joins === undefined){ return -3 }
    const joinKeys = Object.getOwnPropertyNames(joins)
    const joinValues = new Array(joinKeys.length)
    for(let i = 0; i < joinKeys.length; i++){ joinValues[i] = joins[joinKeys[i]] }
    if(leaves === null || leaves === undefined){
      held = [s, joinKeys, joinValues, [], []]
      return 2
    }
    const leaveKeys = Object.getOwnPropertyNames(leaves)
    const leaveValues = new Array(leaveKeys.length)
    for(let i = 0; i < leaveKeys.length; i++){ leaveValues[i] = leaves[leaveKeys[i]] }
    held = [s, joinKeys, joinValues, leaveKeys, leaveValues]
    return 1
  } catch (e){ held = e; return -1 }
}

// 1 and obj[key] held when it is truthy, 0 when falsy
export function presenceAt(obj, key){
  try {
    const v = obj[key]
    if(!v){ return 0 }
    held = v
    return 1
  } catch (e){ held = e; return -1 }
}

// For each key of the current state, 1 in `out` when newState[key] is truthy, else 0 (own
// properties only when newState has a prototype). Where the i-th keys of both states agree, the
// value at hand is the lookup's answer.
export function inNewState(oldKeys, newState, newKeys, newValues, inherits, out){
  try {
    for(let i = 0; i < oldKeys.length; i++){
      const key = oldKeys[i]
      if(i < newKeys.length && newKeys[i] === key){
        out[i] = newValues[i] ? 1 : 0
      } else {
        out[i] = (newState[key] && (!inherits || OBJECT_PROTO.hasOwnProperty.call(newState, key))) ? 1 : 0
      }
    }
    return 1
  } catch (e){ held = e; return -1 }
}

// Whether two metas arrays carry ===-equal refs position by position
function sameRefs(a, b){
  if(!Array.isArray(a) || !Array.isArray(b) || a.length !== b.length){ return false }
  for(let i = 0; i < a.length; i++){
    const x = a[i]
    const y = b[i]
    if(x === null || x === undefined || y === null || y === undefined || x.phx_ref !== y.phx_ref){ return false }
  }
  return true
}

// For each key of the new state, what the state copy holds under it, in `out`: 0 nothing (or a
// falsy value), 2 a presence whose metas carry the same refs as the new one's, position by
// position, 1 another presence. Where the i-th keys agree, the copy's value at hand is the
// lookup's answer.
export function found(state, oldKeys, oldValues, newKeys, newValues, out){
  try {
    for(let i = 0; i < newKeys.length; i++){
      const key = newKeys[i]
      const cur = (i < oldKeys.length && oldKeys[i] === key) ? oldValues[i] : state[key]
      if(!cur){ continue }
      const other = newValues[i]
      out[i] = (other !== null && other !== undefined && sameRefs(cur.metas, other.metas)) ? 2 : 1
    }
    return 1
  } catch (e){ held = e; return -1 }
}

// state[key] = a JSON copy of presence, the copy held
// state[key] = a JSON copy of presence, the copy held. 1 when the state has no list cache; 2
// when it has one; 3 when it has one but the key held a value other than `previous` (a falsy
// one: only `previousKnown` says whether there was a truthy previous value)
export function storeCopy(state, key, presence, previousKnown){
  try {
    const copy = jsonCopy(presence)
    const listed = lists.has(state)
    const hidden = listed && !previousKnown && OBJECT_PROTO.hasOwnProperty.call(state, key)
    state[key] = copy
    held = copy
    return listed ? (hidden ? 3 : 2) : 1
  } catch (e){ held = e; return -1 }
}

// delete state[key]: 2 when the state has a list cache, else 1
export function deleteKey(state, key){
  try {
    delete state[key]
    return lists.has(state) ? 2 : 1
  } catch (e){ held = e; return -1 }
}

// presence.metas: its length, with the phx_ref of each meta held, when it is an array of
// objects; -2 the presence is null or undefined, -3 metas is not an array, -4 a meta is null or
// undefined
export function metasOf(presence){
  try {
    if(presence === null || presence === undefined){ return -2 }
    const metas = presence.metas
    if(!Array.isArray(metas)){ return -3 }
    const n = metas.length
    const refs = new Array(n)
    for(let i = 0; i < n; i++){
      const meta = metas[i]
      if(meta === null || meta === undefined){ return -4 }
      refs[i] = meta.phx_ref
    }
    held = refs
    return n
  } catch (e){ held = e; return -1 }
}

// presence.metas = the metas of presence `a` at the positions whose bits are set in `aMask`, then
// those of `b` in `bMask` (lists of up to 32 metas; setMetasAt takes positions)
export function setMetas(presence, a, aMask, b, bMask){
  try {
    const out = []
    if(aMask !== 0){
      const am = a.metas
      for(let i = 0; aMask !== 0; i++, aMask >>>= 1){ if(aMask & 1){ out.push(am[i]) } }
    }
    if(bMask !== 0){
      const bm = b.metas
      for(let i = 0; bMask !== 0; i++, bMask >>>= 1){ if(bMask & 1){ out.push(bm[i]) } }
    }
    presence.metas = out
    return 1
  } catch (e){ held = e; return -1 }
}

// setMetas with the positions listed
export function setMetasAt(presence, a, at, b, bt){
  try {
    const am = at.length > 0 ? a.metas : null
    const bm = bt.length > 0 ? b.metas : null
    const out = new Array(at.length + bt.length)
    let n = 0
    for(let i = 0; i < at.length; i++){ out[n++] = am[at[i]] }
    for(let i = 0; i < bt.length; i++){ out[n++] = bm[bt[i]] }
    presence.metas = out
    return 1
  } catch (e){ held = e; return -1 }
}

// 1 when presence.metas.length === 0, else 0
export function metasEmpty(presence){
  try { return presence.metas.length === 0 ? 1 : 0 } catch (e){ held = e; return -1 }
}

// f(a, b, c) with `this` undefined
export function call(f, a, b, c){
  if(!f){ return 1 }
  try { f(a, b, c); return 1 } catch (e){ held = e; return -1 }
}

// f() with no arguments
export function callBare(f){
  try { f(); return 1 } catch (e){ held = e; return -1 }
}

// The list of an object without a list cache: chooser(key, presence) for each own key
export function mapOwn(obj, chooser){
  try {
    const keys = Object.getOwnPropertyNames(obj)
    const out = new Array(keys.length)
    if(chooser){
      for(let i = 0; i < keys.length; i++){ out[i] = chooser(keys[i], obj[keys[i]]) }
    } else {
      for(let i = 0; i < keys.length; i++){ out[i] = obj[keys[i]] }
    }
    held = out
    return 1
  } catch (e){ held = e; return -1 }
}

// chooser(keys[i], objects[i]) for each i (a list cache's arrays, copied by the caller)
export function mapPairs(keys, objects, chooser){
  try {
    const out = new Array(keys.length)
    for(let i = 0; i < keys.length; i++){ out[i] = chooser(keys[i], objects[i]) }
    held = out
    return 1
  } catch (e){ held = e; return -1 }
}

export function isNullProto(obj){ return obj !== null && typeof obj === "object" && Object.getPrototypeOf(obj) === null }
export function isNullish(v){ return v === null || v === undefined }
// The TypeError for a malformed value, by number (see js.rs)
export function failure(code, key){
  switch(code){
    case 0: return new TypeError("rollcall: the new presence state must be an object")
    case 1: return new TypeError("rollcall: a presence diff must be an object")
    case 2: return new TypeError("rollcall: a presence diff must have a `joins` object")
    case 3: return new TypeError("rollcall: a presence diff must have a `leaves` object")
    case 4: return new TypeError(`rollcall: presence ${JSON.stringify(String(key))} must be an object`)
    case 5: return new TypeError(`rollcall: presence ${JSON.stringify(String(key))} must have a \`metas\` array`)
    case 6: return new TypeError(`rollcall: each meta of presence ${JSON.stringify(String(key))} must be an object`)
    default: return new TypeError("rollcall: internal error")
  }
}

// The numeric value of `key` when JavaScript lists it among an object's integer-like keys
// ("0".."4294967294" without leading zeros, which come first in ascending order), else -1
export function arrayIndex(key){
  const n = key.length
  if(n === 0 || n > 10){ return -1 }
  const c = key.charCodeAt(0)
  if(c < 48 || c > 57 || (c === 48 && n > 1)){ return -1 }
  for(let i = 1; i < n; i++){
    const d = key.charCodeAt(i)
    if(d < 48 || d > 57){ return -1 }
  }
  const value = Number(key)
  return value < 4294967295 ? value : -1
}

// Arrays, for the Rust side
export const at = (array, i) => array[i]
export const len = (array) => array.length
export function put(array, i, value){ array[i] = value }
export function append(array, value){ array.push(value) }
export function insertAt(array, i, value){ array.splice(i, 0, value) }
export function removeAt(array, i){ array.splice(i, 1) }
export const indexIn = (array, value) => array.indexOf(value)
export const copyOf = (array) => array.slice()
export const newArray = () => []
export const triple = (a, b, c) => [a, b, c]

// The number at array[at] (0 when it is not a number)
export function numberAt(array, at){
  const n = array[at]
  return typeof n === "number" ? n : 0
}

// each state object's list cache, [keys, objects, number of integer-like keys first]
const lists = new WeakMap()
export function listOf(state){ return lists.get(state) }
export function setList(state, list){ lists.set(state, list) }
export function dropList(state){ lists.delete(state) }


// The fields an instance's functions read and write, by number (see instance.rs)
const FIELDS = ["state", "pendingDiffs", "channel", "joinRef", "caller", "onJoin", "onLeave", "onSync", "inPendingSyncState"]

// obj[FIELDS[field]] held
export function field(obj, field){
  try { held = obj[FIELDS[field]]; return 1 } catch (e){ held = e; return -1 }
}

// obj[FIELDS[field]] = value
export function setField(obj, field, value){
  try { obj[FIELDS[field]] = value; return 1 } catch (e){ held = e; return -1 }
}

// obj.method() held, for a method named by FIELDS[field]
export function callMethod(obj, field){
  try { held = obj[FIELDS[field]](); return 1 } catch (e){ held = e; return -1 }
}
