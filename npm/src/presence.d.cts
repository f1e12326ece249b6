// Generated from presence.d.mts by scripts/build-js.mjs; do not edit.
// Types of rollcall's Presence: the same API as phoenix.js's Presence (phoenix-js.md §7).

/** One connection's metadata. `phx_ref` identifies it; `phx_ref_prev` is set after an update. */
export interface PresenceMeta {
  phx_ref: string
  phx_ref_prev?: string
  [field: string]: unknown
}

/** One key's presence: its metas, plus any presence-level fields the server added. */
export interface PresenceEntry<M extends PresenceMeta = PresenceMeta> {
  metas: M[]
  [field: string]: unknown
}

/**
 * Presences by key. The objects the static functions and the instance return have a null
 * prototype, so keys such as `__proto__` and `constructor` work. Key order is JavaScript's:
 * integer-like keys ascending, then the other keys in insertion order.
 */
export type PresenceState<P extends PresenceEntry = PresenceEntry> = Record<string, P>

/** A `presence_diff` payload. */
export interface PresenceDiff<P extends PresenceEntry = PresenceEntry> {
  joins: PresenceState<P>
  leaves: PresenceState<P>
}

/**
 * `currentPresence`: the presence before the join, unmodified (undefined for a new key).
 * `newPresence`: the presence from the diff, holding only the joined metas.
 */
export type PresenceOnJoinCallback<P extends PresenceEntry = PresenceEntry> =
  (key: string, currentPresence: P | undefined, newPresence: P) => void

/**
 * `currentPresence`: the stored presence after the removal (its metas may be empty, then the
 * key is deleted right after the callback). `leftPresence`: the presence from the diff.
 */
export type PresenceOnLeaveCallback<P extends PresenceEntry = PresenceEntry> =
  (key: string, currentPresence: P, leftPresence: P) => void

export type PresenceOnSyncCallback = () => void

export interface PresenceOpts {
  /** Event names; both are required when given. Default `presence_state` / `presence_diff`. */
  events?: {state: string, diff: string}
}

/** What Presence uses of a channel: a Channel of `rollcall` or of the official `phoenix`. */
export interface PresenceChannel {
  on(event: string, callback: (payload: any, ref?: any, joinRef?: any) => void): unknown
  joinRef(): string | null | undefined
}

export class Presence<P extends PresenceEntry = PresenceEntry> {
  constructor(channel: PresenceChannel, opts?: PresenceOpts)

  /** The current state (null prototype). */
  state: PresenceState<P>
  /** Diffs received before the `presence_state` of the current join, in arrival order. */
  pendingDiffs: PresenceDiff<P>[]
  channel: PresenceChannel
  /** The channel's join ref when the last `presence_state` arrived; null before. */
  joinRef: string | null | undefined
  caller: {
    onJoin: PresenceOnJoinCallback<P>
    onLeave: PresenceOnLeaveCallback<P>
    onSync: PresenceOnSyncCallback
  }

  /** Replaces the join callback. */
  onJoin(callback: PresenceOnJoinCallback<P>): void
  /** Replaces the leave callback. */
  onLeave(callback: PresenceOnLeaveCallback<P>): void
  /** Replaces the sync callback, called once after each applied state or diff. */
  onSync(callback: PresenceOnSyncCallback): void
  /** The live presences in key order, or what `by(key, presence)` makes of each. */
  list(): P[]
  list<T>(by: (key: string, presence: P) => T): T[]
  /** True until the `presence_state` of the channel's current join has arrived. */
  inPendingSyncState(): boolean

  /**
   * Syncs a full state from the server. Deep-copies `currentState`; overwrites the metas of
   * `newState`'s presences that gained metas with just those. Joins are reported first (new
   * state order), then leaves.
   */
  static syncState<P extends PresenceEntry = PresenceEntry>(
    currentState: PresenceState<P>,
    newState: PresenceState<P>,
    onJoin?: PresenceOnJoinCallback<P> | null,
    onLeave?: PresenceOnLeaveCallback<P> | null,
  ): PresenceState<P>

  /**
   * Applies a diff: joins first, then leaves. A null-prototype `state` is mutated and returned;
   * a plain object is copied (shallowly) first.
   */
  static syncDiff<P extends PresenceEntry = PresenceEntry>(
    state: PresenceState<P>,
    diff: PresenceDiff<P>,
    onJoin?: PresenceOnJoinCallback<P> | null,
    onLeave?: PresenceOnLeaveCallback<P> | null,
  ): PresenceState<P>

  /** `chooser(key, presence)` for every key in order; the presences themselves by default. */
  static list<P extends PresenceEntry = PresenceEntry>(presences: PresenceState<P>): P[]
  static list<P extends PresenceEntry = PresenceEntry, T = P>(
    presences: PresenceState<P>,
    chooser: (key: string, presence: P) => T,
  ): T[]
}
