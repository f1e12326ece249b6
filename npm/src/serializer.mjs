// The V2 channels serializer: JSON arrays for text frames, and the binary frame
// layout for ArrayBuffer payloads.
//
// Text frame: [join_ref, ref, topic, event, payload].
// Binary frames start with a kind byte, then one length byte per metadata field,
// then the fields as UTF-8, then the raw payload:
//   push      (client -> server and server -> client)
//   reply     (server -> client) [1, join_ref, ref, topic, status]
//   broadcast (server -> client) [2, topic, event]
// Lengths are UTF-8 byte counts; a field longer than 255 bytes cannot be framed.

const utf8Encoder = new TextEncoder()
const utf8Decoder = new TextDecoder()
const KINDS = Object.freeze({push: 0, reply: 1, broadcast: 2})
const MAX_FIELD_BYTES = 255

const isArrayBuffer = value => value != null && value.constructor === ArrayBuffer

// TextEncoder stringifies its argument: `undefined` becomes "", `null` "null".
// Phoenix has the same quirk and servers see it, so it is kept.
const fieldBytes = (name, value) => {
  const bytes = utf8Encoder.encode(value)
  if (bytes.length > MAX_FIELD_BYTES) {
    throw new Error(
      `unable to convert ${name} to binary: must be less than or equal to ${MAX_FIELD_BYTES} bytes, but is ${bytes.length} bytes`,
    )
  }
  return bytes
}

// Reads consecutive UTF-8 strings of the given byte lengths starting at `offset`.
const readFields = (bytes, offset, lengths) => {
  const fields = []
  for (const length of lengths) {
    fields.push(utf8Decoder.decode(bytes.subarray(offset, offset + length)))
    offset += length
  }
  return {fields, offset}
}

const encodeBinaryPush = msg => {
  const meta = [
    fieldBytes("join_ref", msg.join_ref),
    fieldBytes("ref", msg.ref),
    fieldBytes("topic", msg.topic),
    fieldBytes("event", msg.event),
  ]
  const payload = new Uint8Array(msg.payload)
  const headerLength = Serializer.HEADER_LENGTH + Serializer.META_LENGTH
  const metaLength = meta.reduce((sum, field) => sum + field.length, 0)
  const frame = new Uint8Array(headerLength + metaLength + payload.length)
  frame[0] = KINDS.push
  meta.forEach((field, i) => (frame[1 + i] = field.length))
  let offset = headerLength
  for (const field of meta) {
    frame.set(field, offset)
    offset += field.length
  }
  frame.set(payload, offset)
  return frame.buffer
}

const decodeBinary = buffer => {
  const bytes = new Uint8Array(buffer)
  switch (bytes[0]) {
    case KINDS.push: {
      const {fields, offset} = readFields(bytes, 4, [bytes[1], bytes[2], bytes[3]])
      const [join_ref, topic, event] = fields
      return {join_ref, ref: null, topic, event, payload: buffer.slice(offset)}
    }
    case KINDS.reply: {
      const {fields, offset} = readFields(bytes, 5, [bytes[1], bytes[2], bytes[3], bytes[4]])
      const [join_ref, ref, topic, status] = fields
      return {join_ref, ref, topic, event: "phx_reply", payload: {status, response: buffer.slice(offset)}}
    }
    case KINDS.broadcast: {
      const {fields, offset} = readFields(bytes, 3, [bytes[1], bytes[2]])
      const [topic, event] = fields
      return {join_ref: null, ref: null, topic, event, payload: buffer.slice(offset)}
    }
    default:
      return undefined
  }
}

/**
 * The default encoder/decoder of a Socket. `encode` and `decode` hand their
 * result to a callback (synchronously) and return what the callback returns.
 */
export const Serializer = {
  HEADER_LENGTH: 1,
  META_LENGTH: 4,
  KINDS,

  encode(msg, callback) {
    if (isArrayBuffer(msg.payload)) {
      return callback(encodeBinaryPush(msg))
    }
    return callback(JSON.stringify([msg.join_ref, msg.ref, msg.topic, msg.event, msg.payload]))
  },

  decode(rawPayload, callback) {
    if (isArrayBuffer(rawPayload)) {
      return callback(decodeBinary(rawPayload))
    }
    const [join_ref, ref, topic, event, payload] = JSON.parse(rawPayload)
    return callback({join_ref, ref, topic, event, payload})
  },

  binaryEncode(msg) {
    return encodeBinaryPush(msg)
  },

  binaryDecode(buffer) {
    return decodeBinary(buffer)
  },
}
