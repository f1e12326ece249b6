// Minimal HTTP helper for the LongPoll transport and query-string building.
// Uses XMLHttpRequest where it exists (browsers), otherwise fetch (Node 18+,
// workers). Every request reports through one callback with the parsed JSON
// body, or null when there is no usable body.
import {globalScope, XHR_DONE} from "./constants"

/** An HTTP request in flight. */
export interface RequestHandle {
  abort(): void
}

type RequestCallback = (json: unknown) => void

const parseJSON = (text: string | null | undefined): unknown => {
  if (!text) return null
  try {
    return JSON.parse(text)
  } catch {
    if (globalScope.console) globalScope.console.log("failed to parse JSON response", text)
    return null
  }
}

const xhrRequest = (
  XHR: new () => XMLHttpRequest,
  method: string,
  url: string,
  headers: Record<string, string>,
  body: string | null,
  timeout: number | undefined,
  ontimeout: (() => void) | undefined,
  callback: RequestCallback,
): RequestHandle => {
  const req = new XHR()
  req.open(method, url, true)
  // Left at the default (none) when no timeout is given.
  if (timeout !== undefined) req.timeout = timeout
  for (const [name, value] of Object.entries(headers)) req.setRequestHeader(name, value)
  // A failed request fires both readystatechange and error; report it once.
  let settled = false
  const settle = (resp: unknown) => {
    if (settled) return
    settled = true
    callback(resp)
  }
  req.onerror = () => settle(null)
  req.onreadystatechange = () => {
    if (req.readyState === XHR_DONE) settle(parseJSON(req.responseText))
  }
  if (ontimeout) {
    req.ontimeout = () => {
      settled = true
      ontimeout()
    }
  }
  req.send(body)
  return req
}

const fetchRequest = (
  fetch: typeof globalThis.fetch,
  method: string,
  url: string,
  headers: Record<string, string>,
  body: string | null,
  timeout: number | undefined,
  ontimeout: (() => void) | undefined,
  callback: RequestCallback,
): RequestHandle => {
  const controller = new AbortController()
  const timer = timeout ? setTimeout(() => controller.abort(), timeout) : undefined
  const options: RequestInit = {method, headers, signal: controller.signal}
  if (body != null) options.body = body
  // The callback runs outside the promise's error path, so an exception thrown
  // by it is not mistaken for a network failure.
  fetch(url, options)
    .then(response => response.text())
    .then(
      text => {
        clearTimeout(timer)
        callback(parseJSON(text))
      },
      (error: unknown) => {
        clearTimeout(timer)
        if ((error as {name?: unknown} | null)?.name === "AbortError") {
          if (ontimeout) ontimeout()
        } else {
          callback(null)
        }
      },
    )
  return controller
}

export const Ajax = {
  /**
   * Sends one request. Returns a handle with `abort()`.
   * `callback(json | null)`; `ontimeout()` when the request timed out or was aborted.
   */
  request(
    method: string,
    url: string,
    headers: Record<string, string>,
    body: string | null,
    timeout: number | undefined,
    ontimeout: (() => void) | undefined,
    callback: RequestCallback,
  ): RequestHandle {
    const {XDomainRequest, XMLHttpRequest, fetch, AbortController} = globalScope
    if (XDomainRequest) {
      const req = new XDomainRequest()
      if (timeout !== undefined) req.timeout = timeout
      req.open(method, url)
      req.onload = () => callback(parseJSON(req.responseText))
      req.onerror = () => callback(null)
      if (ontimeout) req.ontimeout = ontimeout
      req.onprogress = () => {}
      req.send(body)
      return req
    }
    if (XMLHttpRequest) {
      return xhrRequest(XMLHttpRequest, method, url, headers, body, timeout, ontimeout, callback)
    }
    if (fetch && AbortController) {
      // fetch is called on the global object, as some engines require.
      return fetchRequest(fetch.bind(globalScope), method, url, headers, body, timeout, ontimeout, callback)
    }
    throw new Error("no suitable HTTP client found: need XMLHttpRequest or fetch with AbortController")
  },

  /**
   * Query string of own enumerable keys; nested objects/arrays become `parent[key]`.
   * The whole key is URI-encoded (brackets too). A null value yields an empty segment.
   */
  serialize(obj: object | null, parentKey?: string): string {
    const segments: string[] = []
    for (const key in obj) {
      if (!Object.prototype.hasOwnProperty.call(obj, key)) continue
      const paramKey = parentKey ? `${parentKey}[${key}]` : key
      const value: unknown = (obj as Record<string, unknown>)[key]
      if (typeof value === "object") {
        segments.push(Ajax.serialize(value, paramKey))
      } else {
        segments.push(`${encodeURIComponent(paramKey)}=${encodeURIComponent(value as string)}`)
      }
    }
    return segments.join("&")
  },

  /** `url` with `params` appended as a query string; unchanged when params is empty. */
  appendParams(url: string, params: object): string {
    if (Object.keys(params).length === 0) return url
    const separator = url.includes("?") ? "&" : "?"
    return `${url}${separator}${Ajax.serialize(params)}`
  },
}
