//! Which browser origins may open a socket or call the API (`--allowed-origins`). Patterns are
//! parsed once at start; matching is a few string compares.

use axum::http::{header, HeaderMap};

/// One entry of `--allowed-origins`: `https://app.example.com`, `https://*.example.com`,
/// `*.example.com` (any scheme), `example.com:8443`, or `*` (every origin). Scheme and port are
/// compared only when the pattern names them; `*.` matches any subdomain but not the apex.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OriginPattern {
    scheme: Option<String>,
    host: HostPattern,
    port: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
enum HostPattern {
    Any,
    Exact(String),
    /// `.example.com` for `*.example.com`.
    Subdomain(String),
}

/// An origin split into its parts (lowercase).
struct OriginParts<'a> {
    scheme: Option<&'a str>,
    host: &'a str,
    port: Option<&'a str>,
}

fn split_origin(text: &str) -> OriginParts<'_> {
    let (scheme, rest) = match text.split_once("://") {
        Some((scheme, rest)) => (Some(scheme), rest),
        None => (None, text),
    };
    let rest = rest.trim_end_matches('/');
    // `[::1]:4000`: the port follows the bracket.
    let port_colon = match rest.rfind(']') {
        Some(close) => rest[close..].find(':').map(|i| close + i),
        None => rest.rfind(':'),
    };
    let (host, port) = match port_colon {
        Some(i) => (&rest[..i], Some(&rest[i + 1..])),
        None => (rest, None),
    };
    OriginParts { scheme, host, port }
}

impl OriginPattern {
    /// Reads one pattern (case-insensitive).
    pub fn parse(pattern: &str) -> Self {
        let lower = pattern.trim().to_ascii_lowercase();
        let parts = split_origin(&lower);
        let host = if parts.host == "*" {
            HostPattern::Any
        } else if let Some(domain) = parts.host.strip_prefix("*.") {
            HostPattern::Subdomain(format!(".{domain}"))
        } else {
            HostPattern::Exact(parts.host.to_string())
        };
        OriginPattern {
            scheme: parts.scheme.map(str::to_string),
            host,
            port: parts.port.map(str::to_string),
        }
    }

    /// True if the `Origin` header value `origin` matches.
    pub fn matches(&self, origin: &str) -> bool {
        let lower = origin.trim().to_ascii_lowercase();
        let parts = split_origin(&lower);
        if parts.scheme.is_none() || parts.host.is_empty() {
            return false; // `null` or garbage: not an origin any pattern names
        }
        let scheme_ok = self
            .scheme
            .as_deref()
            .is_none_or(|s| Some(s) == parts.scheme);
        let port_ok = self.port.as_deref().is_none_or(|p| Some(p) == parts.port);
        let host_ok = match &self.host {
            HostPattern::Any => true,
            HostPattern::Exact(h) => h == parts.host,
            HostPattern::Subdomain(suffix) => {
                parts.host.len() > suffix.len() && parts.host.ends_with(suffix.as_str())
            }
        };
        scheme_ok && port_ok && host_ok
    }
}

/// Checks the request's `Origin` against `allowed`: an empty list allows all, and a request
/// without `Origin` (not a browser, or same-origin long-poll in old browsers) is allowed.
/// Returns the refused origin, for the log.
pub fn check_origin(allowed: &[OriginPattern], headers: &HeaderMap) -> Result<(), String> {
    if allowed.is_empty() {
        return Ok(());
    }
    let Some(origin) = headers.get(header::ORIGIN) else {
        return Ok(());
    };
    let text = String::from_utf8_lossy(origin.as_bytes());
    if allowed.iter().any(|p| p.matches(&text)) {
        Ok(())
    } else {
        Err(format!("origin {text:?} not allowed"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn allows(patterns: &str, origin: &str) -> bool {
        let mut h = HeaderMap::new();
        h.insert(header::ORIGIN, origin.parse().unwrap());
        let patterns: Vec<_> = patterns
            .split(',')
            .filter(|p| !p.is_empty())
            .map(OriginPattern::parse)
            .collect();
        check_origin(&patterns, &h).is_ok()
    }

    #[test]
    fn exact_origins_match_scheme_host_and_port() {
        let list = "https://app.example.com,http://localhost:3000";
        assert!(allows(list, "https://app.example.com"));
        assert!(allows(list, "HTTPS://App.Example.com"));
        assert!(allows(list, "http://localhost:3000"));
        assert!(!allows(list, "http://app.example.com"));
        assert!(!allows(list, "http://localhost:3001"));
        assert!(!allows(list, "https://evil.com"));
        assert!(!allows(list, "https://app.example.com.evil.com"));
    }

    #[test]
    fn host_wildcards_match_subdomains_not_the_apex_or_lookalikes() {
        let list = "*.example.com";
        assert!(allows(list, "https://a.example.com"));
        assert!(allows(list, "http://a.b.example.com:8080"));
        assert!(!allows(list, "https://example.com"));
        assert!(!allows(list, "https://badexample.com"));
        assert!(!allows(list, "https://example.com.evil.com"));
        assert!(allows("https://*.example.com", "https://x.example.com"));
        assert!(!allows("https://*.example.com", "http://x.example.com"));
    }

    #[test]
    fn absent_origin_and_empty_list_are_allowed_null_origin_is_not() {
        let one = [OriginPattern::parse("https://a.com")];
        assert!(check_origin(&one, &HeaderMap::new()).is_ok());
        assert!(allows("", "https://anything.com"));
        assert!(!allows("https://a.com", "null"));
        assert!(allows("*", "https://anything.com"));
        assert!(allows("http://[::1]:4000", "http://[::1]:4000"));
    }
}
