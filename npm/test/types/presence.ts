// Presence's public types as an app uses them; `tsc -p test/types` fails if they degrade to any.
import {
  type Channel,
  Presence,
  type PresenceDiff,
  type PresenceEntry,
  type PresenceMeta,
  type PresenceState,
  Socket,
} from "rollcall"

type Meta = {name: string; online_at: number}

const socket = new Socket("wss://example.com/socket")
const channel: Channel = socket.channel("room:lobby")
const presence = new Presence<Meta>(channel, {events: {state: "presence_state", diff: "presence_diff"}})

// the instance's fields, as phoenix.js's
const state: PresenceState<Meta> = presence.state
const pending: PresenceDiff<Meta>[] = presence.pendingDiffs
const joinRef: string | null = presence.joinRef
const waiting: boolean = presence.inPendingSyncState()
console.log(state, pending, joinRef, waiting)

// callbacks get typed presences and metas (with phx_ref)
presence.onJoin((key, current, joined) => {
  const first: PresenceMeta<Meta> = joined.metas[0]
  const before: number = current ? current.metas.length : 0
  console.log(key.length, first.name, first.phx_ref, first.phx_ref_prev, before)
})
presence.onLeave((key, current, left) => console.log(key, current.metas.length, left.metas[0].online_at))
presence.onSync(() => {
  const names: string[] = presence.list((_key, {metas: [first]}) => first.name)
  const all: PresenceEntry<Meta>[] = presence.list()
  console.log(names, all)
})

// the static functions keep the meta type through a state and a diff
let synced: PresenceState<Meta> = Presence.syncState({}, {ana: {metas: [{phx_ref: "1", name: "Ana", online_at: 1}]}})
synced = Presence.syncDiff(synced, {joins: {}, leaves: {}}, (key, current) => console.log(key, current?.metas))
const keys: string[] = Presence.list(synced, key => key)
const ready: Promise<void> = Presence.ready
console.log(keys, ready)

// @ts-expect-error a meta's fields are typed
presence.onJoin((_key, _current, joined) => joined.metas[0].name.toFixed())
// @ts-expect-error list(by) returns what `by` returns
const wrong: number[] = presence.list(key => key)
// @ts-expect-error metas carry their phx_ref
const noRef: PresenceState<Meta> = {ana: {metas: [{name: "Ana", online_at: 1}]}}
// @ts-expect-error onSync gets no arguments
presence.onSync((count: number) => console.log(count))
// @ts-expect-error a diff has joins and leaves
Presence.syncDiff(synced, {joins: {}})
console.log(wrong, noRef)
