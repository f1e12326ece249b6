// LongPoll transport: the poll loop's status handling, ndjson batching and close.
import {afterEach, beforeEach, describe, mock, test} from "node:test"
import assert from "node:assert/strict"
import {LongPoll} from "rollcall"
import {installFakeXHR} from "./longpoll-fakes.mjs"

let http
let events

beforeEach(() => {
  mock.timers.enable({apis: ["setTimeout", "Date"]})
  http = installFakeXHR()
  events = []
})
afterEach(() => {
  http.uninstall()
  mock.timers.reset()
})

const makeLongPoll = (url = "ws://h/socket/websocket?vsn=2.0.0", protocols) => {
  const lp = new LongPoll(url, protocols)
  lp.timeout = 20000
  lp.onopen = () => events.push("open")
  lp.onerror = e => events.push(["error", e])
  lp.onmessage = m => events.push(["message", m.data])
  lp.onclose = e => events.push(["close", e.code, e.reason, e.wasClean])
  return lp
}

// A LongPoll whose session the server just created (status 410 on the first GET).
const openLongPoll = () => {
  const lp = makeLongPoll()
  mock.timers.tick(0)
  http.last("GET").respond({status: 410, token: "tok1", messages: []})
  events.length = 0
  return lp
}

describe("poll", () => {
  test("first poll goes out on the next tick to the /longpoll URL with an empty token", () => {
    makeLongPoll()
    assert.equal(http.requests.length, 0)
    mock.timers.tick(0)
    const req = http.last()
    assert.equal(req.method, "GET")
    assert.equal(req.url, "http://h/socket/longpoll?vsn=2.0.0&")
    assert.equal(req.headers.Accept, "application/json")
  })

  test("wss endpoints poll over https", () => {
    const lp = makeLongPoll("wss://h/ws/websocket/socket/websocket?vsn=2.0.0")
    assert.equal(lp.pollEndpoint, "https://h/ws/websocket/socket/longpoll?vsn=2.0.0")
  })

  test("the auth token sub-protocol becomes the X-Phoenix-AuthToken header", () => {
    makeLongPoll("ws://h/socket/websocket", ["phoenix", "base64url.bearer.phx.fn5+Pw"])
    mock.timers.tick(0)
    assert.equal(http.last().headers["X-Phoenix-AuthToken"], "~~~?")
  })

  test("410 without a session opens, stores the token and polls with it", () => {
    const lp = makeLongPoll()
    mock.timers.tick(0)
    http.last().respond({status: 410, token: "tok1", messages: []})
    assert.deepEqual(events, ["open"])
    assert.equal(lp.readyState, 1)
    assert.equal(http.last().url, "http://h/socket/longpoll?vsn=2.0.0&token=tok1")
  })

  test("200 delivers each message in its own macrotask and polls again", () => {
    openLongPoll()
    http.last().respond({status: 200, token: "tok2", messages: ["[1]", "[2]"]})
    assert.deepEqual(events, [])
    assert.equal(http.last().url, "http://h/socket/longpoll?vsn=2.0.0&token=tok2")
    mock.timers.tick(0)
    assert.deepEqual(events, [["message", "[1]"], ["message", "[2]"]])
  })

  test("204 polls again", () => {
    openLongPoll()
    const before = http.requests.length
    http.last().respond({status: 204, token: "tok1", messages: []})
    assert.equal(http.requests.length, before + 1)
    assert.deepEqual(events, [])
  })

  test("410 with a session held means the session is gone: error 410, close 3410, retry", () => {
    const lp = openLongPoll()
    http.last().respond({status: 410, token: "new", messages: []})
    assert.deepEqual(events, [["error", 410], ["close", 3410, "session_gone", false]])
    assert.equal(lp.readyState, 0)
  })

  test("403 errors and closes with 1008 without retrying", () => {
    const lp = makeLongPoll()
    mock.timers.tick(0)
    http.last().respond({status: 403, token: null, messages: []})
    assert.deepEqual(events, [["error", 403], ["close", 1008, "forbidden", false]])
    assert.equal(lp.readyState, 3)
    assert.equal(http.pending().length, 0)
  })

  test("500 and an unusable response both report error 500 and close with 1011", () => {
    openLongPoll()
    http.last().respond({status: 500})
    const lp = openLongPoll()
    http.last().respond(undefined)
    assert.deepEqual(events, [["error", 500], ["close", 1011, "internal server error", 500]])
    assert.equal(lp.readyState, 0)
  })

  test("a network error counts as status 0 and is reported once", () => {
    openLongPoll()
    http.last().networkError()
    assert.deepEqual(events, [["error", 500], ["close", 1011, "internal server error", 500]])
  })

  test("a request timeout errors with timeout and closes with 1005", () => {
    openLongPoll()
    http.last().timeOut()
    assert.deepEqual(events, [["error", "timeout"], ["close", 1005, "timeout", false]])
  })

  test("close aborts in-flight requests and later responses are dropped", () => {
    const lp = openLongPoll()
    const inFlight = http.last()
    lp.close(1000, "bye", true)
    assert.equal(inFlight.aborted, true)
    inFlight.respond({status: 200, token: "t", messages: ["[1]"]})
    mock.timers.tick(0)
    assert.deepEqual(events, [["close", 1000, "bye", true]])
  })

  test("close() without arguments reports an undefined code", () => {
    const lp = openLongPoll()
    lp.close()
    assert.deepEqual(events, [["close", undefined, undefined, undefined]])
  })

  test("skipHeartbeat is set so the socket does not heartbeat over long-poll", () => {
    assert.equal(makeLongPoll().skipHeartbeat, true)
  })
})

describe("send", () => {
  const posts = () => http.requests.filter(r => r.method === "POST")

  test("sends in one tick go out as one ndjson POST", () => {
    const lp = openLongPoll()
    lp.send('[null,"1","t","a",{}]')
    lp.send('[null,"2","t","b",{}]')
    assert.equal(posts().length, 0)
    mock.timers.tick(0)
    assert.equal(posts().length, 1)
    assert.equal(posts()[0].body, '[null,"1","t","a",{}]\n[null,"2","t","b",{}]')
    assert.equal(posts()[0].headers["Content-Type"], "application/x-ndjson")
    assert.equal(posts()[0].url, "http://h/socket/longpoll?vsn=2.0.0&token=tok1")
  })

  test("a batch of 250 lines goes out as POSTs of 100, 100 and 50, each after the previous ack", () => {
    const lp = openLongPoll()
    for (let i = 0; i < 250; i++) lp.send(`[${i}]`)
    mock.timers.tick(0)
    const sizes = []
    for (let n = 0; n < 3; n++) {
      assert.equal(posts().length, n + 1, "next chunk waits for the ack")
      const post = posts()[n]
      const lines = post.body.split("\n")
      sizes.push(lines.length)
      assert.equal(lines[0], `[${n * 100}]`)
      post.respond({status: 200})
    }
    assert.deepEqual(sizes, [100, 100, 50])
    assert.equal(lp.awaitingBatchAck, false)
  })

  test("sends made while a POST is in flight go in the next POST after the ack", () => {
    const lp = openLongPoll()
    lp.send("[1]")
    mock.timers.tick(0)
    lp.send("[2]")
    lp.send("[3]")
    mock.timers.tick(0)
    assert.equal(posts().length, 1)
    posts()[0].respond({status: 200})
    assert.equal(posts().length, 2)
    assert.equal(posts()[1].body, "[2]\n[3]")
  })

  test("binary frames are sent as base64 lines", () => {
    const lp = openLongPoll()
    lp.send(new Uint8Array([0, 1, 1, 1, 1, 0x31, 0x32, 0x74, 0x65, 0xff]).buffer)
    mock.timers.tick(0)
    assert.equal(posts()[0].body, Buffer.from([0, 1, 1, 1, 1, 0x31, 0x32, 0x74, 0x65, 0xff]).toString("base64"))
  })

  test("a failed POST errors with its status and closes with 1011", () => {
    const lp = openLongPoll()
    lp.send("[1]")
    mock.timers.tick(0)
    posts()[0].respond({status: 410})
    assert.deepEqual(events, [["error", 410], ["close", 1011, "internal server error", false]])
    assert.equal(lp.awaitingBatchAck, false)
  })
})
