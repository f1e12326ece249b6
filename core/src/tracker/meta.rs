//! The values a presence carries: its metadata ([`Meta`]), its version reference ([`PhxRef`]) and
//! the [`Presence`] handed to readers and diffs.
//!
//! Metas stay raw JSON object text inside the tracker: the CRDT never looks inside them, cloning
//! one is a reference-count bump, and they survive the binary codec (postcard cannot carry a
//! `serde_json::Value`).

use std::fmt;
use std::sync::Arc;

use serde::{Deserialize, Deserializer, Serialize, Serializer};

/// A presence's metadata: the text of one JSON object, validated once on entry.
///
/// The tracker adds `phx_ref` / `phx_ref_prev` only when a presence is rendered
/// ([`Presence::meta_with_refs`]); the stored text is exactly what the caller gave.
#[derive(Clone, PartialEq, Eq, Hash)]
pub struct Meta(Arc<str>);

/// Why a text is not acceptable as a [`Meta`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum MetaError {
    /// The text is not a JSON object (Phoenix metas are maps).
    NotAnObject,
    /// The text is not valid JSON; the message says where.
    InvalidJson(String),
}

impl fmt::Display for MetaError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            MetaError::NotAnObject => write!(f, "a presence meta must be a JSON object"),
            MetaError::InvalidJson(e) => write!(f, "a presence meta must be valid JSON: {e}"),
        }
    }
}

impl std::error::Error for MetaError {}

impl Meta {
    /// Accepts `json` if it is one JSON object (surrounding whitespace allowed).
    pub fn new(json: &str) -> Result<Meta, MetaError> {
        if !json.trim_start().starts_with('{') {
            return Err(MetaError::NotAnObject);
        }
        serde_json::from_str::<serde::de::IgnoredAny>(json)
            .map_err(|e| MetaError::InvalidJson(e.to_string()))?;
        Ok(Meta(Arc::from(json)))
    }

    /// The empty object `{}`.
    pub fn empty() -> Meta {
        Meta(Arc::from("{}"))
    }

    /// Serializes a JSON object map into a meta.
    pub fn from_map(map: &serde_json::Map<String, serde_json::Value>) -> Meta {
        // Serializing a map of `Value`s cannot fail (all keys are strings).
        let text = serde_json::to_string(map).unwrap_or_else(|_| String::from("{}"));
        Meta(Arc::from(text))
    }

    /// The JSON object text.
    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// Parses the text into a JSON map (for callers that want to inspect it).
    pub fn to_map(&self) -> serde_json::Map<String, serde_json::Value> {
        serde_json::from_str(&self.0).unwrap_or_default()
    }
}

impl fmt::Debug for Meta {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Meta({})", self.0)
    }
}

impl TryFrom<&str> for Meta {
    type Error = MetaError;
    fn try_from(json: &str) -> Result<Meta, MetaError> {
        Meta::new(json)
    }
}

impl Serialize for Meta {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&self.0)
    }
}

impl<'de> Deserialize<'de> for Meta {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Meta, D::Error> {
        let text = <std::borrow::Cow<'de, str>>::deserialize(d)?;
        Meta::new(&text).map_err(serde::de::Error::custom)
    }
}

/// The reference of one presence version, unique across the cluster and across restarts.
///
/// It is derived from the owning replica (a 64-bit hash of node name and incarnation) and the dot
/// counter that created the element, so no randomness is needed and every node renders the same
/// string for the same element. Rendered ([`fmt::Display`]) as 22 characters of URL-safe base64
/// without padding; clients treat it as opaque.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Debug)]
pub struct PhxRef {
    pub(crate) replica_hash: u64,
    pub(crate) counter: u64,
}

impl PhxRef {
    /// The 16 bytes behind the reference.
    pub fn to_bytes(self) -> [u8; 16] {
        let mut out = [0u8; 16];
        out[..8].copy_from_slice(&self.replica_hash.to_be_bytes());
        out[8..].copy_from_slice(&self.counter.to_be_bytes());
        out
    }

    /// Appends the reference's text (the same 22 characters as its [`fmt::Display`]) to `out`,
    /// without an intermediate `String`: for renderers that write many references into one
    /// buffer.
    pub fn push_to(self, out: &mut String) {
        push_base64_url(&self.to_bytes(), out);
    }
}

impl fmt::Display for PhxRef {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&base64_url(&self.to_bytes()))
    }
}

impl Serialize for PhxRef {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

const B64: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_";

fn base64_url(bytes: &[u8]) -> String {
    let mut out = String::with_capacity(bytes.len().div_ceil(3) * 4);
    push_base64_url(bytes, &mut out);
    out
}

fn push_base64_url(bytes: &[u8], out: &mut String) {
    for chunk in bytes.chunks(3) {
        let b = [
            chunk.first().copied().unwrap_or(0),
            chunk.get(1).copied().unwrap_or(0),
            chunk.get(2).copied().unwrap_or(0),
        ];
        let n = (u32::from(b[0]) << 16) | (u32::from(b[1]) << 8) | u32::from(b[2]);
        let sextets = [(n >> 18) & 63, (n >> 12) & 63, (n >> 6) & 63, n & 63];
        for s in sextets.iter().take(chunk.len() + 1) {
            out.push(char::from(B64[*s as usize]));
        }
    }
}

/// One presence as readers and diffs see it: the caller's meta plus its references.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Presence {
    /// The meta given to `track` / `update`, untouched.
    pub meta_json: Meta,
    /// This version's reference.
    pub phx_ref: PhxRef,
    /// After an `update`: the reference of the version it replaced.
    pub phx_ref_prev: Option<PhxRef>,
}

impl Presence {
    /// The meta object with `phx_ref` (and `phx_ref_prev` after an update) added, as Phoenix sends
    /// it to clients. Keys of the same name in the caller's meta are shadowed by ours (JSON
    /// parsers keep the last duplicate).
    pub fn meta_with_refs(&self) -> String {
        let mut out = String::with_capacity(self.meta_json.as_str().len() + 64);
        self.push_meta_with_refs(&mut out);
        out
    }

    /// Appends [`Presence::meta_with_refs`] to `out` without an intermediate `String`: for
    /// renderers that write many presences into one buffer.
    pub fn push_meta_with_refs(&self, out: &mut String) {
        let text = self.meta_json.as_str().trim_end();
        let body = text.strip_suffix('}').unwrap_or(text).trim_end();
        let has_fields = !body.trim_start().ends_with('{');
        out.push_str(body);
        if has_fields {
            out.push(',');
        }
        out.push_str("\"phx_ref\":\"");
        self.phx_ref.push_to(out);
        out.push('"');
        if let Some(prev) = self.phx_ref_prev {
            out.push_str(",\"phx_ref_prev\":\"");
            prev.push_to(out);
            out.push('"');
        }
        out.push('}');
    }
}

/// 64-bit identity hash of a replica (FNV-1a over the node name, mixed with the incarnation by a
/// splitmix64 finalizer). Only feeds [`PhxRef`]s and presence ordering, never equality of replicas.
pub(crate) fn replica_hash(node: &str, incarnation: u64) -> u64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in node.as_bytes() {
        h ^= u64::from(*b);
        h = h.wrapping_mul(0x0000_0100_0000_01b3);
    }
    mix64(h ^ mix64(incarnation.wrapping_add(0x9e37_79b9_7f4a_7c15)))
}

/// The splitmix64 finalizer.
pub(crate) fn mix64(mut z: u64) -> u64 {
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 31)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn meta_rejects_non_objects_and_bad_json() {
        assert_eq!(Meta::new("[1]"), Err(MetaError::NotAnObject));
        assert!(matches!(
            Meta::new("{\"a\":"),
            Err(MetaError::InvalidJson(_))
        ));
        assert!(Meta::new(" {\"a\":1} ").is_ok());
    }

    #[test]
    fn phx_ref_renders_as_22_url_safe_characters() {
        let r = PhxRef {
            replica_hash: u64::MAX,
            counter: 1,
        };
        let s = r.to_string();
        assert_eq!(s.len(), 22);
        assert!(s
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_'));
        assert_eq!(base64_url(b"foob"), "Zm9vYg");
    }

    #[test]
    fn push_to_appends_the_displayed_reference() {
        let r = PhxRef {
            replica_hash: 0x0123_4567_89ab_cdef,
            counter: u64::MAX - 7,
        };
        let mut out = String::from("x");
        r.push_to(&mut out);
        assert_eq!(out, format!("x{r}"));
    }

    #[test]
    fn meta_with_refs_appends_refs() {
        let p = Presence {
            meta_json: Meta::new("{\"a\":1}").unwrap(),
            phx_ref: PhxRef {
                replica_hash: 1,
                counter: 2,
            },
            phx_ref_prev: Some(PhxRef {
                replica_hash: 1,
                counter: 1,
            }),
        };
        let v: serde_json::Value = serde_json::from_str(&p.meta_with_refs()).unwrap();
        assert_eq!(v["a"], 1);
        assert_eq!(v["phx_ref"], p.phx_ref.to_string());
        assert_eq!(v["phx_ref_prev"], p.phx_ref_prev.unwrap().to_string());
        let empty = Presence {
            meta_json: Meta::empty(),
            phx_ref_prev: None,
            ..p
        };
        let v: serde_json::Value = serde_json::from_str(&empty.meta_with_refs()).unwrap();
        assert_eq!(v.as_object().unwrap().len(), 1);
    }
}
