// Channel: one topic joined over a socket. Owns the join handshake, automatic
// rejoin with backoff, buffering of pushes made before the join succeeded, and
// dispatch of incoming events to bindings registered with `on`.
import {CHANNEL_EVENTS, CHANNEL_STATES, type ChannelState, closure, type ValueOrThunk} from "./constants"
import {Push, type PushPayload} from "./push"
import type {Socket} from "./socket"
import {Timer} from "./timer"

/** Called with an event's payload, its ref (replies) and the join ref it belongs to. */
export type BindingCallback<P = unknown> = (
  payload: P,
  ref: string | null | undefined,
  joinRef: string | null | undefined,
) => void

/** One `on` registration. */
export interface Binding {
  event: string
  ref: number
  callback: BindingCallback
}

/**
 * A topic on a Socket: `socket.channel(topic, params)`, then `join()`, `push`, `on` and `leave`.
 * It rejoins by itself after errors and reconnects.
 */
export class Channel {
  state: ChannelState
  topic: string
  /** The join params, called on every (re)join. */
  params: () => object
  socket: Socket
  bindings: Binding[]
  bindingRef: number
  /** Default timeout of this channel's pushes, in ms: the socket's, or the one given to `join`. */
  timeout: number
  joinedOnce: boolean
  /** The phx_join push, resent with a new ref on every rejoin. */
  joinPush: Push
  /** Pushes made before the join succeeded, sent when it does. */
  pushBuffer: Push[]
  /** The socket callbacks this channel registered, removed with it. */
  stateChangeRefs: string[]
  rejoinTimer: Timer

  /**
   * @param params join params, re-read on every (re)join
   */
  constructor(topic: string, params: ValueOrThunk<object> | null | undefined, socket: Socket) {
    this.state = CHANNEL_STATES.closed
    this.topic = topic
    this.params = closure(params || {})
    this.socket = socket
    this.bindings = []
    this.bindingRef = 0
    this.timeout = this.socket.timeout
    this.joinedOnce = false
    this.joinPush = new Push(this, CHANNEL_EVENTS.join, this.params, this.timeout)
    this.pushBuffer = []
    this.stateChangeRefs = []

    this.rejoinTimer = new Timer(() => {
      if (this.socket.isConnected()) this.rejoin()
    }, this.socket.rejoinAfterMs)

    // These two socket hooks take refs from the socket's counter, so the first
    // channel's join on a fresh socket goes out with ref "3".
    this.stateChangeRefs.push(this.socket.onError(() => this.rejoinTimer.reset()))
    this.stateChangeRefs.push(
      this.socket.onOpen(() => {
        this.rejoinTimer.reset()
        if (this.isErrored()) this.rejoin()
      }),
    )

    this.joinPush.receive("ok", () => {
      this.state = CHANNEL_STATES.joined
      this.rejoinTimer.reset()
      const buffered = this.pushBuffer
      this.pushBuffer = []
      for (const push of buffered) push.send()
    })
    this.joinPush.receive("error", () => {
      this.state = CHANNEL_STATES.errored
      if (this.socket.isConnected()) this.rejoinTimer.scheduleTimeout()
    })
    this.onClose(() => {
      this.rejoinTimer.reset()
      if (this.socket.hasLogger()) this.socket.log("channel", `close ${this.topic} ${this.joinRef()}`)
      this.state = CHANNEL_STATES.closed
      this.socket.remove(this)
    })
    this.onError(reason => {
      if (this.socket.hasLogger()) this.socket.log("channel", `error ${this.topic}`, reason)
      if (this.isJoining()) this.joinPush.reset()
      this.state = CHANNEL_STATES.errored
      if (this.socket.isConnected()) this.rejoinTimer.scheduleTimeout()
    })
    this.joinPush.receive("timeout", () => {
      if (this.socket.hasLogger()) {
        this.socket.log("channel", `timeout ${this.topic} (${this.joinRef()})`, this.joinPush.timeout)
      }
      // Tell the server to drop the join in case it arrives late.
      const leavePush = new Push(this, CHANNEL_EVENTS.leave, closure({}), this.timeout)
      leavePush.send()
      this.state = CHANNEL_STATES.errored
      this.joinPush.reset()
      if (this.socket.isConnected()) this.rejoinTimer.scheduleTimeout()
    })
    this.on(CHANNEL_EVENTS.reply, (payload, ref) => {
      this.trigger(this.replyEventName(ref), payload)
    })
  }

  /** Joins the topic; call once per Channel. Returns the join Push. */
  join(timeout: number = this.timeout): Push {
    if (this.joinedOnce) {
      throw new Error("tried to join multiple times. 'join' can only be called a single time per channel instance")
    }
    this.timeout = timeout
    this.joinedOnce = true
    this.rejoin()
    return this.joinPush
  }

  /** Binds `callback(reason)` to the channel closing. Returns the binding ref. */
  onClose(callback: BindingCallback): number {
    return this.on(CHANNEL_EVENTS.close, callback)
  }

  /**
   * Binds `callback(reason)` to channel errors. The reason is the server's phx_error payload,
   * or `{source: "transport", reason}` when the connection failed. Returns the binding ref.
   */
  onError(callback: (reason: unknown) => void): number {
    return this.on(CHANNEL_EVENTS.error, reason => callback(reason))
  }

  /**
   * Binds `callback(payload, ref, joinRef)` to `event`. Returns the binding ref. The payload
   * type is the caller's to state: `on<{body: string}>("shout", ({body}) => ...)`.
   */
  on<P = unknown>(event: string, callback: BindingCallback<P>): number {
    const ref = this.bindingRef++
    this.bindings.push({event, ref, callback: callback as BindingCallback})
    return ref
  }

  /** Unbinds `event`: only the binding `ref` when given, else all of them. */
  off(event: string, ref?: number): void {
    this.bindings = this.bindings.filter(
      binding => !(binding.event === event && (typeof ref === "undefined" || ref === binding.ref)),
    )
  }

  /** Whether a push would go out now (connected and joined) rather than be buffered. */
  canPush(): boolean {
    return this.socket.isConnected() && this.isJoined()
  }

  /** Sends `event` with `payload`; buffered until joined. Returns the Push. */
  push(event: string, payload?: PushPayload | null, timeout: number = this.timeout): Push {
    const body = payload || {}
    if (!this.joinedOnce) {
      throw new Error(
        `tried to push '${event}' to '${this.topic}' before joining. Use channel.join() before pushing events`,
      )
    }
    const push = new Push(this, event, () => body, timeout)
    if (this.canPush()) {
      push.send()
    } else {
      // The clock starts now: a push still buffered at its timeout is never sent.
      push.startTimeout()
      this.pushBuffer.push(push)
    }
    return push
  }

  /** Leaves the topic. The channel is closed at once; the server is told with phx_leave. */
  leave(timeout: number = this.timeout): Push {
    this.rejoinTimer.reset()
    this.joinPush.cancelTimeout()
    this.state = CHANNEL_STATES.leaving
    const onClose = () => {
      if (this.socket.hasLogger()) this.socket.log("channel", `leave ${this.topic}`)
      this.trigger(CHANNEL_EVENTS.close, "leave")
    }
    const leavePush = new Push(this, CHANNEL_EVENTS.leave, closure({}), timeout)
    leavePush.receive("ok", () => onClose()).receive("timeout", () => onClose())
    leavePush.send()
    if (!this.canPush()) leavePush.trigger("ok", {})
    return leavePush
  }

  /**
   * Hook to inspect or rewrite incoming payloads (replace it on an instance); must return the
   * payload, changed or not.
   */
  onMessage(event: string, payload: unknown, ref?: string | null, joinRef?: string | null): unknown {
    return payload
  }

  /** Whether a message belongs to this channel; messages of an earlier join are dropped. */
  isMember(topic: string, event: string, payload: unknown, joinRef: string | null | undefined): boolean {
    if (this.topic !== topic) return false
    if (joinRef && joinRef !== this.joinRef()) {
      if (this.socket.hasLogger()) {
        this.socket.log("channel", "dropping outdated message", {topic, event, payload, joinRef})
      }
      return false
    }
    return true
  }

  /** The ref of the current join; messages carrying another join ref are outdated. */
  joinRef(): string | null | undefined {
    return this.joinPush.ref
  }

  private rejoin(timeout: number = this.timeout): void {
    if (this.isLeaving()) return
    this.socket.leaveOpenTopic(this.topic)
    this.state = CHANNEL_STATES.joining
    this.joinPush.resend(timeout)
  }

  /** Dispatches `event` to its bindings, through the `onMessage` hook. */
  trigger(event: string, payload?: unknown, ref?: string | null, joinRef?: string | null): void {
    const handledPayload = this.onMessage(event, payload, ref, joinRef)
    if (payload && !handledPayload) {
      throw new Error("channel onMessage callbacks must return the payload, modified or unmodified")
    }
    // Snapshot: bindings added or removed by a callback do not change this dispatch.
    const matching = this.bindings.filter(binding => binding.event === event)
    for (const binding of matching) {
      binding.callback(handledPayload, ref, joinRef || this.joinRef())
    }
  }

  replyEventName(ref: string | null | undefined): string {
    return `chan_reply_${ref}`
  }

  isClosed(): boolean {
    return this.state === CHANNEL_STATES.closed
  }

  isErrored(): boolean {
    return this.state === CHANNEL_STATES.errored
  }

  isJoined(): boolean {
    return this.state === CHANNEL_STATES.joined
  }

  isJoining(): boolean {
    return this.state === CHANNEL_STATES.joining
  }

  isLeaving(): boolean {
    return this.state === CHANNEL_STATES.leaving
  }
}
