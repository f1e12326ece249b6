// Type test: the declarations compile for an app with no DOM types (a bot, a load generator, a
// server-side renderer): `npx tsc --noEmit -p test/types/tsconfig.node.json`.
import {Serializer, Socket, type Transport, type TransportConstructor} from "rollcall"

// In Node the app brings a WebSocket class, e.g. the `ws` package's.
declare const NodeWebSocket: TransportConstructor

const socket = new Socket("ws://127.0.0.1:4000/socket", {transport: NodeWebSocket, params: {bot: true}})
socket.connect()
socket
  .channel("room:lobby")
  .join()
  .receive("ok", () => socket.disconnect())
const conn: Transport | null | undefined = socket.conn
export const state: number | undefined = conn?.readyState
export const frame: string | ArrayBuffer = Serializer.encode({topic: "t", event: "e", payload: {}}, encoded => encoded)
