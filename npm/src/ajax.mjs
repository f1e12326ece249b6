// Minimal HTTP helper for the LongPoll transport and query-string building.
// Uses XMLHttpRequest where it exists (browsers), otherwise fetch (Node 18+,
// workers). Every request reports through one callback with the parsed JSON
// body, or null when there is no usable body.

import {XHR_DONE, globalScope} from "./constants"

const parseJSON = text => {
  if (!text) return null
  try {
    return JSON.parse(text)
  } catch {
    if (globalScope.console) globalScope.console.log("failed to parse JSON response", text)
    return null
  }
}

const xhrRequest = (XHR, method, url, headers, body, timeout, ontimeout, callback) => {
  const req = new XHR()
  req.open(method, url, true)
  req.timeout = timeout
  for (const [name, value] of Object.entries(headers)) req.setRequestHeader(name, value)
  // A failed request fires both readystatechange and error; report it once.
  let settled = false
  const settle = resp => {
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

const fetchRequest = (method, url, headers, body, timeout, ontimeout, callback) => {
  const controller = new AbortController()
  const timer = timeout ? setTimeout(() => controller.abort(), timeout) : null
  const options = {method, headers, signal: controller.signal}
  if (body != null) options.body = body
  // The callback runs outside the promise's error path, so an exception thrown
  // by it is not mistaken for a network failure.
  globalScope
    .fetch(url, options)
    .then(response => response.text())
    .then(
      text => {
        clearTimeout(timer)
        callback(parseJSON(text))
      },
      error => {
        clearTimeout(timer)
        if (error && error.name === "AbortError") {
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
  request(method, url, headers, body, timeout, ontimeout, callback) {
    if (globalScope.XDomainRequest) {
      const req = new globalScope.XDomainRequest()
      req.timeout = timeout
      req.open(method, url)
      req.onload = () => callback(parseJSON(req.responseText))
      req.onerror = () => callback(null)
      if (ontimeout) req.ontimeout = ontimeout
      req.onprogress = () => {}
      req.send(body)
      return req
    }
    if (globalScope.XMLHttpRequest) {
      return xhrRequest(globalScope.XMLHttpRequest, method, url, headers, body, timeout, ontimeout, callback)
    }
    if (globalScope.fetch && globalScope.AbortController) {
      return fetchRequest(method, url, headers, body, timeout, ontimeout, callback)
    }
    throw new Error("no suitable HTTP client found: need XMLHttpRequest or fetch with AbortController")
  },

  /**
   * Query string of own enumerable keys; nested objects/arrays become `parent[key]`.
   * The whole key is URI-encoded (brackets too). A null value yields an empty segment.
   */
  serialize(obj, parentKey) {
    const segments = []
    for (const key in obj) {
      if (!Object.prototype.hasOwnProperty.call(obj, key)) continue
      const paramKey = parentKey ? `${parentKey}[${key}]` : key
      const value = obj[key]
      if (typeof value === "object") {
        segments.push(Ajax.serialize(value, paramKey))
      } else {
        segments.push(`${encodeURIComponent(paramKey)}=${encodeURIComponent(value)}`)
      }
    }
    return segments.join("&")
  },

  /** `url` with `params` appended as a query string; unchanged when params is empty. */
  appendParams(url, params) {
    if (Object.keys(params).length === 0) return url
    const separator = url.includes("?") ? "&" : "?"
    return `${url}${separator}${Ajax.serialize(params)}`
  },
}
