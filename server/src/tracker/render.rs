//! Presences rendered as clients receive them, written straight to JSON text.
//!
//! A `presence_state` is `{key: {"metas": [meta, ...]}, ...}` where each meta is the stored meta
//! object with `phx_ref` (and `phx_ref_prev`) added; a `presence_diff` is
//! `{"joins": <the same shape>, "leaves": <the same shape>}`. The join is the one command whose
//! cost grows with the room, and it runs in the single tracker task, so this is on the path
//! that sets how fast a big room fills. A stored meta whose text is already exactly what
//! `serde_json` would write for it (the usual case: the server stores metas with
//! `serde_json::to_string`) is copied as it is; any other meta (floats, whitespace, other
//! escapes, duplicate keys, its own `phx_ref`, deep nesting) is parsed and encoded with
//! `serde_json`. The bytes clients receive are the same either way, and the same as encoding
//! [`presences_value`].

use std::sync::Arc;

use rollcall_core::tracker::{Presence, TopicDiff};
use serde_json::{Map, Value};

/// Presences as the shard lists them (and as a diff carries them): `(key, presence)`, by key
/// then `phx_ref`.
pub type Listing = Vec<(Arc<str>, Presence)>;

/// Deeper metas are rendered through `serde_json`, which has a nesting limit of its own (128)
/// that a stored meta may exceed.
const MAX_FAST_DEPTH: usize = 64;

/// The meta as clients see it, as a map: the stored fields with `phx_ref` (and `phx_ref_prev`)
/// inserted, a field of that name in the meta replaced in place. Both are the tracker's: a
/// stored `phx_ref_prev` (which this node never stores, but an older peer might) is removed
/// when the presence has no previous version.
pub(crate) fn meta_map(p: &Presence) -> Map<String, Value> {
    let mut map = p.meta_json.to_map();
    map.insert("phx_ref".into(), Value::String(p.phx_ref.to_string()));
    match p.phx_ref_prev {
        Some(prev) => {
            map.insert("phx_ref_prev".into(), Value::String(prev.to_string()));
        }
        None => {
            map.shift_remove("phx_ref_prev");
        }
    }
    map
}

/// The presences of `listing` grouped by key (`{key: {"metas": [...]}}`): keys in order of first
/// appearance, each with its metas in listing order.
pub(crate) fn presences_value(listing: &[(Arc<str>, Presence)]) -> Value {
    let mut out = Map::new();
    for (key, p) in listing {
        let slot = out
            .entry(key.to_string())
            .or_insert_with(|| serde_json::json!({"metas": []}));
        if let Some(Value::Array(metas)) = slot.get_mut("metas") {
            metas.push(Value::Object(meta_map(p)));
        }
    }
    Value::Object(out)
}

/// [`presences_value`] of `listing` as JSON text, byte for byte what encoding it gives.
pub(crate) fn presences_json(listing: &[(Arc<str>, Presence)]) -> String {
    // Grouping by streaming needs each key's presences side by side, which the shard's order
    // (by key) gives; anything else takes the general path.
    let sorted = listing.windows(2).all(|w| match (w.first(), w.get(1)) {
        (Some((a, _)), Some((b, _))) => a <= b,
        _ => true,
    });
    if !sorted {
        return presences_value(listing).to_string();
    }
    let bytes: usize = listing
        .iter()
        .map(|(k, p)| k.len() + p.meta_json.as_str().len() + 64)
        .sum();
    let mut out = String::with_capacity(bytes + 2);
    let mut keys = Vec::new();
    out.push('{');
    let mut previous: Option<&str> = None;
    for (key, p) in listing {
        if previous == Some(&**key) {
            out.push(',');
        } else {
            if previous.is_some() {
                out.push_str("]},");
            }
            push_json_str(&mut out, key);
            out.push_str(":{\"metas\":[");
            previous = Some(key);
        }
        push_meta(&mut out, p, &mut keys);
    }
    if previous.is_some() {
        out.push_str("]}");
    }
    out.push('}');
    out
}

/// The `presence_diff` payload of one topic's changes as JSON text.
pub(crate) fn diff_json(diff: &TopicDiff) -> String {
    format!(
        "{{\"joins\":{},\"leaves\":{}}}",
        presences_json(&diff.joins),
        presences_json(&diff.leaves)
    )
}

/// Appends the meta of `p` as clients see it. `keys` is scratch space for the check. A
/// canonical meta's text with its refs appended ([`Presence::push_meta_with_refs`]) is what
/// `serde_json` writes for it; any other goes through `serde_json`.
fn push_meta(out: &mut String, p: &Presence, keys: &mut Vec<(usize, usize)>) {
    if is_canonical(p.meta_json.as_str(), keys) {
        p.push_meta_with_refs(out);
    } else {
        out.push_str(&Value::Object(meta_map(p)).to_string());
    }
}

/// Appends `s` as a JSON string, escaped as `serde_json` escapes: `\"`, `\\`, the short forms
/// `\b \f \n \r \t`, `\u00xx` (lower-case hex) for the other control characters, and every
/// other character as it is.
pub(crate) fn push_json_str(out: &mut String, s: &str) {
    out.push('"');
    let mut start = 0;
    for (i, b) in s.bytes().enumerate() {
        let short = match b {
            b'"' => "\\\"",
            b'\\' => "\\\\",
            0x08 => "\\b",
            0x0c => "\\f",
            b'\n' => "\\n",
            b'\r' => "\\r",
            b'\t' => "\\t",
            0x00..=0x1f => "",
            _ => continue,
        };
        // `i` is at an ASCII byte, so both slices end on character boundaries.
        out.push_str(s.get(start..i).unwrap_or_default());
        if short.is_empty() {
            const HEX: &[u8; 16] = b"0123456789abcdef";
            out.push_str("\\u00");
            out.push(char::from(HEX[usize::from(b >> 4)]));
            out.push(char::from(HEX[usize::from(b & 0xf)]));
        } else {
            out.push_str(short);
        }
        start = i + 1;
    }
    out.push_str(s.get(start..).unwrap_or_default());
    out.push('"');
}

/// True when `text` is exactly what `serde_json` writes for the map it parses to, and adding
/// `phx_ref` / `phx_ref_prev` to that map appends them: one object, no whitespace, strings
/// escaped as [`push_json_str`] escapes, only integers that parse back as integers (no `-0`),
/// no duplicate key in any object, no top-level `phx_ref` or `phx_ref_prev`, and at most
/// [`MAX_FAST_DEPTH`] levels. Anything else is `false`, never an error.
fn is_canonical(text: &str, keys: &mut Vec<(usize, usize)>) -> bool {
    keys.clear();
    let mut scan = Scan {
        b: text.as_bytes(),
        i: 0,
        keys,
    };
    scan.object(1, true) && scan.i == scan.b.len()
}

struct Scan<'a, 'k> {
    b: &'a [u8],
    i: usize,
    /// Byte ranges of the keys of the objects being scanned, innermost last.
    keys: &'k mut Vec<(usize, usize)>,
}

impl Scan<'_, '_> {
    fn peek(&self) -> Option<u8> {
        self.b.get(self.i).copied()
    }

    fn eat(&mut self, c: u8) -> bool {
        if self.peek() == Some(c) {
            self.i += 1;
            true
        } else {
            false
        }
    }

    fn value(&mut self, depth: usize) -> bool {
        match self.peek() {
            Some(b'{') => self.object(depth + 1, false),
            Some(b'[') => self.array(depth + 1),
            Some(b'"') => self.string().is_some(),
            Some(b't') => self.literal(b"true"),
            Some(b'f') => self.literal(b"false"),
            Some(b'n') => self.literal(b"null"),
            Some(b'-' | b'0'..=b'9') => self.integer(),
            _ => false,
        }
    }

    fn literal(&mut self, word: &[u8]) -> bool {
        if self.b.get(self.i..self.i + word.len()) == Some(word) {
            self.i += word.len();
            true
        } else {
            false
        }
    }

    fn object(&mut self, depth: usize, top: bool) -> bool {
        if depth > MAX_FAST_DEPTH || !self.eat(b'{') {
            return false;
        }
        if self.eat(b'}') {
            return true;
        }
        let mark = self.keys.len();
        loop {
            let Some((start, end)) = self.string() else {
                return false;
            };
            let key = self.b.get(start..end).unwrap_or_default();
            if top && (key == b"phx_ref" || key == b"phx_ref_prev") {
                return false;
            }
            self.keys.push((start, end));
            if !self.eat(b':') || !self.value(depth) {
                return false;
            }
            if self.eat(b'}') {
                break;
            }
            if !self.eat(b',') {
                return false;
            }
        }
        let unique = self.keys_unique(mark);
        self.keys.truncate(mark);
        unique
    }

    /// No two keys of the object whose keys start at `mark` are the same. Canonical escaping
    /// writes each string one way only, so comparing the raw text is comparing the keys.
    fn keys_unique(&self, mark: usize) -> bool {
        let b = self.b;
        let text = |&(s, e): &(usize, usize)| b.get(s..e).unwrap_or_default();
        let keys = self.keys.get(mark..).unwrap_or_default();
        if keys.len() <= 16 {
            keys.iter()
                .enumerate()
                .all(|(n, k)| keys.iter().skip(n + 1).all(|o| text(k) != text(o)))
        } else {
            let mut sorted: Vec<&[u8]> = keys.iter().map(text).collect();
            sorted.sort_unstable();
            sorted.windows(2).all(|w| w.first() != w.get(1))
        }
    }

    fn array(&mut self, depth: usize) -> bool {
        if depth > MAX_FAST_DEPTH || !self.eat(b'[') {
            return false;
        }
        if self.eat(b']') {
            return true;
        }
        loop {
            if !self.value(depth) {
                return false;
            }
            if self.eat(b']') {
                return true;
            }
            if !self.eat(b',') {
                return false;
            }
        }
    }

    /// A string escaped as `serde_json` escapes; the byte range of its contents.
    fn string(&mut self) -> Option<(usize, usize)> {
        if !self.eat(b'"') {
            return None;
        }
        let start = self.i;
        loop {
            match self.peek()? {
                b'"' => {
                    let end = self.i;
                    self.i += 1;
                    return Some((start, end));
                }
                b'\\' => {
                    let step = match self.b.get(self.i + 1)? {
                        b'"' | b'\\' | b'b' | b'f' | b'n' | b'r' | b't' => 2,
                        b'u' => {
                            let hex = self.b.get(self.i + 2..self.i + 6)?;
                            let ok = match hex {
                                [b'0', b'0', b'0', d] => {
                                    matches!(d, b'0'..=b'7' | b'b' | b'e' | b'f')
                                }
                                [b'0', b'0', b'1', d] => matches!(d, b'0'..=b'9' | b'a'..=b'f'),
                                _ => false,
                            };
                            if !ok {
                                return None;
                            }
                            6
                        }
                        _ => return None,
                    };
                    self.i += step;
                }
                0x00..=0x1f => return None,
                _ => self.i += 1,
            }
        }
    }

    /// An integer `serde_json` keeps as an integer and writes back the same: no fraction or
    /// exponent, no leading zero, not `-0`, within `i64::MIN..=u64::MAX`.
    fn integer(&mut self) -> bool {
        let negative = self.eat(b'-');
        let start = self.i;
        while matches!(self.peek(), Some(b'0'..=b'9')) {
            self.i += 1;
        }
        let digits = self.b.get(start..self.i).unwrap_or_default();
        if digits.is_empty() || matches!(self.peek(), Some(b'.' | b'e' | b'E')) {
            return false;
        }
        if digits.len() > 1 && digits.first() == Some(&b'0') {
            return false;
        }
        let mut magnitude: u64 = 0;
        for d in digits {
            let Some(m) = magnitude
                .checked_mul(10)
                .and_then(|m| m.checked_add(u64::from(d - b'0')))
            else {
                return false;
            };
            magnitude = m;
        }
        !negative || (1..=1u64 << 63).contains(&magnitude)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::frame::{TextBytes, WireFrame};
    use rollcall_core::protocol::{Outbound, Payload, Serializer};
    use rollcall_core::tracker::{Meta, ReplicaId, Shard, ShardConfig};

    /// The plain path: parse each meta, add its refs, group into one `Value`, encode the push
    /// with the serializer.
    fn reference_frame(
        serializer: Serializer,
        join_ref: Option<&str>,
        topic: &str,
        listing: &Listing,
    ) -> WireFrame {
        let push = Outbound::Push {
            join_ref: join_ref.map(str::to_string),
            topic: topic.to_string(),
            event: "presence_state".to_string(),
            payload: Payload::Json(reference_value(listing)),
        };
        WireFrame::encode(serializer, &push).unwrap()
    }

    fn reference_value(listing: &Listing) -> Value {
        let mut grouped = Map::new();
        for (key, p) in listing {
            // A meta `serde_json` cannot read back (nested past its limit) renders as `{}`.
            let mut meta = p.meta_json.to_map();
            meta.insert("phx_ref".into(), Value::String(p.phx_ref.to_string()));
            meta.shift_remove("phx_ref_prev");
            if let Some(prev) = p.phx_ref_prev {
                meta.insert("phx_ref_prev".into(), Value::String(prev.to_string()));
            }
            let slot = grouped
                .entry(key.to_string())
                .or_insert_with(|| serde_json::json!({"metas": []}));
            if let Some(Value::Array(metas)) = slot.get_mut("metas") {
                metas.push(Value::Object(meta));
            }
        }
        Value::Object(grouped)
    }

    fn assert_same_bytes(listing: &Listing) {
        let payload = presences_json(listing);
        assert_eq!(payload, reference_value(listing).to_string());
        assert_eq!(presences_value(listing), reference_value(listing));
        for serializer in [Serializer::V1Json, Serializer::V2] {
            for join_ref in [None, Some("3"), Some("a\"b\\c\u{1}é")] {
                for topic in ["room:lobby", "room:\"quoted\"\n\u{7f}\u{2028}ü"] {
                    let new = WireFrame::Text(
                        serializer
                            .encode_push_json(join_ref, topic, "presence_state", &payload)
                            .into(),
                    );
                    let old = reference_frame(serializer, join_ref, topic, listing);
                    assert_eq!(new, old, "{serializer:?} {join_ref:?} {topic:?}");
                    // The joiner's frame in pieces around the shared payload: the same bytes.
                    let shared = TextBytes::from(payload.clone());
                    let parts = WireFrame::push_json(
                        serializer,
                        join_ref,
                        topic,
                        "presence_state",
                        &shared,
                    );
                    assert!(matches!(parts, WireFrame::Parts(_)));
                    assert_eq!(parts.len(), old.len());
                    assert_eq!(
                        parts.to_frame(),
                        old.to_frame(),
                        "{serializer:?} {join_ref:?} {topic:?}"
                    );
                }
            }
        }
    }

    fn shard() -> Shard {
        Shard::new(ReplicaId::new("a", 1), ShardConfig::default(), 0).unwrap()
    }

    /// Tracks each `(key, meta text)` on its own connection, in order.
    fn room(metas: &[(&str, &str)]) -> Shard {
        let mut s = shard();
        for (n, (key, text)) in metas.iter().enumerate() {
            let meta = Meta::new(text).unwrap_or_else(|e| panic!("{text}: {e}"));
            s.track(n as u64, "t", key, meta).unwrap();
        }
        s
    }

    #[test]
    fn an_empty_room_renders_as_the_empty_object() {
        assert_eq!(presences_json(&Vec::new()), "{}");
        assert_same_bytes(&Vec::new());
    }

    #[test]
    fn metas_the_server_stores_are_rendered_as_serde_json_renders_them() {
        let deep = format!("{}1{}", "{\"a\":".repeat(63), "}".repeat(63));
        let metas = [
            ("alice", r#"{}"#),
            (
                "alice",
                r#"{"name":"Alice","online_at":1764300000,"node":"a"}"#,
            ),
            (
                "bob",
                r#"{"a":{"b":[1,{"c":null}],"d":true,"e":false},"z":[]}"#,
            ),
            ("zoë", "{\"name\":\"Zoë 🚀 \u{2028}\u{7f}\",\"k\":{}}"),
            (
                "esc\"ape\\\u{1}\n",
                r#"{"s":"q\"b\\n\n\t\r\b\f\u0001\u001f\u000b"}"#,
            ),
            (
                "ints",
                r#"{"max":18446744073709551615,"min":-9223372036854775808,"z":0,"m":-1}"#,
            ),
            ("10", r#"{"10":1,"2":2,"1":3,"":4}"#),
            ("2", r#"{"nested":{"phx_ref":"theirs"}}"#),
            ("deep", deep.as_str()),
        ];
        let s = room(&metas);
        let listing = s.list("t");
        assert_eq!(listing.len(), metas.len());
        assert_same_bytes(&listing);
        // These are all canonical: the fast path took them.
        let mut keys = Vec::new();
        for (_, p) in &listing {
            assert!(is_canonical(p.meta_json.as_str(), &mut keys), "{:?}", p);
        }
    }

    #[test]
    fn other_metas_take_the_serde_json_path_with_the_same_bytes() {
        let deep = format!("{}1{}", "{\"a\":".repeat(70), "}".repeat(70));
        let too_deep = format!("{}1{}", "[".repeat(200), "]".repeat(200));
        let too_deep = format!("{{\"a\":{too_deep}}}");
        let metas = [
            (
                "f",
                r#"{"f":0.30000000000000004,"g":1e3,"h":-0.0,"i":1.5,"j":1E-7}"#,
            ),
            (
                "f",
                r#"{"x":123456789012345678901234,"y":-9223372036854775809}"#,
            ),
            ("f", r#"{"neg_zero":-0}"#),
            ("ws", r#" { "a" : 1 , "b":[ 1, 2 ] } "#),
            ("ws", "{\"a\":1}\n"),
            (
                "esc",
                r#"{"slash":"a\/b","e":"\u00e9","emoji":"\ud83d\ude00","up":"\u001F"}"#,
            ),
            ("esc", r#"{"bs":"\u0008","nl":"\u000a","\u0061":1}"#),
            ("dup", r#"{"a":1,"b":2,"a":3}"#),
            ("dup", r#"{"o":{"x":1,"x":2}}"#),
            ("ref", r#"{"phx_ref":"mine","x":1}"#),
            ("ref", r#"{"x":1,"phx_ref_prev":"old"}"#),
            ("deep", deep.as_str()),
            ("deep", too_deep.as_str()),
        ];
        let s = room(&metas);
        let listing = s.list("t");
        let mut keys = Vec::new();
        for (_, p) in &listing {
            assert!(!is_canonical(p.meta_json.as_str(), &mut keys), "{:?}", p);
        }
        assert_same_bytes(&listing);
    }

    #[test]
    fn updated_metas_carry_phx_ref_prev_in_the_same_place() {
        let mut s = room(&[("u", r#"{"v":1}"#), ("u", r#"{}"#), ("w", r#"{"v":1.5}"#)]);
        s.update(0, "t", "u", Meta::new(r#"{"v":2}"#).unwrap())
            .unwrap();
        s.update(1, "t", "u", Meta::new(r#"{}"#).unwrap()).unwrap();
        s.update(2, "t", "w", Meta::new(r#"{"v":2.5}"#).unwrap())
            .unwrap();
        let listing = s.list("t");
        assert!(listing.iter().all(|(_, p)| p.phx_ref_prev.is_some()));
        assert_same_bytes(&listing);
    }

    #[test]
    fn many_keys_in_one_object_are_checked_for_duplicates() {
        let fields: Vec<String> = (0..40).map(|n| format!("\"k{n}\":{n}")).collect();
        let unique = format!("{{{}}}", fields.join(","));
        let dup = format!("{{{},\"k7\":0}}", fields.join(","));
        let mut keys = Vec::new();
        assert!(is_canonical(&unique, &mut keys));
        assert!(!is_canonical(&dup, &mut keys));
        assert_same_bytes(&room(&[("a", unique.as_str()), ("b", dup.as_str())]).list("t"));
    }

    #[test]
    fn strings_are_escaped_as_serde_json_escapes_them() {
        let mut all = String::new();
        for c in (0u32..0x300).chain([0x2028, 0x2029, 0xfeff, 0x1f600]) {
            all.extend(char::from_u32(c));
        }
        let mut out = String::new();
        push_json_str(&mut out, &all);
        assert_eq!(out, serde_json::to_string(&all).unwrap());
        // And what serde_json writes for a string is canonical.
        let meta = serde_json::json!({ "s": all, &all: 1 }).to_string();
        assert!(is_canonical(&meta, &mut Vec::new()));
    }

    /// A small deterministic generator: random metas as the server stores them (maps encoded
    /// with serde_json, floats included), several per key, some keys repeated.
    #[test]
    fn generated_rooms_render_the_same_bytes() {
        let mut seed: u64 = 0x2545_f491_4f6c_dd1d;
        let mut next = move |n: u64| {
            seed ^= seed << 13;
            seed ^= seed >> 7;
            seed ^= seed << 17;
            seed % n
        };
        fn value(next: &mut dyn FnMut(u64) -> u64, depth: u32) -> Value {
            let words = ["", "a", "Zoë", "\"q\"", "\\", "\n\t", "🚀", "1", "phx_ref"];
            match next(if depth > 3 { 6 } else { 8 }) {
                0 => Value::Null,
                1 => Value::Bool(next(2) == 0),
                2 => Value::from(next(u64::MAX)),
                3 => Value::from(-(next(1 << 40) as i64)),
                4 => Value::from(next(1 << 53) as f64 / (1 + next(1000)) as f64),
                5 => Value::from(words[next(words.len() as u64) as usize]),
                6 => Value::Array((0..next(4)).map(|_| value(next, depth + 1)).collect()),
                _ => {
                    let mut m = Map::new();
                    for _ in 0..next(5) {
                        let k = words[next(words.len() as u64) as usize].to_string();
                        m.insert(k, value(next, depth + 1));
                    }
                    Value::Object(m)
                }
            }
        }
        for _ in 0..20 {
            let mut s = shard();
            for conn in 0..30 {
                let key = format!("user{}", next(12));
                let mut meta = Map::new();
                for f in 0..next(6) {
                    meta.insert(format!("f{}", next(8) + f), value(&mut next, 0));
                }
                s.track(conn, "t", &key, Meta::from_map(&meta)).unwrap();
            }
            assert_same_bytes(&s.list("t"));
        }
    }

    /// A `presence_diff` written as text is the frame encoding the grouped joins and leaves
    /// writes, whatever the metas: tracks, updates (a leave and a join with `phx_ref_prev`)
    /// and untracks, canonical metas and others.
    #[test]
    fn presence_diffs_render_the_same_bytes() {
        let metas = [
            r#"{}"#,
            r#"{"name":"Alice","online_at":1764300000,"node":"a"}"#,
            r#"{"f":0.5,"phx_ref":"theirs"}"#,
            r#" { "ws" : 1 } "#,
            "{\"s\":\"q\\\"\\n\"}",
        ];
        let mut s = shard();
        let mut diffs = Vec::new();
        for (n, text) in metas.iter().enumerate() {
            let key = ["u", "v", "u\"w"][n % 3];
            let (_, diff) = s
                .track(n as u64, "t", key, Meta::new(text).unwrap())
                .unwrap();
            diffs.push(diff);
        }
        for (n, text) in metas.iter().enumerate().take(3) {
            let key = ["u", "v", "u\"w"][n % 3];
            let (_, diff) = s
                .update(n as u64, "t", key, Meta::new(text).unwrap())
                .unwrap();
            diffs.push(diff);
        }
        diffs.push(s.untrack_connection(0));
        diffs.push(s.untrack(1, "t", "v"));
        for diff in &diffs {
            let d = diff.topic("t").expect("a change in t");
            let old = serde_json::json!({"joins": reference_value(&d.joins), "leaves": reference_value(&d.leaves)});
            let text = diff_json(d);
            assert_eq!(text, old.to_string());
            for serializer in [Serializer::V1Json, Serializer::V2] {
                let broadcast = Outbound::Broadcast {
                    topic: "room:t".into(),
                    event: "presence_diff".into(),
                    payload: Payload::Json(old.clone()),
                };
                let written = serializer.encode_push_json(None, "room:t", "presence_diff", &text);
                assert_eq!(
                    WireFrame::Text(written.into()),
                    WireFrame::encode(serializer, &broadcast).unwrap()
                );
            }
        }
    }
}
