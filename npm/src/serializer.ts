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

/** One protocol message. Refs are decimal strings; a message that has none carries null. */
export interface Message<P = unknown> {
  join_ref?: string | null
  ref?: string | null
  topic: string
  event: string
  payload: P
}

/** A frame as it goes over the wire: JSON text, or a binary frame. */
export type Frame = string | ArrayBuffer

/** Turns a message into a frame and returns what `callback(frame)` returns. */
export type Encoder = <R>(msg: Message, callback: (frame: Frame) => R) => R

/**
 * Turns a frame into a message and returns what `callback(message)` returns. The default
 * decoder hands `undefined` to the callback for a binary frame of an unknown kind.
 */
export type Decoder = <R>(raw: Frame, callback: (msg: Message | undefined) => R) => R

const KINDS = Object.freeze({push: 0, reply: 1, broadcast: 2} as const)
const MAX_FIELD_BYTES = 255
const HEADER_LENGTH = 1
const META_LENGTH = 4

// Made on first binary use, so that importing the client needs neither class (Jest's jsdom
// environment, for one, has no TextEncoder).
let utf8Encoder: TextEncoder | undefined
let utf8Decoder: TextDecoder | undefined

const isArrayBuffer = (value: unknown): value is ArrayBuffer =>
  value != null && (value as object).constructor === ArrayBuffer

// TextEncoder stringifies its argument: `undefined` becomes "", `null` "null".
// Phoenix has the same quirk and servers see it, so it is kept.
const fieldBytes = (name: string, value: string | null | undefined): Uint8Array => {
  utf8Encoder ??= new TextEncoder()
  const bytes = utf8Encoder.encode(value as string)
  if (bytes.length > MAX_FIELD_BYTES) {
    throw new Error(
      `unable to convert ${name} to binary: must be less than or equal to ${MAX_FIELD_BYTES} bytes, but is ${bytes.length} bytes`,
    )
  }
  return bytes
}

// Reads consecutive UTF-8 strings of the given byte lengths starting at `offset`.
const readFields = (bytes: Uint8Array, offset: number, lengths: number[]): {fields: string[]; offset: number} => {
  utf8Decoder ??= new TextDecoder()
  const fields = []
  for (const length of lengths) {
    fields.push(utf8Decoder.decode(bytes.subarray(offset, offset + length)))
    offset += length
  }
  return {fields, offset}
}

const encodeBinaryPush = (msg: Message<ArrayBuffer>): ArrayBuffer => {
  const meta = [
    fieldBytes("join_ref", msg.join_ref),
    fieldBytes("ref", msg.ref),
    fieldBytes("topic", msg.topic),
    fieldBytes("event", msg.event),
  ]
  const payload = new Uint8Array(msg.payload)
  const headerLength = HEADER_LENGTH + META_LENGTH
  const metaLength = meta.reduce((sum, field) => sum + field.length, 0)
  const frame = new Uint8Array(headerLength + metaLength + payload.length)
  frame[0] = KINDS.push
  meta.forEach((field, i) => {
    frame[1 + i] = field.length
  })
  let offset = headerLength
  for (const field of meta) {
    frame.set(field, offset)
    offset += field.length
  }
  frame.set(payload, offset)
  return frame.buffer
}

const decodeBinary = (buffer: ArrayBuffer): Message | undefined => {
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
export interface Serializer {
  /** Bytes before the metadata lengths of a binary frame (the kind). */
  readonly HEADER_LENGTH: 1
  /** Metadata length bytes of a binary push. */
  readonly META_LENGTH: 4
  /** The kind byte of each binary frame. */
  readonly KINDS: {readonly push: 0; readonly reply: 1; readonly broadcast: 2}
  /** A binary frame when the payload is an ArrayBuffer (not a view), else JSON text. */
  encode<R>(msg: Message, callback: (frame: Frame) => R): R
  /** The message of a text or binary frame; `undefined` for a binary frame of an unknown kind. */
  decode<R>(raw: Frame, callback: (msg: Message | undefined) => R): R
  /** The binary push frame of a message whose payload is an ArrayBuffer. */
  binaryEncode(msg: Message<ArrayBuffer>): ArrayBuffer
  /** The message of a binary frame; `undefined` for an unknown kind. */
  binaryDecode(buffer: ArrayBuffer): Message | undefined
}

export const Serializer: Serializer = {
  HEADER_LENGTH,
  META_LENGTH,
  KINDS,

  encode(msg, callback) {
    if (isArrayBuffer(msg.payload)) {
      return callback(encodeBinaryPush(msg as Message<ArrayBuffer>))
    }
    return callback(JSON.stringify([msg.join_ref, msg.ref, msg.topic, msg.event, msg.payload]))
  },

  decode(rawPayload, callback) {
    if (isArrayBuffer(rawPayload)) {
      return callback(decodeBinary(rawPayload))
    }
    const [join_ref, ref, topic, event, payload] = JSON.parse(rawPayload) as [
      string | null,
      string | null,
      string,
      string,
      unknown,
    ]
    return callback({join_ref, ref, topic, event, payload})
  },

  binaryEncode(msg) {
    return encodeBinaryPush(msg)
  },

  binaryDecode(buffer) {
    return decodeBinary(buffer)
  },
}
