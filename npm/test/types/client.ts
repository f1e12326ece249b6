// Type test of the client API, written as an app uses it. Checked with
// `npx tsc --noEmit -p test/types` against the built declarations (dist/index.d.ts), never run.
// Each `@ts-expect-error` marks a use the types must refuse; if the types decayed to `any`, the
// directive would be unused and tsc would fail.
import {
  type Channel,
  type ChannelState,
  type ConnectionState,
  type Decoder,
  type Encoder,
  LongPoll,
  type Message,
  Presence,
  type Push,
  type PushStatus,
  Serializer,
  Socket,
  type SocketConnectOption,
  type Transport,
  type TransportCloseEvent,
} from "rollcall"

// ---- Socket: options, lifecycle callbacks --------------------------------------------------

const options: SocketConnectOption = {
  params: () => ({token: "t"}),
  authToken: () => "secret",
  timeout: 5000,
  heartbeatIntervalMs: 15000,
  reconnectAfterMs: tries => [100, 500, 1000][tries - 1] ?? 5000,
  rejoinAfterMs: tries => tries * 1000,
  logger: (kind, msg, data) => console.log(`${kind}: ${msg}`, data),
  longPollFallbackMs: 2500,
  sessionStorage: window.sessionStorage,
  binaryType: "arraybuffer",
}
const socket = new Socket("/socket", options)
socket.connect()

// The browser's WebSocket and LongPoll are both transports.
new Socket("wss://example.com/socket", {transport: WebSocket, params: {token: "t"}})
const polling = new Socket("/socket", {transport: LongPoll, longpollerTimeout: 20000})
polling.replaceTransport(polling.getLongPollTransport())

const openRef: string = socket.onOpen(() => console.log("open"))
socket.onClose((event: TransportCloseEvent) => console.log(event.code, event.reason))
socket.onError((error, transport, establishedConnections) => {
  console.log(error, socket.transportName(transport), establishedConnections + 1)
})
socket.onMessage(({topic, event, payload, ref, join_ref}: Message) => console.log(topic, event, payload, ref, join_ref))
socket.off([openRef])
const connection: ConnectionState = socket.connectionState()
const pinged: boolean = socket.ping(latencyMs => console.log(latencyMs.toFixed(1)))
socket.disconnect(() => console.log("closed"), 1000, "bye")
console.log(connection, pinged, socket.endPointURL(), socket.isConnected())

// @ts-expect-error the timeout is a number of milliseconds
new Socket("/socket", {timeout: "soon"})
// @ts-expect-error misspelt options are caught
new Socket("/socket", {transprot: LongPoll})
// @ts-expect-error a transport must look like a WebSocket
new Socket("/socket", {transport: class {}})
// @ts-expect-error onOpen's callback gets no event
socket.onOpen((event: string) => console.log(event))
// @ts-expect-error socket callback refs are strings
const numericRef: number = socket.onClose(() => {})
// @ts-expect-error off takes the list of refs
socket.off(openRef)
// @ts-expect-error "opened" is not a connection state
if (socket.connectionState() === "opened") console.log(numericRef)
// @ts-expect-error an incoming message's payload is unknown until the app narrows it
socket.onMessage(message => message.payload.body)

// ---- Channel and Push ----------------------------------------------------------------------

interface Shout {
  body: string
  from: string
}

const channel: Channel = socket.channel("room:lobby", () => ({name: "ana"}))
const join: Push = channel.join(5000)
join
  .receive<{welcome: string}>("ok", ({welcome}) => console.log(welcome.toUpperCase()))
  .receive("error", reason => console.error(reason))
  .receive("timeout", () => console.warn("still waiting"))

const shoutRef: number = channel.on<Shout>("shout", ({body, from}, ref, joinRef) => {
  console.log(body.trim(), from, ref, joinRef)
})
channel.on("shout", (shout: Shout) => console.log(shout.body))
channel.off("shout", shoutRef)
channel.onError(reason => console.error(reason))
channel.onClose(reason => console.log(reason))
channel.onMessage = (event, payload) => (event === "shout" ? {...(payload as Shout), seen: true} : payload)

const status: PushStatus = "ok"
channel.push("shout", {body: "hi", from: "ana"} satisfies Shout, 3000).receive(status, () => {})
channel.push("file", new ArrayBuffer(8))
const state: ChannelState = channel.state
const joinRef: string | null | undefined = channel.joinRef()
channel.leave().receive("ok", () => console.log("left", state, joinRef))

// @ts-expect-error join takes a timeout in ms
channel.join("soon")
// @ts-expect-error a payload is an object or an ArrayBuffer
channel.push("shout", "hi")
// @ts-expect-error binding refs are numbers
const stringRef: string = channel.on("shout", () => {})
// @ts-expect-error the payload's type is the one given to on()
channel.on<Shout>("shout", ({text}) => console.log(text, stringRef))
// @ts-expect-error without a type, a payload is unknown
channel.on("shout", payload => payload.body)
// @ts-expect-error "open" is not a channel state
const badState: ChannelState = "open"
// @ts-expect-error a push's ref may be missing
const pushRef: string = join.ref
console.log(badState, pushRef)

// ---- Presence on a channel -----------------------------------------------------------------

const presence = new Presence<{online_at: number}>(channel)
presence.onSync(() => {
  const since: number[] = presence.list((_id, {metas: [first]}) => first.online_at)
  console.log(since)
})

// ---- LongPoll on its own -------------------------------------------------------------------

const lp = new LongPoll("wss://example.com/socket/websocket?vsn=2.0.0", ["phoenix"])
lp.timeout = 20000
lp.onopen = () => console.log("polling")
lp.onmessage = ({data}) => console.log(typeof data === "string" ? data : data.byteLength)
lp.onerror = error => console.error(error === "timeout" ? "timed out" : error)
lp.onclose = ({code, reason}) => console.log(code, reason)
lp.send('[null,"1","room:lobby","shout",{}]')
lp.close(1000, "done", true)
const asTransport: Transport = lp
console.log(asTransport.readyState)

// @ts-expect-error LongPoll sends text or binary frames
lp.send(42)

// ---- Serializer and custom codecs ----------------------------------------------------------

const frame: string | ArrayBuffer = Serializer.encode(
  {join_ref: null, ref: "1", topic: "room:lobby", event: "shout", payload: {body: "hi"}},
  encoded => encoded,
)
const decoded = Serializer.decode('[null,null,"room:lobby","shout",{}]', message => message)
if (decoded) console.log(decoded.topic.length, decoded.ref)
const binary: ArrayBuffer = Serializer.binaryEncode({
  join_ref: "1",
  ref: "2",
  topic: "room:lobby",
  event: "file",
  payload: new ArrayBuffer(4),
})
const pushKind: 0 = Serializer.KINDS.push
console.log(frame, Serializer.binaryDecode(binary)?.event, pushKind)

const encode: Encoder = (message, callback) => callback(JSON.stringify(message))
const decode: Decoder = (raw, callback) =>
  callback(typeof raw === "string" ? (JSON.parse(raw) as Message) : Serializer.binaryDecode(raw))
new Socket("/socket", {encode, decode})

// @ts-expect-error a binary push needs an ArrayBuffer payload
Serializer.binaryEncode({join_ref: "1", ref: "2", topic: "t", event: "e", payload: {}})
// @ts-expect-error frames are text or ArrayBuffers
Serializer.decode(42, message => message)
// @ts-expect-error a decoded message may be undefined (an unknown binary frame kind)
Serializer.decode(binary, message => message.topic)

// ---- A hand-written transport --------------------------------------------------------------

class MemoryTransport implements Transport {
  readyState = 0
  onopen: ((event: unknown) => void) | null = null
  onerror: ((error: unknown) => void) | null = null
  onmessage: ((event: {data: string | ArrayBuffer}) => void) | null = null
  onclose: ((event: TransportCloseEvent) => void) | null = null
  sent: (string | ArrayBuffer)[] = []
  constructor(
    readonly url: string,
    readonly protocols?: string[],
  ) {}
  send(data: string | ArrayBuffer): void {
    this.sent.push(data)
  }
  close(): void {
    this.readyState = 3
  }
}
new Socket("/socket", {transport: MemoryTransport})
