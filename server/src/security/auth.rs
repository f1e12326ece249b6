//! Who a connection is: HS256 JWTs signed with the server's secret(s).
//!
//! A backend that already knows its user mints a short-lived token; the browser hands it to
//! rollcall (phoenix.js `authToken`, the `token` socket param, or the long-poll header), and
//! rollcall trusts only what the token says:
//!
//! - `sub` — the presence key. A client cannot track as anyone else.
//! - `exp` / `nbf` — checked (with [`LEEWAY_SECS`] of clock skew) when present; a connection
//!   outlives neither: the transport ends it at [`Identity::valid_until`].
//! - `rooms` — optional topic patterns (`room:*` or exact topics) the token may join.
//! - `meta` — optional server-trusted fields (name, avatar, …) merged into every meta of this
//!   user; a client's `track` cannot override them.
//!
//! Several secrets may be configured at once so that a secret can be rotated without cutting
//! anyone off: a token is accepted if any of them verifies it. This module owns the token format
//! and its checks; where tokens come from (headers, params) is the transport's business.

use std::fmt;

use jsonwebtoken::{decode, encode, Algorithm, DecodingKey, EncodingKey, Header, Validation};
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

/// Clock skew tolerated on `exp` and `nbf`, in seconds.
pub const LEEWAY_SECS: u64 = 5;

/// The claims rollcall reads from a token.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Claims {
    /// The presence key of the user.
    pub sub: String,
    /// Expiry, unix seconds.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub exp: Option<u64>,
    /// Not valid before, unix seconds.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub nbf: Option<u64>,
    /// Issued at, unix seconds (informational).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub iat: Option<u64>,
    /// Topic patterns the token may join; absent = every topic the server serves.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rooms: Option<Vec<String>>,
    /// Server-trusted meta fields, merged over whatever the client tracks.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub meta: Option<Map<String, Value>>,
}

/// A verified identity.
#[derive(Debug, Clone, PartialEq)]
pub struct Identity {
    /// The presence key (`sub`).
    pub key: String,
    /// Topic patterns this identity may join (`None` = no restriction beyond the server's).
    pub rooms: Option<Vec<String>>,
    /// Server-trusted meta fields.
    pub meta: Map<String, Value>,
    /// The token's `exp` (unix seconds), if it has one.
    pub expires_at: Option<u64>,
}

impl Identity {
    /// The unix time (seconds) from which this token is refused: `exp` plus the tolerated skew.
    /// A connection it opened is ended then, so that a connection never outlives what a fresh
    /// connect with the same token would be allowed.
    pub fn valid_until(&self) -> Option<u64> {
        self.expires_at.map(|exp| exp.saturating_add(LEEWAY_SECS))
    }

    /// Whether this identity may join `topic`.
    pub fn may_join(&self, topic: &str) -> bool {
        self.rooms
            .as_ref()
            .is_none_or(|patterns| patterns.iter().any(|p| topic_matches(p, topic)))
    }

    /// Merges the trusted fields over a client-supplied meta: the client cannot override them.
    pub fn apply_trusted_meta(&self, meta: &mut Map<String, Value>) {
        for (k, v) in &self.meta {
            meta.insert(k.clone(), v.clone());
        }
    }
}

/// True if `topic` matches `pattern`: an exact topic, or a prefix ending in `*` (`room:*`).
pub fn topic_matches(pattern: &str, topic: &str) -> bool {
    match pattern.strip_suffix('*') {
        Some(prefix) => topic.starts_with(prefix),
        None => pattern == topic,
    }
}

/// Why a token was refused. The `Display` text is what the client and the log see.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum AuthError {
    /// No token was presented but the server requires one.
    Missing,
    /// Not a JWT, or not one we can read.
    Malformed(String),
    /// Signed with another secret, or tampered with.
    BadSignature,
    /// A token with an algorithm other than HS256 (including `none`).
    WrongAlgorithm,
    /// `exp` is in the past.
    Expired,
    /// `nbf` is in the future.
    NotYetValid,
    /// `sub` is missing or empty.
    MissingSubject,
    /// The token may not join this topic.
    TopicNotAllowed(String),
}

impl fmt::Display for AuthError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            AuthError::Missing => write!(f, "token required"),
            AuthError::Malformed(why) => write!(f, "malformed token: {why}"),
            AuthError::BadSignature => write!(f, "invalid token signature"),
            AuthError::WrongAlgorithm => write!(f, "token algorithm must be HS256"),
            AuthError::Expired => write!(f, "token expired"),
            AuthError::NotYetValid => write!(f, "token not yet valid"),
            AuthError::MissingSubject => write!(f, "token has no sub"),
            AuthError::TopicNotAllowed(topic) => write!(f, "token may not join {topic}"),
        }
    }
}

impl std::error::Error for AuthError {}

impl AuthError {
    /// A `Malformed` error with the parser's message cut to 100 bytes: it may quote parts of
    /// the token, and it goes to the log and back to the client.
    fn malformed(e: impl fmt::Display) -> Self {
        let text = e.to_string();
        let mut end = text.len().min(100);
        while !text.is_char_boundary(end) {
            end -= 1;
        }
        AuthError::Malformed(text[..end].to_string())
    }
}

/// Checks tokens against one or more secrets.
#[derive(Clone)]
pub struct Verifier {
    keys: Vec<DecodingKey>,
}

impl fmt::Debug for Verifier {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // Never print secrets.
        write!(f, "Verifier({} secret(s))", self.keys.len())
    }
}

impl Verifier {
    /// A verifier accepting tokens signed with any of `secrets` (empty secrets are ignored).
    /// Returns `None` when no secret is configured: the server then runs in open mode.
    pub fn new<S: AsRef<str>>(secrets: &[S]) -> Option<Self> {
        let keys: Vec<_> = secrets
            .iter()
            .map(AsRef::as_ref)
            .filter(|s| !s.is_empty())
            .map(|s| DecodingKey::from_secret(s.as_bytes()))
            .collect();
        (!keys.is_empty()).then_some(Verifier { keys })
    }

    /// Verifies `token` at time `now` (unix seconds).
    pub fn verify(&self, token: &str, now: u64) -> Result<Identity, AuthError> {
        let header = jsonwebtoken::decode_header(token).map_err(AuthError::malformed)?;
        if header.alg != Algorithm::HS256 {
            return Err(AuthError::WrongAlgorithm);
        }
        let mut validation = Validation::new(Algorithm::HS256);
        // exp/nbf are checked below against the injected clock; sub is checked by hand.
        validation.validate_exp = false;
        validation.validate_nbf = false;
        validation.required_spec_claims.clear();
        let mut last = AuthError::BadSignature;
        for key in &self.keys {
            match decode::<Claims>(token, key, &validation) {
                Ok(data) => return check_claims(data.claims, now),
                Err(e) => {
                    use jsonwebtoken::errors::ErrorKind;
                    last = match e.kind() {
                        ErrorKind::InvalidSignature => AuthError::BadSignature,
                        ErrorKind::InvalidAlgorithm => AuthError::WrongAlgorithm,
                        _ => return Err(AuthError::malformed(e)),
                    };
                }
            }
        }
        Err(last)
    }
}

fn check_claims(claims: Claims, now: u64) -> Result<Identity, AuthError> {
    if claims.sub.is_empty() {
        return Err(AuthError::MissingSubject);
    }
    // RFC 7519: the token is valid only *before* exp; the same instant ends open connections.
    if claims
        .exp
        .is_some_and(|exp| now >= exp.saturating_add(LEEWAY_SECS))
    {
        return Err(AuthError::Expired);
    }
    if claims
        .nbf
        .is_some_and(|nbf| now.saturating_add(LEEWAY_SECS) < nbf)
    {
        return Err(AuthError::NotYetValid);
    }
    Ok(Identity {
        key: claims.sub,
        rooms: claims.rooms,
        meta: claims.meta.unwrap_or_default(),
        expires_at: claims.exp,
    })
}

/// Now, in unix seconds (0 if the clock is before 1970).
pub fn unix_now() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

/// How long from now until the unix time `at` (seconds), at sub-second precision; zero if it
/// has passed.
pub fn time_until_unix(at: u64) -> std::time::Duration {
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap_or_default();
    std::time::Duration::from_secs(at).saturating_sub(now)
}

/// Decides who a connect request is. Open mode (`verifier` is `None`) accepts everyone and
/// ignores any token; otherwise `token` (raw bytes as presented) must verify at `now`.
pub fn authenticate(
    verifier: Option<&Verifier>,
    token: Option<&[u8]>,
    now: u64,
) -> Result<Option<Identity>, AuthError> {
    let Some(verifier) = verifier else {
        return Ok(None);
    };
    let token = token.ok_or(AuthError::Missing)?;
    let token = std::str::from_utf8(token)
        .map_err(|_| AuthError::Malformed("token is not UTF-8".into()))?;
    verifier.verify(token.trim(), now).map(Some)
}

/// Mints an HS256 token (for `rollcall token`, development and tests).
pub fn mint(secret: &str, claims: &Claims) -> Result<String, jsonwebtoken::errors::Error> {
    encode(
        &Header::new(Algorithm::HS256),
        claims,
        &EncodingKey::from_secret(secret.as_bytes()),
    )
}

/// Parses a duration such as `90`, `90s`, `15m`, `1h` or `7d` into seconds.
pub fn parse_ttl(text: &str) -> Result<u64, String> {
    let text = text.trim();
    let split = text
        .find(|c: char| !c.is_ascii_digit())
        .unwrap_or(text.len());
    let (digits, unit) = text.split_at(split);
    let n: u64 = digits
        .parse()
        .map_err(|_| format!("invalid duration {text:?}: expected e.g. 90s, 15m, 1h, 7d"))?;
    let mult = match unit {
        "" | "s" => 1,
        "m" => 60,
        "h" => 3600,
        "d" => 86_400,
        _ => return Err(format!("invalid duration unit {unit:?}: use s, m, h or d")),
    };
    n.checked_mul(mult)
        .ok_or_else(|| format!("duration {text:?} is too long"))
}

#[cfg(test)]
mod tests {
    use super::*;
    use base64::Engine;

    const NOW: u64 = 1_800_000_000;

    fn claims(sub: &str) -> Claims {
        Claims {
            sub: sub.into(),
            exp: Some(NOW + 3600),
            ..Claims::default()
        }
    }

    fn verifier(secrets: &[&str]) -> Verifier {
        Verifier::new(secrets).expect("a secret is configured")
    }

    #[test]
    fn a_valid_token_gives_its_sub_as_the_key() {
        let token = mint("s3cret", &claims("alice")).expect("mint");
        let id = verifier(&["s3cret"]).verify(&token, NOW).expect("valid");
        assert_eq!(id.key, "alice");
        assert!(id.may_join("room:anything"));
    }

    #[test]
    fn no_secret_means_open_mode() {
        assert!(Verifier::new::<&str>(&[]).is_none());
        assert!(Verifier::new(&[""]).is_none());
    }

    #[test]
    fn a_token_signed_with_another_secret_is_refused() {
        let token = mint("other", &claims("alice")).expect("mint");
        assert_eq!(
            verifier(&["s3cret"]).verify(&token, NOW),
            Err(AuthError::BadSignature)
        );
    }

    #[test]
    fn any_of_several_secrets_verifies_during_rotation() {
        let old = mint("old", &claims("alice")).expect("mint");
        let new = mint("new", &claims("bob")).expect("mint");
        let v = verifier(&["new", "old"]);
        assert_eq!(v.verify(&old, NOW).map(|i| i.key), Ok("alice".into()));
        assert_eq!(v.verify(&new, NOW).map(|i| i.key), Ok("bob".into()));
    }

    #[test]
    fn a_tampered_payload_is_refused() {
        let token = mint("s3cret", &claims("alice")).expect("mint");
        let mut parts: Vec<String> = token.split('.').map(String::from).collect();
        let b64 = base64::engine::general_purpose::URL_SAFE_NO_PAD;
        let forged = serde_json::json!({"sub": "mallory", "exp": NOW + 3600});
        parts[1] = b64.encode(forged.to_string());
        let forged = parts.join(".");
        assert_eq!(
            verifier(&["s3cret"]).verify(&forged, NOW),
            Err(AuthError::BadSignature)
        );
    }

    #[test]
    fn an_unsigned_alg_none_token_is_refused() {
        let b64 = base64::engine::general_purpose::URL_SAFE_NO_PAD;
        let header = b64.encode(r#"{"alg":"none","typ":"JWT"}"#);
        let body = b64.encode(format!(r#"{{"sub":"mallory","exp":{}}}"#, NOW + 60));
        let token = format!("{header}.{body}.");
        let err = verifier(&["s3cret"]).verify(&token, NOW).unwrap_err();
        assert!(
            matches!(err, AuthError::WrongAlgorithm | AuthError::Malformed(_)),
            "{err:?}"
        );
    }

    #[test]
    fn an_expired_token_is_refused() {
        let mut c = claims("alice");
        c.exp = Some(NOW - LEEWAY_SECS - 1);
        let token = mint("s3cret", &c).expect("mint");
        assert_eq!(
            verifier(&["s3cret"]).verify(&token, NOW),
            Err(AuthError::Expired)
        );
    }

    #[test]
    fn a_token_is_refused_from_the_instant_open_connections_end() {
        let mut c = claims("alice");
        c.exp = Some(NOW - LEEWAY_SECS);
        let token = mint("s3cret", &c).expect("mint");
        let v = verifier(&["s3cret"]);
        assert_eq!(v.verify(&token, NOW), Err(AuthError::Expired));
        let id = v.verify(&token, NOW - 1).expect("valid one second before");
        assert_eq!(id.valid_until(), Some(NOW));
    }

    #[test]
    fn a_token_used_before_nbf_is_refused() {
        let mut c = claims("alice");
        c.nbf = Some(NOW + 600);
        let token = mint("s3cret", &c).expect("mint");
        assert_eq!(
            verifier(&["s3cret"]).verify(&token, NOW),
            Err(AuthError::NotYetValid)
        );
    }

    #[test]
    fn a_token_without_sub_is_refused() {
        let token = mint("s3cret", &claims("")).expect("mint");
        assert_eq!(
            verifier(&["s3cret"]).verify(&token, NOW),
            Err(AuthError::MissingSubject)
        );
    }

    #[test]
    fn garbage_is_malformed_not_a_panic() {
        for junk in ["", "abc", "a.b.c", "....", "eyJ.eyJ.sig", "\u{1F600}.x.y"] {
            let err = verifier(&["s3cret"]).verify(junk, NOW).unwrap_err();
            assert!(!err.to_string().is_empty());
        }
    }

    #[test]
    fn malformed_reasons_are_short_even_for_huge_junk() {
        let b64 = base64::engine::general_purpose::URL_SAFE_NO_PAD;
        let header = b64.encode(format!(r#"{{"alg":"{}"}}"#, "é".repeat(5000)));
        let err = verifier(&["s3cret"])
            .verify(&format!("{header}.e30.sig"), NOW)
            .unwrap_err();
        assert!(err.to_string().len() < 130, "{err}");
    }

    #[test]
    fn rooms_restrict_which_topics_may_be_joined() {
        let mut c = claims("alice");
        c.rooms = Some(vec!["room:team-*".into(), "room:lobby".into()]);
        let token = mint("s3cret", &c).expect("mint");
        let id = verifier(&["s3cret"]).verify(&token, NOW).expect("valid");
        assert!(id.may_join("room:lobby"));
        assert!(id.may_join("room:team-blue"));
        assert!(!id.may_join("room:lobby2"));
        assert!(!id.may_join("room:secret"));
    }

    #[test]
    fn trusted_meta_overrides_what_the_client_sends() {
        let mut c = claims("alice");
        c.meta = Some(
            serde_json::json!({"name": "Alice", "role": "admin"})
                .as_object()
                .cloned()
                .unwrap_or_default(),
        );
        let token = mint("s3cret", &c).expect("mint");
        let id = verifier(&["s3cret"]).verify(&token, NOW).expect("valid");
        let mut meta = serde_json::json!({"name": "Mallory", "status": "away"})
            .as_object()
            .cloned()
            .unwrap_or_default();
        id.apply_trusted_meta(&mut meta);
        assert_eq!(meta["name"], "Alice");
        assert_eq!(meta["role"], "admin");
        assert_eq!(meta["status"], "away");
    }

    #[test]
    fn open_mode_ignores_tokens_and_secret_mode_requires_one() {
        assert_eq!(authenticate(None, Some(b"junk"), NOW), Ok(None));
        let v = verifier(&["s3cret"]);
        assert_eq!(authenticate(Some(&v), None, NOW), Err(AuthError::Missing));
        assert!(matches!(
            authenticate(Some(&v), Some(&[0xff, 0xfe]), NOW),
            Err(AuthError::Malformed(_))
        ));
        let token = mint("s3cret", &claims("alice")).expect("mint");
        let id = authenticate(Some(&v), Some(token.as_bytes()), NOW).expect("valid");
        assert_eq!(id.map(|i| i.key), Some("alice".into()));
    }

    #[test]
    fn ttl_parses_units() {
        assert_eq!(parse_ttl("90"), Ok(90));
        assert_eq!(parse_ttl("15m"), Ok(900));
        assert_eq!(parse_ttl("1h"), Ok(3600));
        assert_eq!(parse_ttl("7d"), Ok(604_800));
        assert!(parse_ttl("1y").is_err());
        assert!(parse_ttl("h").is_err());
    }
}
