// Backoff timer: runs a callback after a delay that depends on how many times it
// already ran. Socket reconnects and channel rejoins both use it.
//
// The global setTimeout/clearTimeout are looked up at call time so fake timers
// installed by a test after this module loaded still take effect.
import {clearTimer, type TimerHandle} from "./constants"

/** Runs `callback` after `timerCalc(attempt)` ms each time it is scheduled, until reset. */
export class Timer {
  /** Run when the timer fires. */
  callback: () => void
  /** Delay in ms for the 1-based attempt number. */
  timerCalc: (tries: number) => number
  timer: TimerHandle | null
  /** How many times the callback ran since the last reset. */
  tries: number

  constructor(callback: () => void, timerCalc: (tries: number) => number) {
    this.callback = callback
    this.timerCalc = timerCalc
    this.timer = null
    this.tries = 0
  }

  /** Forget past attempts and cancel a pending run. */
  reset(): void {
    this.tries = 0
    clearTimer(this.timer)
    this.timer = null
  }

  /** (Re)arm the timer with the delay of the next attempt. */
  scheduleTimeout(): void {
    clearTimer(this.timer)
    this.timer = setTimeout(
      () => {
        this.timer = null
        this.tries += 1
        this.callback()
      },
      this.timerCalc(this.tries + 1),
    )
  }
}
