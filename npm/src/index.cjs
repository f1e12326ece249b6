"use strict"
// CommonJS entry: the named exports of the phoenix client (plus Push).
// Presence is loaded on first access, so the socket classes work even where
// the WebAssembly part is not available.
const {Channel} = require("./channel.cjs")
const {LongPoll} = require("./longpoll.cjs")
const {Push} = require("./push.cjs")
const {Serializer} = require("./serializer.cjs")
const {Socket} = require("./socket.cjs")

exports.Channel = Channel
exports.LongPoll = LongPoll
exports.Push = Push
exports.Serializer = Serializer
exports.Socket = Socket
Object.defineProperty(exports, "Presence", {
  enumerable: true,
  get: () => require("./presence.cjs").Presence,
})
