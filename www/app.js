// The rollcall demo: who is online in a room, live. It uses only the `rollcall` npm package
// (copied next to this page by the make step), exactly as an app would use `phoenix`.
import {Socket, Presence} from "./vendor/browser.js"

const $ = (id) => document.getElementById(id)
const store = {
  get: (k) => { try { return localStorage.getItem(k) } catch { return null } },
  set: (k, v) => { try { localStorage.setItem(k, v) } catch { /* private mode */ } },
}

// One stable id per browser: two tabs of the same person are one member with two devices.
let userId = store.get("rollcall:id")
if (!userId) {
  userId = `u-${crypto.getRandomValues(new Uint32Array(2)).join("")}`
  store.set("rollcall:id", userId)
}
let name = store.get("rollcall:name") || ""
let room = new URLSearchParams(location.search).get("room") || store.get("rollcall:room") || "lobby"
let channel = null
let presence = null
let everOpen = false

const status = () => (document.visibilityState === "hidden" ? "away" : "online")
const meta = () => ({name, status: status()})

const socket = new Socket("/socket", {params: {user_id: userId}})
socket.onOpen(() => { everOpen = true; setConn("online") })
socket.onError(() => setConn(everOpen ? "reconnecting" : "connecting"))
socket.onClose(() => setConn(everOpen ? "reconnecting" : "connecting"))

function setConn(state) {
  const el = $("conn")
  el.dataset.state = state
  el.textContent = {online: "online", connecting: "connecting…", reconnecting: "reconnecting…"}[state]
}

function joinRoom(next) {
  if (channel) { channel.leave() }
  room = next
  store.set("rollcall:room", room)
  $("room-name").textContent = `room:${room}`
  $("room-input").value = room
  $("members").replaceChildren()
  // A function, so that a rejoin after a reconnect sends the current name and status.
  channel = socket.channel(`room:${room}`, () => ({meta: meta()}))
  presence = new Presence(channel)
  presence.onSync(render)
  channel.join()
    .receive("error", (resp) => console.warn("join refused", resp))
}

function showRoom() {
  $("welcome").hidden = true
  $("room").hidden = false
  $("me-name").textContent = name
  if (!socket.isConnected()) { socket.connect() }
  joinRoom(room)
}

$("name-form").addEventListener("submit", (e) => {
  e.preventDefault()
  const value = $("name-input").value.trim()
  if (!value) { return }
  const renamed = name && channel
  name = value
  store.set("rollcall:name", name)
  if (renamed) {
    $("me-name").textContent = name
    $("welcome").hidden = true
    $("room").hidden = false
    channel.push("track", meta())
  } else {
    showRoom()
  }
})

$("rename").addEventListener("click", () => {
  $("name-input").value = name
  $("welcome").hidden = false
  $("name-input").focus()
})

$("room-form").addEventListener("submit", (e) => {
  e.preventDefault()
  const next = $("room-input").value
  if (next !== room) { joinRoom(next) }
})

document.addEventListener("visibilitychange", () => {
  if (channel && channel.state === "joined") { channel.push("track", meta()) }
})

// ---------- rendering ----------
function hue(text) {
  let h = 0
  for (const ch of text) { h = (h * 31 + ch.codePointAt(0)) >>> 0 }
  return h % 360
}

function initials(text) {
  const parts = text.trim().split(/\s+/).filter(Boolean)
  const letters = parts.length > 1 ? parts[0][0] + parts[parts.length - 1][0] : (parts[0] || "?").slice(0, 2)
  return letters.toUpperCase()
}

function summarize(key, {metas}) {
  const latest = metas[metas.length - 1] || {}
  const since = Math.min(...metas.map((m) => Number(m.online_at) || Infinity))
  const nodes = [...new Set(metas.map((m) => m.node).filter(Boolean))]
  return {
    key,
    name: String(latest.name || key),
    devices: metas.length,
    status: metas.some((m) => m.status !== "away") ? "online" : "away",
    since: Number.isFinite(since) ? new Date(since * 1000) : null,
    nodes,
  }
}

function render() {
  const list = $("members")
  const members = presence.list(summarize).sort((a, b) => a.name.localeCompare(b.name))
  const seen = new Set()
  let previous = null
  for (const m of members) {
    seen.add(m.key)
    let li = list.querySelector(`li[data-key="${CSS.escape(m.key)}"]`)
    if (!li) {
      li = document.createElement("li")
      li.className = "member"
      li.dataset.key = m.key
      li.innerHTML = `<span class="avatar" aria-hidden="true"></span>
        <div class="who"><div class="name"></div><div class="detail"></div></div>
        <span class="status"></span>`
    }
    li.classList.remove("leaving")
    li.dataset.status = m.status
    li.dataset.name = m.name
    const avatar = li.querySelector(".avatar")
    avatar.textContent = initials(m.name)
    avatar.style.background = `hsl(${hue(m.name)} 55% 45%)`
    li.querySelector(".name").textContent = m.key === userId ? `${m.name} (you)` : m.name
    const devices = `${m.devices} ${m.devices === 1 ? "device" : "devices"}`
    const since = m.since ? ` · since ${m.since.toLocaleTimeString([], {hour: "2-digit", minute: "2-digit"})}` : ""
    const nodes = m.nodes.length ? ` · on ${m.nodes.join(", ")}` : ""
    li.querySelector(".detail").textContent = devices + since + nodes
    li.querySelector(".status").textContent = m.status
    // Keep DOM order equal to the sorted order without re-creating nodes (animations stay calm).
    const want = previous ? previous.nextElementSibling : list.firstElementChild
    if (want !== li) { list.insertBefore(li, want) }
    previous = li
  }
  for (const li of [...list.children]) {
    if (!seen.has(li.dataset.key) && !li.classList.contains("leaving")) {
      li.classList.add("leaving")
      li.addEventListener("transitionend", () => li.classList.contains("leaving") && li.remove(), {once: true})
      setTimeout(() => li.classList.contains("leaving") && li.remove(), 400)
    }
  }
  $("count").textContent = `${members.length} online`
}

if (name) {
  showRoom()
} else {
  $("welcome").hidden = false
  socket.connect()
  $("name-input").focus()
}
