// Presence: phoenix.js's class and static functions, every rule of which runs in rollcall's Rust
// core, compiled to WebAssembly (crate rollcall-wasm over rollcall-core's presence algorithm).
// This file is the typed face of that module: the class keeps phoenix.js's own fields and binds
// the channel's events; what happens to the state is the module's business. `#loader` is
// loader-sync.ts or, in the browser build, loader-async.ts.
import {load, loadedNow, ready, whenReady} from "#loader"

const STATE = 0
const DIFF = 1
type Event = [typeof STATE | typeof DIFF, unknown]

/** Events an instance received while the module was loading, in order. */
const waiting = new WeakMap<object, Event[]>()

function deliver(presence: object, event: Event): void {
  const queue = waiting.get(presence)
  if(queue){
    queue.push(event)
    return
  }
  const core = loadedNow()
  if(!core){
    waiting.set(presence, [event])
    whenReady(() => {
      const events = waiting.get(presence) || []
      waiting.delete(presence)
      for(const next of events){ deliver(presence, next) }
    })
    return
  }
  if(event[0] === STATE){ core.onState(presence, event[1]) } else { core.onDiff(presence, event[1]) }
}

/** One connection's metadata, as the server tracks it. */
export type PresenceMeta<M extends object = Record<string, unknown>> = M & {
  /** Identifies the connection's entry; a new one is made on every update. */
  phx_ref: string
  /** After an update, the `phx_ref` this meta replaces. */
  phx_ref_prev?: string
}

/** One key's presence: a meta per connection, and any presence-level fields the server added. */
export interface PresenceEntry<M extends object = Record<string, unknown>> {
  metas: PresenceMeta<M>[]
  [field: string]: unknown
}

/**
 * Presences by key. The objects the static functions and an instance return have a null
 * prototype, so keys such as `__proto__` and `constructor` work. Key order is JavaScript's:
 * integer-like keys ascending, then the other keys in insertion order.
 */
export type PresenceState<M extends object = Record<string, unknown>> = Record<string, PresenceEntry<M>>

/** A `presence_diff` payload. */
export interface PresenceDiff<M extends object = Record<string, unknown>> {
  joins: PresenceState<M>
  leaves: PresenceState<M>
}

/**
 * Called for each key that joined or gained metas. `current` is the presence before the join,
 * unchanged (`undefined` for a new key); `joined` holds only the joined metas.
 */
export type PresenceOnJoin<M extends object = Record<string, unknown>> =
  (key: string, current: PresenceEntry<M> | undefined, joined: PresenceEntry<M>) => void

/**
 * Called for each key that lost metas. `current` is the stored presence after the removal (when
 * its metas are empty the key is deleted right after the callback); `left` holds the metas that
 * left.
 */
export type PresenceOnLeave<M extends object = Record<string, unknown>> =
  (key: string, current: PresenceEntry<M>, left: PresenceEntry<M>) => void

/** Called once after each applied `presence_state` or `presence_diff`. */
export type PresenceOnSync = () => void

export interface PresenceOpts {
  /** The channel event names; both are required when given. Default `presence_state` and `presence_diff`. */
  events?: {state: string, diff: string}
}

/** What Presence uses of a channel: a Channel of `rollcall` or of the official `phoenix`. */
export interface PresenceChannel {
  on(event: string, callback: (payload: any) => void): unknown
  joinRef(): string | null | undefined
}

/**
 * phoenix.js's Presence: follows a channel's `presence_state` and `presence_diff` events.
 *
 * ```ts
 * const presence = new Presence<{online_at: number}>(channel)
 * presence.onSync(() => render(presence.list((id, {metas}) => ({id, since: metas[0].online_at}))))
 * ```
 */
export class Presence<M extends object = Record<string, unknown>> {
  /** The current state (null prototype). */
  declare state: PresenceState<M>
  /** Diffs received before the `presence_state` of the current join, in arrival order. */
  declare pendingDiffs: PresenceDiff<M>[]
  declare channel: PresenceChannel
  /** The channel's join ref when the last `presence_state` arrived; `null` before the first. */
  declare joinRef: string | null
  declare caller: {onJoin: PresenceOnJoin<M>, onLeave: PresenceOnLeave<M>, onSync: PresenceOnSync}

  constructor(channel: PresenceChannel, opts: PresenceOpts = {}){
    const events = opts.events || {state: "presence_state", diff: "presence_diff"}
    this.state = Object.create(null)
    this.pendingDiffs = []
    this.channel = channel
    this.joinRef = null
    this.caller = {onJoin: function (){ }, onLeave: function (){ }, onSync: function (){ }}
    this.channel.on(events.state, (newState: unknown) => deliver(this, [STATE, newState]))
    this.channel.on(events.diff, (diff: unknown) => deliver(this, [DIFF, diff]))
  }

  /** Replaces the join callback. */
  onJoin(callback: PresenceOnJoin<M>): void { this.caller.onJoin = callback }

  /** Replaces the leave callback. */
  onLeave(callback: PresenceOnLeave<M>): void { this.caller.onLeave = callback }

  /** Replaces the sync callback. */
  onSync(callback: PresenceOnSync): void { this.caller.onSync = callback }

  /** The live presences in key order, or what `by(key, presence)` makes of each. */
  list(): PresenceEntry<M>[]
  list<T>(by: (key: string, presence: PresenceEntry<M>) => T): T[]
  list(by?: (key: string, presence: PresenceEntry<M>) => unknown): unknown[] {
    // nothing is applied before the module is loaded: the state is still empty
    const core = loadedNow()
    return core ? core.instanceList(this, by) : []
  }

  /** Whether diffs are held back until the next `presence_state` (before the first, after a rejoin). */
  inPendingSyncState(): boolean {
    // before the module is loaded no state has been applied, so diffs would wait
    const core = loadedNow()
    return core ? core.pending(this) : true
  }

  /**
   * A new state (the current one is copied, never changed) brought to `newState`, calling
   * `onJoin` then `onLeave` for what changed. The `metas` of a presence in `newState` that
   * gained metas is overwritten with only those, as phoenix.js does.
   */
  static syncState<M extends object = Record<string, unknown>>(
    currentState: PresenceState<M>,
    newState: PresenceState<M>,
    onJoin?: PresenceOnJoin<M>,
    onLeave?: PresenceOnLeave<M>,
  ): PresenceState<M> {
    return load().resync(currentState, newState, onJoin, onLeave)
  }

  /**
   * Applies a diff's joins, then its leaves, to `state` (changed in place and returned when it
   * has a null prototype; otherwise a null-prototype copy of its top level is).
   */
  static syncDiff<M extends object = Record<string, unknown>>(
    state: PresenceState<M>,
    diff: PresenceDiff<M>,
    onJoin?: PresenceOnJoin<M>,
    onLeave?: PresenceOnLeave<M>,
  ): PresenceState<M> {
    return load().apply(state, diff, onJoin, onLeave)
  }

  /** The presences of `presences` in key order, or what `chooser(key, presence)` makes of each. */
  static list<M extends object = Record<string, unknown>>(presences: PresenceState<M>): PresenceEntry<M>[]
  static list<T, M extends object = Record<string, unknown>>(
    presences: PresenceState<M>,
    chooser: (key: string, presence: PresenceEntry<M>) => T,
  ): T[]
  static list(presences: PresenceState, chooser?: (key: string, presence: PresenceEntry) => unknown): unknown[] {
    return load().listOf(presences, chooser)
  }

  /**
   * Settles once the WebAssembly module is loaded: resolves, or rejects with the reason it
   * cannot be (a Content-Security-Policy without `'wasm-unsafe-eval'`, for one). In browsers
   * the module loads in the background from the moment Presence is imported, and instances
   * queue their channel's events meanwhile; await this before calling the static functions at
   * start-up. Elsewhere (Node, test runners) it is compiled on first use, synchronously.
   */
  static get ready(): Promise<void> { return ready() }

  // phoenix.js's private static helpers, kept for code that reaches for them
  /** @internal */
  static map<T>(obj: PresenceState, func: (key: string, presence: PresenceEntry) => T): T[] {
    return load().listOf(obj, func)
  }

  /** @internal */
  static toNullProtoObj<T extends object>(obj: T): T {
    if(Object.getPrototypeOf(obj) === null){ return obj }
    const out = Object.create(null)
    for(const key of Object.getOwnPropertyNames(obj)){ out[key] = (obj as any)[key] }
    return out
  }

  /** @internal */
  static clone<T>(obj: T): T { return JSON.parse(JSON.stringify(obj)) }
}
