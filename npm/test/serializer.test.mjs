// Serializer: V2 JSON arrays and the binary frame layout, byte for byte.
import {describe, test} from "node:test"
import assert from "node:assert/strict"
import {Serializer as PhoenixSerializer} from "phoenix"
import {Serializer} from "rollcall"

const bytes = (...parts) =>
  new Uint8Array(parts.flatMap(p => (typeof p === "string" ? [...Buffer.from(p, "utf8")] : p))).buffer

const encode = msg => Serializer.encode(msg, x => x)
const decode = raw => Serializer.decode(raw, x => x)
const asArray = buffer => [...new Uint8Array(buffer)]

describe("JSON", () => {
  test("encodes a message as [join_ref, ref, topic, event, payload]", () => {
    const msg = {join_ref: "0", ref: "1", topic: "t", event: "e", payload: {foo: 1}}
    assert.equal(encode(msg), '["0","1","t","e",{"foo":1}]')
  })

  test("undefined refs are encoded as null", () => {
    assert.equal(encode({topic: "phoenix", event: "heartbeat", payload: {}, ref: "7"}), '[null,"7","phoenix","heartbeat",{}]')
  })

  test("decodes an array into a message object", () => {
    assert.deepEqual(decode('["3","3","room:1","phx_reply",{"status":"ok","response":{}}]'), {
      join_ref: "3",
      ref: "3",
      topic: "room:1",
      event: "phx_reply",
      payload: {status: "ok", response: {}},
    })
  })

  test("a typed array payload is not binary and goes out as JSON", () => {
    assert.equal(typeof encode({join_ref: null, ref: "1", topic: "t", event: "e", payload: new Uint8Array([1])}), "string")
  })

  test("encode and decode return what the callback returns", () => {
    assert.equal(Serializer.encode({topic: "t", event: "e", payload: {}}, () => 42), 42)
    assert.equal(Serializer.decode("[null,null,\"t\",\"e\",{}]", () => 43), 43)
  })
})

describe("binary", () => {
  test("encodes a push: kind 0, four lengths, metadata, payload", () => {
    const msg = {join_ref: "10", ref: "1", topic: "top", event: "ev", payload: new Uint8Array([1, 2, 3]).buffer}
    const out = encode(msg)
    assert.equal(out.constructor, ArrayBuffer)
    assert.deepEqual(asArray(out), asArray(bytes([0, 2, 1, 3, 2], "101topev", [1, 2, 3])))
  })

  test("metadata lengths are UTF-8 byte counts", () => {
    const msg = {join_ref: "1", ref: "2", topic: "sala:café", event: "héllo→", payload: new ArrayBuffer(0)}
    const out = asArray(encode(msg))
    assert.deepEqual(out.slice(0, 5), [0, 1, 1, 10, 9])
    assert.equal(Buffer.from(out.slice(5)).toString("utf8"), "12sala:caféhéllo→")
  })

  test("a field over 255 UTF-8 bytes throws an error naming the field", () => {
    const payload = new ArrayBuffer(0)
    assert.throws(
      () => encode({join_ref: "1", ref: "2", topic: "x".repeat(256), event: "e", payload}),
      {message: "unable to convert topic to binary: must be less than or equal to 255 bytes, but is 256 bytes"},
    )
    // 128 two-byte characters: 128 UTF-16 units but 256 bytes.
    assert.throws(() => encode({join_ref: "1", ref: "2", topic: "t", event: "é".repeat(128), payload}), {
      message: "unable to convert event to binary: must be less than or equal to 255 bytes, but is 256 bytes",
    })
    assert.doesNotThrow(() => encode({join_ref: "1", ref: "2", topic: "x".repeat(255), event: "e", payload}))
  })

  test("a null ref is written as the text null, an undefined one as empty", () => {
    const out = asArray(encode({join_ref: null, ref: undefined, topic: "t", event: "e", payload: new ArrayBuffer(0)}))
    assert.deepEqual(out, asArray(bytes([0, 4, 0, 1, 1], "nullte")))
  })

  test("decodes a push from the server", () => {
    const msg = decode(bytes([0, 3, 3, 10], "123top", "some-event", [101, 102, 103]))
    assert.equal(msg.payload.constructor, ArrayBuffer)
    assert.deepEqual({...msg, payload: asArray(msg.payload)}, {
      join_ref: "123",
      ref: null,
      topic: "top",
      event: "some-event",
      payload: [101, 102, 103],
    })
  })

  test("decodes a reply", () => {
    const msg = decode(bytes([1, 3, 1, 3, 2], "1001", "top", "ok", [101, 102, 103]))
    assert.equal(msg.payload.response.constructor, ArrayBuffer)
    assert.deepEqual(
      {...msg, payload: {...msg.payload, response: asArray(msg.payload.response)}},
      {join_ref: "100", ref: "1", topic: "top", event: "phx_reply", payload: {status: "ok", response: [101, 102, 103]}},
    )
  })

  test("decodes a broadcast", () => {
    const msg = decode(bytes([2, 3, 10], "top", "some-event", [101, 102, 103]))
    assert.deepEqual({...msg, payload: asArray(msg.payload)}, {
      join_ref: null,
      ref: null,
      topic: "top",
      event: "some-event",
      payload: [101, 102, 103],
    })
  })

  test("decodes non-ASCII metadata by UTF-8 byte lengths", () => {
    const msg = decode(bytes([2, 10, 2], "sala:café", "ü", [7]))
    assert.equal(msg.topic, "sala:café")
    assert.equal(msg.event, "ü")
    assert.deepEqual(asArray(msg.payload), [7])
  })

  test("the decoded payload is a copy, not a view of the frame", () => {
    const frame = bytes([2, 1, 1], "te", [1, 2])
    const msg = decode(frame)
    new Uint8Array(frame)[5] = 99
    assert.deepEqual(asArray(msg.payload), [1, 2])
  })

  test("an unknown kind decodes to undefined", () => {
    assert.equal(decode(bytes([9, 0, 0])), undefined)
  })
})

describe("same bytes as the phoenix serializer", () => {
  const cases = [
    {join_ref: "3", ref: "4", topic: "room:1", event: "file", payload: new Uint8Array([0, 255, 7]).buffer},
    {join_ref: "1", ref: "2", topic: "sala:ñandú", event: "→", payload: new ArrayBuffer(0)},
    {join_ref: null, ref: "9", topic: "t", event: "e", payload: new Uint8Array([1]).buffer},
    {join_ref: "1", ref: "2", topic: "t", event: "e", payload: {nested: ["x", 1, null]}},
  ]
  for (const [i, msg] of cases.entries()) {
    test(`encode case ${i}`, () => {
      const mine = Serializer.encode(msg, x => x)
      const theirs = PhoenixSerializer.encode(msg, x => x)
      if (typeof theirs === "string") assert.equal(mine, theirs)
      else assert.deepEqual(asArray(mine), asArray(theirs))
    })
  }

  const frames = [
    bytes([0, 2, 6, 4], "12room:1file", [1, 2]),
    bytes([1, 1, 1, 6, 5], "34room:1error", [3]),
    bytes([2, 10, 1], "sala:café", "ü", []),
  ]
  for (const [i, frame] of frames.entries()) {
    test(`decode case ${i}`, () => {
      const norm = m => JSON.parse(JSON.stringify(m, (k, v) => (v instanceof ArrayBuffer ? asArray(v) : v)))
      assert.deepEqual(norm(Serializer.decode(frame, x => x)), norm(PhoenixSerializer.decode(frame, x => x)))
    })
  }
})
