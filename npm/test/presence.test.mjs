// Presence rules of phoenix.js 1.8.12, one test per rule. The same suite runs against the
// official `phoenix` package (the reference) and against rollcall's Presence (ESM and CommonJS
// entries), so the tests encode phoenix.js's behaviour, not our reading of it.

import assert from "node:assert/strict"
import {createRequire} from "node:module"
import {describe, test} from "node:test"
import * as phoenix from "phoenix"
import {Presence as OurPresence} from "rollcall"

const require = createRequire(import.meta.url)
const {Presence: OurPresenceCjs} = require("rollcall")

const IMPLS = [
  ["phoenix (reference)", phoenix.Presence],
  ["rollcall ESM", OurPresence],
  ["rollcall CommonJS", OurPresenceCjs],
]

const m = (ref, extra = {}) => ({phx_ref: ref, ...extra})
const p = (...refs) => ({metas: refs.map(r => (typeof r === "object" ? r : m(r)))})
const refs = presence => presence.metas.map(x => x.phx_ref)
// a plain copy, to compare contents of null-prototype objects with deepEqual
const plain = x => JSON.parse(JSON.stringify(x))

// a channel with just what Presence uses: on() and joinRef()
function fakeChannel(joinRef = "1") {
  const handlers = {}
  const channel = {
    ref: joinRef,
    on: (event, cb) => {
      handlers[event] = cb
      return 0
    },
    joinRef: () => channel.ref,
    handlers,
  }
  return channel
}

for (const [name, Presence] of IMPLS) {
  describe(`Presence: ${name}`, () => {
    // ---------- syncState ----------
    describe("syncState", () => {
      test("returns a null-prototype state", () => {
        const s = Presence.syncState({}, {a: p("1")})
        assert.equal(Object.getPrototypeOf(s), null)
      })

      test("keys named like Object.prototype members work", () => {
        const s = Presence.syncState(
          {},
          JSON.parse('{"__proto__": {"metas": [{"phx_ref": "1"}]}, "constructor": {"metas": [{"phx_ref": "2"}]}}'),
        )
        assert.deepEqual(Object.getOwnPropertyNames(s), ["__proto__", "constructor"])
        assert.deepEqual(refs(s["__proto__"]), ["1"])
        assert.deepEqual(
          Presence.list(s, k => k),
          ["__proto__", "constructor"],
        )
      })

      test("deep-copies the current state and never mutates it", () => {
        const current = Presence.syncState({}, {a: p("1"), b: p("2")})
        const before = plain(current)
        const s = Presence.syncState(current, {a: p("1", "3")})
        assert.deepEqual(plain(current), before)
        assert.notEqual(s, current)
        assert.notEqual(s.a, current.a)
      })

      test("overwrites the new presence's metas with the joined metas", () => {
        const current = Presence.syncState({}, {a: p("1")})
        const newState = {a: p("1", "2")}
        Presence.syncState(current, newState)
        assert.deepEqual(refs(newState.a), ["2"])
      })

      test("identical refs trigger no callbacks and keep the old presence-level fields", () => {
        const current = Presence.syncState({}, {a: {...p(m("1", {v: "old"})), name: "old"}})
        const calls = []
        const s = Presence.syncState(
          current,
          {a: {...p(m("1", {v: "new"})), name: "new"}},
          k => calls.push(`join ${k}`),
          k => calls.push(`leave ${k}`),
        )
        assert.deepEqual(calls, [])
        assert.deepEqual(plain(s), {a: {metas: [{phx_ref: "1", v: "old"}], name: "old"}})
      })

      test("the same refs in another order are no change either: no callbacks, old order kept", () => {
        const current = Presence.syncState({}, {a: p("1", "2", "3"), b: p("4")})
        const calls = []
        const s = Presence.syncState(
          current,
          {a: p("3", "1", "2"), b: p("4")},
          k => calls.push(`join ${k}`),
          k => calls.push(`leave ${k}`),
        )
        assert.deepEqual(calls, [])
        assert.deepEqual(refs(s.a), ["1", "2", "3"])
      })

      test("a resync of many unchanged keys with one changed key reports only that key", () => {
        const keys = Array.from({length: 50}, (_, i) => `user:${i}`)
        const current = Presence.syncState({}, Object.fromEntries(keys.map((k, i) => [k, p(`r${i}`)])))
        const next = Object.fromEntries(keys.map((k, i) => [k, p(i === 17 ? "changed" : `r${i}`)]))
        const calls = []
        const s = Presence.syncState(
          current,
          next,
          (k, cur, joined) => calls.push(["join", k, refs(joined)]),
          (k, cur, left) => calls.push(["leave", k, refs(left)]),
        )
        assert.deepEqual(calls, [
          ["join", "user:17", ["changed"]],
          ["leave", "user:17", ["r17"]],
        ])
        assert.deepEqual(refs(s["user:17"]), ["changed"])
        assert.deepEqual(
          Presence.list(s, k => k),
          keys,
        )
      })

      test("joined metas follow the surviving old metas, with the new presence-level fields", () => {
        const current = Presence.syncState({}, {a: {...p("a", "b", "c"), name: "old"}})
        const s = Presence.syncState(current, {a: {...p("e", "c", "d", "a"), name: "new"}})
        assert.deepEqual(refs(s.a), ["a", "c", "e", "d"])
        assert.equal(s.a.name, "new")
      })

      test("reports all joins in new-state order, then vanished keys, then partial leaves", () => {
        const current = Presence.syncState(
          {},
          {
            gone2: p("g2"),
            part: p("p1", "p2"),
            gone1: p("g1"),
            7: p("s1", "s2"),
          },
        )
        const calls = []
        Presence.syncState(
          current,
          {new: p("n"), part: p("p1", "p3"), 7: p("s2"), 3: p("t")},
          k => calls.push(`join ${k}`),
          k => calls.push(`leave ${k}`),
        )
        assert.deepEqual(calls, [
          "join 3",
          "join new",
          "join part",
          // "7" is integer-like, so it leads the leaves whatever its insertion order
          "leave 7",
          "leave gone2",
          "leave gone1",
          "leave part",
        ])
      })

      test("onLeave of a vanished key receives the presence with empty metas", () => {
        const current = Presence.syncState({}, {a: {...p("1"), name: "n"}})
        const seen = []
        const s = Presence.syncState(current, {}, null, (k, cur, left) => seen.push([k, plain(cur), plain(left)]))
        assert.deepEqual(seen, [["a", {metas: [], name: "n"}, {metas: [{phx_ref: "1"}], name: "n"}]])
        assert.deepEqual(Object.keys(s), [])
      })

      test("onLeave of a partial leave receives a copy of the current presence with only the left metas", () => {
        const current = Presence.syncState({}, {a: {...p("1", "2"), name: "old"}})
        const seen = []
        Presence.syncState(current, {a: {...p("2"), name: "new"}}, null, (k, cur, left) =>
          seen.push([plain(cur), plain(left)]),
        )
        assert.deepEqual(seen, [
          [
            {metas: [{phx_ref: "2"}], name: "old"},
            {metas: [{phx_ref: "1"}], name: "old"},
          ],
        ])
      })

      test("copies like JSON: undefined fields dropped, Dates become strings, NaN becomes null", () => {
        const when = new Date(0)
        const current = {a: {metas: [{phx_ref: "1", at: when, gone: undefined, n: NaN}]}}
        const s = Presence.syncState(current, {a: p("1")})
        assert.deepEqual(s.a.metas[0], {phx_ref: "1", at: when.toJSON(), n: null})
      })
    })

    // ---------- syncDiff ----------
    describe("syncDiff", () => {
      test("mutates and returns the same null-prototype state object", () => {
        const s = Presence.syncState({}, {a: p("1")})
        const s2 = Presence.syncDiff(s, {joins: {b: p("2")}, leaves: {}})
        assert.equal(s2, s)
        assert.deepEqual(Object.keys(s), ["a", "b"])
      })

      test("given a plain object, returns a new null-prototype object sharing the presences", () => {
        const a = p("1", "2")
        const state = {a}
        const s = Presence.syncDiff(state, {joins: {}, leaves: {a: p("1")}})
        assert.notEqual(s, state)
        assert.equal(Object.getPrototypeOf(s), null)
        assert.equal(s.a, a)
        assert.deepEqual(refs(a), ["2"], "the shared presence was mutated")
      })

      test("stores copies and never mutates the diff", () => {
        const diff = {joins: {a: p("1")}, leaves: {}}
        const before = plain(diff)
        const s = Presence.syncDiff({}, diff)
        assert.deepEqual(plain(diff), before)
        assert.notEqual(s.a, diff.joins.a)
        assert.notEqual(s.a.metas[0], diff.joins.a.metas[0])
      })

      test("throws a TypeError when joins or leaves is missing", () => {
        assert.throws(() => Presence.syncDiff({}, {leaves: {}}), TypeError)
        assert.throws(() => Presence.syncDiff({}, {joins: {}}), TypeError)
      })

      test("applies joins before tripping over missing leaves", () => {
        const s = Presence.syncState({}, {})
        const joined = []
        assert.throws(() => Presence.syncDiff(s, {joins: {a: p("1")}}, k => joined.push(k)), TypeError)
        assert.deepEqual(joined, ["a"])
        assert.deepEqual(Object.keys(s), ["a"])
      })

      test("works without callbacks", () => {
        const s = Presence.syncDiff({}, {joins: {a: p("1")}, leaves: {b: p("2")}})
        assert.deepEqual(Object.keys(s), ["a"])
      })

      test("a join of a present key puts its unmatched old metas first, in old order", () => {
        const s = Presence.syncState({}, {a: p("a", "b", "c")})
        Presence.syncDiff(s, {joins: {a: p("d", m("b", {fresh: true}))}, leaves: {}})
        assert.deepEqual(refs(s.a), ["a", "c", "d", "b"])
        assert.equal(s.a.metas[3].fresh, true)
      })

      test("onJoin gets the previous presence unmodified and the diff's presence with only the joined metas", () => {
        const s = Presence.syncState({}, {a: {...p("1"), name: "old"}})
        const previous = s.a
        const seen = []
        Presence.syncDiff(s, {joins: {a: {...p("2"), name: "new"}, b: p("3")}, leaves: {}}, (k, cur, joined) =>
          seen.push([k, cur, joined]),
        )
        assert.equal(seen[0][1], previous)
        assert.deepEqual(plain(seen[0][1]), {metas: [{phx_ref: "1"}], name: "old"})
        assert.deepEqual(plain(seen[0][2]), {metas: [{phx_ref: "2"}], name: "new"})
        assert.notEqual(seen[0][2], s.a, "newPres is not the stored presence")
        assert.deepEqual(refs(s.a), ["1", "2"])
        assert.equal(seen[1][1], undefined, "a new key has no current presence")
      })

      test("onLeave gets the stored presence after removal and the diff's presence", () => {
        const s = Presence.syncState({}, {a: {...p("1", "2"), name: "n"}})
        const stored = s.a
        const diff = {joins: {}, leaves: {a: p(m("1", {extra: 1}))}}
        const seen = []
        Presence.syncDiff(s, diff, null, (k, cur, left) => seen.push([k, cur, left]))
        assert.equal(seen[0][1], stored, "current is the live stored object")
        assert.deepEqual(plain(seen[0][1]), {metas: [{phx_ref: "2"}], name: "n"})
        assert.deepEqual(plain(seen[0][2]), {metas: [{phx_ref: "1", extra: 1}]})
        assert.notEqual(seen[0][2], diff.leaves.a, "left comes from a copy of the diff")
      })

      test("joins are applied before leaves", () => {
        const calls = []
        const s = Presence.syncDiff(
          {},
          {joins: {a: p("1")}, leaves: {a: p("1")}},
          k => calls.push(`join ${k}`),
          k => calls.push(`leave ${k}`),
        )
        assert.deepEqual(calls, ["join a", "leave a"])
        assert.deepEqual(Object.keys(s), [])
      })

      test("an update leaves only the new meta", () => {
        const s = Presence.syncState({}, {a: p(m("old", {status: "away"}))})
        const seen = []
        Presence.syncDiff(
          s,
          {
            joins: {a: p(m("new", {phx_ref_prev: "old", status: "busy"}))},
            leaves: {a: p(m("old", {status: "away"}))},
          },
          (k, cur) => seen.push(["join", refs(cur)]),
          (k, cur) => seen.push(["leave", refs(cur)]),
        )
        assert.deepEqual(plain(s), {a: {metas: [{phx_ref: "new", phx_ref_prev: "old", status: "busy"}]}})
        assert.deepEqual(seen, [
          ["join", ["old"]],
          ["leave", ["new"]],
        ])
      })

      test("a leave of an absent key is ignored without a callback", () => {
        const s = Presence.syncState({}, {a: p("1")})
        const calls = []
        Presence.syncDiff(s, {joins: {}, leaves: {ghost: p("9")}}, null, k => calls.push(k))
        assert.deepEqual(calls, [])
        assert.deepEqual(Object.keys(s), ["a"])
      })

      test("onLeave fires even when no ref matched", () => {
        const s = Presence.syncState({}, {a: p("1")})
        const seen = []
        Presence.syncDiff(s, {joins: {}, leaves: {a: p("9")}}, null, (k, cur) => seen.push([k, refs(cur)]))
        assert.deepEqual(seen, [["a", ["1"]]])
        assert.deepEqual(refs(s.a), ["1"])
      })

      test("a key whose metas all left is deleted after onLeave, which still sees it", () => {
        const s = Presence.syncState({}, {a: p("1"), b: p("2")})
        const seen = []
        Presence.syncDiff(s, {joins: {}, leaves: {a: p("1")}}, null, (k, cur) => seen.push([refs(cur), k in s]))
        assert.deepEqual(seen, [[[], true]])
        assert.deepEqual(Object.keys(s), ["b"])
      })

      test("metas are matched by phx_ref only, with strict equality", () => {
        const s = Presence.syncState({}, {a: p(m("1", {status: "away"}), m(2), m("3"))})
        Presence.syncDiff(s, {joins: {}, leaves: {a: p(m("1", {status: "other"}), m("2"), m(3))}})
        assert.deepEqual(refs(s.a), [2, "3"])
      })

      test("metas without phx_ref match each other (undefined === undefined)", () => {
        const s = Presence.syncState({}, {a: {metas: [{x: 1}, m("1")]}})
        Presence.syncDiff(s, {joins: {}, leaves: {a: {metas: [{y: 2}]}}})
        assert.deepEqual(refs(s.a), ["1"])
      })

      test("presence-level fields besides metas are kept", () => {
        const s = Presence.syncDiff({}, {joins: {a: {user: {name: "Ada"}, ...p("1")}}, leaves: {}})
        assert.deepEqual(plain(s), {a: {user: {name: "Ada"}, metas: [{phx_ref: "1"}]}})
      })
    })

    // ---------- key order ----------
    describe("key order", () => {
      test("integer-like keys come first in ascending order, then the rest in insertion order", () => {
        const s = Presence.syncDiff(
          {},
          {joins: {b: p("1"), 10: p("2"), a: p("3"), 2: p("4"), "01": p("5"), 4294967295: p("6")}, leaves: {}},
        )
        assert.deepEqual(
          Presence.list(s, k => k),
          ["2", "10", "b", "a", "01", "4294967295"],
        )
      })

      test("callbacks follow the same order", () => {
        const calls = []
        Presence.syncDiff({}, {joins: {b: p("1"), 10: p("2"), a: p("3"), 2: p("4")}, leaves: {}}, k => calls.push(k))
        assert.deepEqual(calls, ["2", "10", "b", "a"])
      })

      test("a key that leaves and joins again moves to the end", () => {
        const s = Presence.syncState({}, {a: p("1"), b: p("2")})
        Presence.syncDiff(s, {joins: {}, leaves: {a: p("1")}})
        Presence.syncDiff(s, {joins: {a: p("3")}, leaves: {}})
        assert.deepEqual(
          Presence.list(s, k => k),
          ["b", "a"],
        )
      })

      test("a join of a present key keeps its place", () => {
        const s = Presence.syncState({}, {a: p("1"), b: p("2")})
        Presence.syncDiff(s, {joins: {a: p("3")}, leaves: {}})
        assert.deepEqual(
          Presence.list(s, k => k),
          ["a", "b"],
        )
      })
    })

    // ---------- list ----------
    describe("list", () => {
      test("the default chooser returns the live state objects", () => {
        const s = Presence.syncState({}, {a: p("1"), b: p("2")})
        const listed = Presence.list(s)
        assert.equal(listed[0], s.a)
        assert.equal(listed[1], s.b)
      })

      test("a chooser gets the key and the presence", () => {
        const s = Presence.syncState({}, {a: p("1", "2")})
        assert.deepEqual(
          Presence.list(s, (id, {metas: [first, ...rest]}) => ({id, count: rest.length + 1, ref: first.phx_ref})),
          [{id: "a", count: 2, ref: "1"}],
        )
      })

      test("works on plain objects", () => {
        assert.deepEqual(
          Presence.list({x: p("1")}, k => k),
          ["x"],
        )
      })
    })

    // ---------- instance API ----------
    describe("new Presence(channel)", () => {
      test("exposes phoenix.js's members and subscribes to the default events at once", () => {
        const channel = fakeChannel()
        const presence = new Presence(channel)
        assert.equal(Object.getPrototypeOf(presence.state), null)
        assert.deepEqual(Object.keys(presence.state), [])
        assert.deepEqual(presence.pendingDiffs, [])
        assert.equal(presence.joinRef, null)
        assert.equal(presence.channel, channel)
        assert.deepEqual(Object.keys(presence.caller), ["onJoin", "onLeave", "onSync"])
        assert.deepEqual(Object.keys(channel.handlers), ["presence_state", "presence_diff"])
        assert.deepEqual(Object.keys(presence), ["state", "pendingDiffs", "channel", "joinRef", "caller"])
      })

      test("custom event names", () => {
        const channel = fakeChannel()
        const presence = new Presence(channel, {events: {state: "roster", diff: "roster_diff"}})
        channel.handlers.roster({a: p("1")})
        channel.handlers.roster_diff({joins: {b: p("2")}, leaves: {}})
        assert.deepEqual(
          presence.list(k => k),
          ["a", "b"],
        )
      })

      test("holds diffs back until the state arrives, then applies them in order and syncs once", () => {
        const channel = fakeChannel()
        const presence = new Presence(channel)
        const calls = []
        presence.onJoin(k => calls.push(`join ${k}`))
        presence.onLeave(k => calls.push(`leave ${k}`))
        presence.onSync((...args) => calls.push(`sync ${args.length}`))
        assert.equal(presence.inPendingSyncState(), true)
        channel.handlers.presence_diff({joins: {b: p("2")}, leaves: {}})
        channel.handlers.presence_diff({joins: {}, leaves: {a: p("1")}})
        assert.deepEqual(calls, [])
        assert.equal(presence.pendingDiffs.length, 2)
        channel.handlers.presence_state({a: p("1")})
        assert.deepEqual(calls, ["join a", "join b", "leave a", "sync 0"])
        assert.deepEqual(presence.pendingDiffs, [])
        assert.equal(presence.joinRef, "1")
        assert.equal(presence.inPendingSyncState(), false)
        assert.deepEqual(
          presence.list(k => k),
          ["b"],
        )
      })

      test("a rejoin holds diffs back again until the next state", () => {
        const channel = fakeChannel()
        const presence = new Presence(channel)
        channel.handlers.presence_state({a: p("1")})
        channel.ref = "5"
        assert.equal(presence.inPendingSyncState(), true)
        channel.handlers.presence_diff({joins: {b: p("2")}, leaves: {}})
        assert.deepEqual(
          presence.list(k => k),
          ["a"],
        )
        channel.handlers.presence_state({a: p("1"), c: p("3")})
        assert.deepEqual(
          presence.list(k => k),
          ["a", "c", "b"],
        )
      })

      test("every applied diff calls onSync once with no arguments", () => {
        const channel = fakeChannel()
        const presence = new Presence(channel)
        const syncs = []
        presence.onSync((...args) => syncs.push(args))
        channel.handlers.presence_state({})
        channel.handlers.presence_diff({joins: {a: p("1")}, leaves: {}})
        channel.handlers.presence_diff({joins: {}, leaves: {a: p("1")}})
        assert.deepEqual(syncs, [[], [], []])
      })

      test("onJoin, onLeave and onSync replace the stored callback", () => {
        const channel = fakeChannel()
        const presence = new Presence(channel)
        const calls = []
        presence.onJoin(() => calls.push("first"))
        presence.onJoin(() => calls.push("second"))
        channel.handlers.presence_state({a: p("1")})
        assert.deepEqual(calls, ["second"])
      })

      test("callbacks are read when each event arrives", () => {
        const channel = fakeChannel()
        const presence = new Presence(channel)
        channel.handlers.presence_state({a: p("1")})
        const calls = []
        presence.onLeave(k => calls.push(k))
        channel.handlers.presence_diff({joins: {}, leaves: {a: p("1")}})
        assert.deepEqual(calls, ["a"])
      })

      test("list() returns live objects, in a fresh array each time", () => {
        const channel = fakeChannel()
        const presence = new Presence(channel)
        channel.handlers.presence_state({a: p("1", "2"), b: p("3")})
        const first = presence.list()
        assert.equal(first[0], presence.state.a)
        first.reverse()
        channel.handlers.presence_diff({joins: {}, leaves: {a: p("1")}})
        assert.deepEqual(refs(first[1]), ["2"], "a leave shows in objects listed before")
        const second = presence.list()
        assert.notEqual(second, first)
        assert.deepEqual(second.map(refs), [["2"], ["3"]])
      })

      test("list(by) follows the state through joins, leaves, updates and integer-like keys", () => {
        const channel = fakeChannel()
        const presence = new Presence(channel)
        const by = (k, {metas}) => `${k}:${metas.map(x => x.phx_ref).join(",")}`
        channel.handlers.presence_state({b: p("1"), 7: p("2"), a: p("3")})
        const diffs = [
          {joins: {c: p("4")}, leaves: {}},
          {joins: {}, leaves: {b: p("1")}},
          {joins: {3: p("5")}, leaves: {}},
          {joins: {a: p(m("6", {phx_ref_prev: "3"}))}, leaves: {a: p("3")}},
          {joins: {b: p("7")}, leaves: {7: p("2")}},
          {joins: {c: p("8")}, leaves: {}},
        ]
        for (const diff of diffs) {
          channel.handlers.presence_diff(diff)
          assert.deepEqual(presence.list(by), Presence.list(presence.state, by))
        }
        assert.deepEqual(presence.list(by), ["3:5", "a:6", "c:4,8", "b:7"])
      })

      test("a callback that throws leaves the state half-updated, and list() follows it", () => {
        const channel = fakeChannel()
        const presence = new Presence(channel)
        channel.handlers.presence_state({a: p("1")})
        presence.list()
        presence.onJoin(k => {
          if (k === "c") {
            throw new Error("boom")
          }
        })
        assert.throws(
          () => channel.handlers.presence_diff({joins: {b: p("2"), c: p("3"), d: p("4")}, leaves: {}}),
          /boom/,
        )
        assert.deepEqual(
          presence.list(k => k),
          ["a", "b", "c"],
        )
        presence.onJoin(() => {})
        channel.handlers.presence_diff({joins: {e: p("5")}, leaves: {a: p("1")}})
        assert.deepEqual(
          presence.list(k => k),
          ["b", "c", "e"],
        )
      })

      test("list() follows a static syncDiff applied to the instance's state", () => {
        const channel = fakeChannel()
        const presence = new Presence(channel)
        channel.handlers.presence_state({a: p("1"), b: p("2")})
        presence.list()
        Presence.syncDiff(presence.state, {joins: {c: p("3")}, leaves: {a: p("1")}})
        assert.deepEqual(
          presence.list(k => k),
          ["b", "c"],
        )
        channel.handlers.presence_diff({joins: {d: p("4")}, leaves: {}})
        assert.deepEqual(
          presence.list(k => k),
          ["b", "c", "d"],
        )
      })

      test("works on a Channel of the official phoenix package", () => {
        const socket = new phoenix.Socket("ws://127.0.0.1:9/socket", {
          transport: class {
            close() {}
          },
        })
        const channel = socket.channel("room:1")
        const presence = new Presence(channel)
        channel.join()
        const joinRef = channel.joinRef()
        assert.ok(joinRef)
        const joined = []
        presence.onJoin(k => joined.push(k))
        channel.trigger("presence_state", {a: p("1")}, null, joinRef)
        channel.trigger("presence_diff", {joins: {b: p("2")}, leaves: {}})
        assert.deepEqual(joined, ["a", "b"])
        assert.deepEqual(
          presence.list(k => k),
          ["a", "b"],
        )
        assert.equal(presence.inPendingSyncState(), false)
        channel.leave() // cancels the join push's timer
      })
    })
  })
}
