// Backoff timer: runs a callback after a delay that depends on how many times it
// already ran. Socket reconnects and channel rejoins both use it.
//
// The global setTimeout/clearTimeout are looked up at call time so fake timers
// installed by a test after this module loaded still take effect.

export class Timer {
  /**
   * @param {() => void} callback run when the timer fires
   * @param {(tries: number) => number} timerCalc delay in ms for the 1-based attempt number
   */
  constructor(callback, timerCalc) {
    this.callback = callback
    this.timerCalc = timerCalc
    this.timer = null
    this.tries = 0
  }

  /** Forget past attempts and cancel a pending run. */
  reset() {
    this.tries = 0
    clearTimeout(this.timer)
    this.timer = null
  }

  /** (Re)arm the timer with the delay of the next attempt. */
  scheduleTimeout() {
    clearTimeout(this.timer)
    this.timer = setTimeout(() => {
      this.timer = null
      this.tries += 1
      this.callback()
    }, this.timerCalc(this.tries + 1))
  }
}
