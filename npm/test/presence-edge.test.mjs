// Presence on input phoenix.js was not written for: malformed states and diffs get a TypeError
// that names the key (phoenix.js throws a TypeError too, with the engine's own words), and the
// module keeps working afterwards — no wasm trap, no poisoned module. Plus the paths the usual
// fixtures do not reach: presences with more metas than fit a bitmask, callbacks that throw
// thousands of times, callbacks that call back into Presence.
import {describe, test} from "node:test"
import assert from "node:assert/strict"
import {createRequire} from "node:module"
import * as phoenix from "phoenix"
import {Presence} from "rollcall"

const require = createRequire(import.meta.url)
const {Presence: PresenceCjs} = require("rollcall")
const m = (ref, extra = {}) => ({phx_ref: ref, ...extra})
const p = (...refs) => ({metas: refs.map(r => m(r))})
const plain = (x) => JSON.parse(JSON.stringify(x))

// A valid round trip: proof that the module still works after the failure before it.
function stillWorks(P){
  const s = P.syncDiff(P.syncState({}, {a: p("1")}), {joins: {b: p("2")}, leaves: {a: p("1")}})
  assert.deepEqual(P.list(s, (k, {metas}) => `${k}:${metas[0].phx_ref}`), ["b:2"])
}

const MALFORMED = [
  ["syncState: the new state is null", (P) => P.syncState({}, null), /new presence state must be an object/],
  ["syncState: a changed presence has no metas array", (P) => P.syncState(P.syncState({}, {a: p("1")}), {a: {metas: "no"}}), /presence "a" must have a `metas` array/],
  ["syncState: a current presence whose metas is not an array", (P) => P.syncState({a: {metas: {}}}, {a: p("1")}), /presence "a" must have a `metas` array/],
  ["syncState: a meta is null", (P) => P.syncState(P.syncState({}, {a: p("1")}), {a: {metas: [null]}}), /each meta of presence "a" must be an object/],
  ["syncState: a presence is null where one is present", (P) => P.syncState(P.syncState({}, {k: p("1")}), {k: null, other: {metas: []}}), /TypeError|presence/],
  ["syncDiff: the diff is null", (P) => P.syncDiff({}, null), /presence diff must be an object/],
  ["syncDiff: no joins", (P) => P.syncDiff({}, {leaves: {}}), /must have a `joins` object/],
  ["syncDiff: no leaves", (P) => P.syncDiff({}, {joins: {}}), /must have a `leaves` object/],
  ["syncDiff: a leave without metas", (P) => P.syncDiff(P.syncState({}, {a: p("1")}), {joins: {}, leaves: {a: {}}}), /presence "a" must have a `metas` array/],
  ["syncDiff: a join over a presence without metas", (P) => P.syncDiff({a: {metas: 3}}, {joins: {a: p("2")}, leaves: {}}), /presence "a"/],
  ["syncDiff: a left meta is undefined", (P) => P.syncDiff(P.syncState({}, {a: p("1")}), {joins: {}, leaves: {a: {metas: [undefined, m("1")]}}}), /each meta of presence "a"|metas/],
  ["syncDiff: a cycle in the diff", (P) => { const d = {joins: {}, leaves: {}}; d.joins.self = d; return P.syncDiff({}, d) }, /circular|cyclic/i],
]

for(const [name, Impl] of [["ESM", Presence], ["CommonJS", PresenceCjs]]){
  describe(`malformed input (${name})`, () => {
    for(const [what, call, message] of MALFORMED){
      test(`${what}: a TypeError naming what is wrong, then the module still works`, () => {
        assert.throws(() => call(Impl), (error) => {
          assert.ok(error instanceof TypeError, `${error}`)
          assert.match(error.message, message)
          return true
        })
        // phoenix.js throws a TypeError for the same input
        assert.throws(() => call(phoenix.Presence), TypeError)
        stillWorks(Impl)
      })
    }

    test("an instance handed a malformed event throws from the channel handler and keeps its state", () => {
      const handlers = {}
      const presence = new Impl({on: (ev, cb) => { handlers[ev] = cb }, joinRef: () => "1"})
      handlers.presence_state({a: p("1")})
      assert.throws(() => handlers.presence_diff({joins: {}, leaves: {a: {metas: "x"}}}), /presence "a" must have a `metas` array/)
      assert.throws(() => handlers.presence_diff({joins: {}}), /must have a `leaves` object/)
      handlers.presence_diff({joins: {b: p("2")}, leaves: {}})
      assert.deepEqual(presence.list((k) => k), ["a", "b"])
    })
  })
}

describe("paths the usual fixtures do not reach", () => {
  test("presences with more than 32 metas join and leave as in phoenix.js", () => {
    const refs = Array.from({length: 40}, (_, i) => `r${i}`)
    const run = (P) => {
      const calls = []
      let s = P.syncState({}, {a: {metas: refs.map(r => m(r, {n: r}))}})
      s = P.syncDiff(s, {joins: {a: {metas: [m("r3"), m("new1"), m("r39")]}}, leaves: {a: {metas: refs.slice(10, 35).map(r => m(r))}}},
        (k, cur, joined) => calls.push(["join", k, cur && cur.metas.length, joined.metas.length]),
        (k, cur, left) => calls.push(["leave", k, cur.metas.map(x => x.phx_ref), left.metas.length]))
      s = P.syncState(s, {a: {metas: [...refs.slice(0, 5), "x1", ...refs.slice(20, 40)].map(r => m(r))}})
      return [plain(s), calls]
    }
    assert.deepEqual(run(Presence), run(phoenix.Presence))
  })

  test("thousands of throwing callbacks leave the module working", () => {
    let state = Presence.syncState({}, {})
    for(let i = 0; i < 5000; i++){
      assert.throws(() => { state = Presence.syncDiff(state, {joins: {[`k${i}`]: p(`${i}`)}, leaves: {}}, () => { throw new Error(`boom ${i}`) }) }, new RegExp(`boom ${i}$`))
    }
    assert.equal(Presence.list(state).length, 5000)
    stillWorks(Presence)
  })

  test("a callback may call back into Presence: list() and a nested syncDiff see the state as it is", () => {
    const handlers = {}
    const presence = new Presence({on: (ev, cb) => { handlers[ev] = cb }, joinRef: () => "1"})
    handlers.presence_state({a: p("1"), b: p("2")})
    assert.deepEqual(presence.list((k) => k), ["a", "b"])
    const seen = []
    presence.onJoin((key) => {
      seen.push(`${key}:${presence.list((k) => k).join(",")}`)
      if(key === "c"){ Presence.syncDiff(presence.state, {joins: {}, leaves: {a: p("1")}}) }
    })
    handlers.presence_diff({joins: {c: p("3"), d: p("4")}, leaves: {}})
    assert.deepEqual(seen, ["c:a,b,c", "d:b,c,d"])
    assert.deepEqual(presence.list((k) => k), ["b", "c", "d"])
    assert.deepEqual(Presence.list(presence.state, (k) => k), ["b", "c", "d"])
  })

  test("state changed behind the instance's back by a static syncDiff keeps list() in step", () => {
    const handlers = {}
    const presence = new Presence({on: (ev, cb) => { handlers[ev] = cb }, joinRef: () => "1"})
    handlers.presence_state({5: p("5"), a: p("1")})
    presence.list()
    Presence.syncDiff(presence.state, {joins: {2: p("2"), z: p("z")}, leaves: {5: p("5")}})
    assert.deepEqual(presence.list((k) => k), Object.getOwnPropertyNames(presence.state))
    assert.deepEqual(presence.list((k) => k), ["2", "a", "z"])
  })
})
