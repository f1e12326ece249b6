// Push: one message sent on a channel, and the reply (or timeout) it gets back.
//
// Each send takes a fresh ref from the socket; the channel re-triggers the
// server's phx_reply for that ref as the event `chan_reply_<ref>`, which the
// push listens to. A timeout is delivered the same way, as status "timeout".
import type {Channel} from "./channel"
import {clearTimer, type TimerHandle} from "./constants"

/**
 * The status of a push's reply: the server answers "ok" or "error", and "timeout" is reported
 * when no reply came in time. A server may use other statuses.
 */
export type PushStatus = "ok" | "error" | "timeout" | (string & {})

/** A reply as the channel hands it to the push (the payload of `phx_reply`). */
export interface PushReply<R = unknown> {
  status: PushStatus
  response: R
}

/** What a push sends: a JSON-encodable object, or an ArrayBuffer sent as a binary frame. */
export type PushPayload = object | ArrayBuffer

interface ReceiveHook {
  status: PushStatus
  callback: (response: unknown) => void
}

/** One message pushed on a channel (`channel.push`, `join`, `leave`); `receive` binds its reply. */
export class Push {
  channel: Channel
  event: string
  /** Called on every send, so a resent join carries the params of the moment. */
  payload: () => PushPayload
  receivedResp: PushReply | null
  timeout: number
  timeoutTimer: TimerHandle | null
  recHooks: ReceiveHook[]
  sent: boolean
  /** The ref of the current send; a new one on every (re)send. */
  ref: string | null | undefined
  refEvent: string | null | undefined

  /**
   * @param payload thunk, re-read on every send
   * @param timeout ms to wait for a reply
   */
  constructor(channel: Channel, event: string, payload: (() => PushPayload) | null | undefined, timeout: number) {
    this.channel = channel
    this.event = event
    this.payload = payload || (() => ({}))
    this.receivedResp = null
    this.timeout = timeout
    this.timeoutTimer = null
    this.recHooks = []
    this.sent = false
    this.ref = undefined
    this.refEvent = undefined
  }

  /** Sends again with a new ref and a new timeout, forgetting any earlier reply. */
  resend(timeout: number): void {
    this.timeout = timeout
    this.reset()
    this.send()
  }

  send(): void {
    // A push that already timed out (e.g. while buffered) is never sent late.
    if (this.hasReceived("timeout")) return
    this.startTimeout()
    this.sent = true
    this.channel.socket.push({
      topic: this.channel.topic,
      event: this.event,
      payload: this.payload(),
      ref: this.ref,
      join_ref: this.channel.joinRef(),
    })
  }

  /**
   * Registers `callback(response)` for a reply status ("ok", "error", "timeout"); chainable.
   * A reply that already arrived with that status is handed over at once. The response type is
   * the caller's to state: `receive<{id: number}>("ok", ({id}) => ...)`.
   */
  receive<R = unknown>(status: PushStatus, callback: (response: R) => void): this {
    if (this.hasReceived(status)) callback((this.receivedResp as PushReply<R>).response)
    this.recHooks.push({status, callback: callback as (response: unknown) => void})
    return this
  }

  /** Forgets the ref, the reply binding and any reply, so the push can be sent again. */
  reset(): void {
    this.cancelRefEvent()
    this.ref = null
    this.refEvent = null
    this.receivedResp = null
    this.sent = false
  }

  private matchReceive({status, response}: PushReply): void {
    for (const hook of this.recHooks.filter(h => h.status === status)) hook.callback(response)
  }

  private cancelRefEvent(): void {
    if (this.refEvent) this.channel.off(this.refEvent)
  }

  cancelTimeout(): void {
    clearTimer(this.timeoutTimer)
    this.timeoutTimer = null
  }

  /** Takes a ref, binds its reply event and starts the clock. */
  startTimeout(): void {
    if (this.timeoutTimer) this.cancelTimeout()
    // A buffered push starts its clock (and binding) before it is sent; drop
    // that binding so only the ref actually on the wire is listened to.
    this.cancelRefEvent()
    const ref = this.channel.socket.makeRef()
    const refEvent = this.channel.replyEventName(ref)
    this.ref = ref
    this.refEvent = refEvent
    this.channel.on<PushReply>(refEvent, payload => {
      this.cancelRefEvent()
      this.cancelTimeout()
      this.receivedResp = payload
      this.matchReceive(payload)
    })
    this.timeoutTimer = setTimeout(() => this.trigger("timeout", {}), this.timeout)
  }

  private hasReceived(status: PushStatus): boolean {
    return Boolean(this.receivedResp && this.receivedResp.status === status)
  }

  /** Delivers a reply to this push as if the server had sent it. */
  trigger(status: PushStatus, response: unknown): void {
    this.channel.trigger(this.refEvent as string, {status, response})
  }
}
