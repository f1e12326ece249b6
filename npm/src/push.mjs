// Push: one message sent on a channel, and the reply (or timeout) it gets back.
//
// Each send takes a fresh ref from the socket; the channel re-triggers the
// server's phx_reply for that ref as the event `chan_reply_<ref>`, which the
// push listens to. A timeout is delivered the same way, as status "timeout".

export class Push {
  /**
   * @param {import("./channel.mjs").Channel} channel
   * @param {string} event
   * @param {() => object} payload thunk, re-read on every send
   * @param {number} timeout ms to wait for a reply
   */
  constructor(channel, event, payload, timeout) {
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
  resend(timeout) {
    this.timeout = timeout
    this.reset()
    this.send()
  }

  send() {
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

  /** Registers `callback(response)` for a reply status ("ok", "error", "timeout"); chainable. */
  receive(status, callback) {
    if (this.hasReceived(status)) callback(this.receivedResp.response)
    this.recHooks.push({status, callback})
    return this
  }

  reset() {
    this.cancelRefEvent()
    this.ref = null
    this.refEvent = null
    this.receivedResp = null
    this.sent = false
  }

  matchReceive({status, response}) {
    for (const hook of this.recHooks.filter(h => h.status === status)) hook.callback(response)
  }

  cancelRefEvent() {
    if (this.refEvent) this.channel.off(this.refEvent)
  }

  cancelTimeout() {
    clearTimeout(this.timeoutTimer)
    this.timeoutTimer = null
  }

  startTimeout() {
    if (this.timeoutTimer) this.cancelTimeout()
    // A buffered push starts its clock (and binding) before it is sent; drop
    // that binding so only the ref actually on the wire is listened to.
    this.cancelRefEvent()
    this.ref = this.channel.socket.makeRef()
    this.refEvent = this.channel.replyEventName(this.ref)
    this.channel.on(this.refEvent, payload => {
      this.cancelRefEvent()
      this.cancelTimeout()
      this.receivedResp = payload
      this.matchReceive(payload)
    })
    this.timeoutTimer = setTimeout(() => this.trigger("timeout", {}), this.timeout)
  }

  hasReceived(status) {
    return Boolean(this.receivedResp && this.receivedResp.status === status)
  }

  trigger(status, response) {
    this.channel.trigger(this.refEvent, {status, response})
  }
}
