//! The decisions of `syncDiff` / `syncState` computed from keys and refs alone, for a shell
//! that keeps the presence objects itself (the JS `Presence` over wasm keeps JS objects, so
//! that callers see live objects, and asks the core what to do with them).
//!
//! A shell describes each key the diff names by the refs of its current metas and of the
//! diff's metas; the core answers with meta positions to keep, in a flat `Vec<i32>` that
//! crosses the wasm boundary as one `Int32Array`. The rules are those of
//! [`PresenceState::sync_diff`](super::PresenceState::sync_diff), which runs on the same
//! [`kept`](super::kept) matcher.
//!
//! A [`KeyIndex`] additionally tracks which keys a long-lived state holds and in what order
//! (JavaScript's), each under a small integer *slot*, so the shell can rebuild its `list()` in
//! O(N) array work without asking the JS engine for the keys of a large dictionary object.

use super::{kept, JsOrderMap};
use serde::de::{self, Deserializer, MapAccess, SeqAccess, Visitor};
use serde::Deserialize;
use std::borrow::Cow;
use std::fmt;

/// A `phx_ref` as JavaScript's `===` sees it. In the JSON a shell sends, a ref is itself when it
/// is a string, a finite number, a boolean or `null`; `[]` stands for `undefined` (a meta with
/// no `phx_ref`) and `{}` for a ref that equals nothing it can meet here (an object — one side
/// of every comparison is a fresh JSON copy —, `NaN`, an infinity, which such a copy turns into
/// `null`, a BigInt or a symbol).
///
/// Strings borrow from the JSON text when they can, so planning a diff allocates little.
#[derive(Clone, Debug, PartialEq)]
pub enum RefKey<'a> {
    /// A string.
    Str(Cow<'a, str>),
    /// A finite number.
    Num(f64),
    /// A boolean.
    Bool(bool),
    /// `null`.
    Null,
    /// `undefined`: the meta has no `phx_ref`.
    Undefined,
    /// Equal to nothing, not even itself.
    Never,
}

impl RefKey<'_> {
    /// `a === b` for the two refs.
    pub fn same(&self, other: &RefKey<'_>) -> bool {
        match (self, other) {
            (RefKey::Str(a), RefKey::Str(b)) => a == b,
            (RefKey::Num(a), RefKey::Num(b)) => a == b,
            (RefKey::Bool(a), RefKey::Bool(b)) => a == b,
            (RefKey::Null, RefKey::Null) | (RefKey::Undefined, RefKey::Undefined) => true,
            _ => false,
        }
    }

    fn count(&self) -> usize {
        match self {
            Self::Num(n) if *n >= 0.0 && *n < 4_294_967_296.0 => *n as usize,
            _ => 0,
        }
    }
}

fn same_key(a: &RefKey<'_>, b: &RefKey<'_>) -> bool {
    a.same(b)
}

impl<'de: 'a, 'a> Deserialize<'de> for RefKey<'a> {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct RefVisitor<'a>(std::marker::PhantomData<&'a ()>);
        impl<'de: 'a, 'a> Visitor<'de> for RefVisitor<'a> {
            type Value = RefKey<'a>;
            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str("a string, number, boolean, null, [] or {}")
            }
            fn visit_borrowed_str<E: de::Error>(self, v: &'de str) -> Result<RefKey<'a>, E> {
                Ok(RefKey::Str(Cow::Borrowed(v)))
            }
            fn visit_str<E: de::Error>(self, v: &str) -> Result<RefKey<'a>, E> {
                Ok(RefKey::Str(Cow::Owned(v.to_owned())))
            }
            fn visit_string<E: de::Error>(self, v: String) -> Result<RefKey<'a>, E> {
                Ok(RefKey::Str(Cow::Owned(v)))
            }
            fn visit_f64<E: de::Error>(self, v: f64) -> Result<RefKey<'a>, E> {
                Ok(RefKey::Num(v))
            }
            fn visit_u64<E: de::Error>(self, v: u64) -> Result<RefKey<'a>, E> {
                Ok(RefKey::Num(v as f64))
            }
            fn visit_i64<E: de::Error>(self, v: i64) -> Result<RefKey<'a>, E> {
                Ok(RefKey::Num(v as f64))
            }
            fn visit_bool<E: de::Error>(self, v: bool) -> Result<RefKey<'a>, E> {
                Ok(RefKey::Bool(v))
            }
            fn visit_unit<E: de::Error>(self) -> Result<RefKey<'a>, E> {
                Ok(RefKey::Null)
            }
            fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<RefKey<'a>, A::Error> {
                while seq.next_element::<de::IgnoredAny>()?.is_some() {}
                Ok(RefKey::Undefined)
            }
            fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<RefKey<'a>, A::Error> {
                while map
                    .next_entry::<de::IgnoredAny, de::IgnoredAny>()?
                    .is_some()
                {}
                Ok(RefKey::Never)
            }
        }
        deserializer.deserialize_any(RefVisitor(std::marker::PhantomData))
    }
}

/// One key of a diff's `joins`: the key, the refs of its current metas (`None` when the state
/// lacks the key) and the refs of the joined metas.
#[derive(Clone, Debug, Deserialize)]
pub struct JoinInput<'a>(
    #[serde(borrow)] pub Cow<'a, str>,
    #[serde(borrow)] pub Option<Refs<'a>>,
    #[serde(borrow)] pub Refs<'a>,
);

/// The refs of some metas, in order: borrowed from a flat input, or owned.
pub type Refs<'a> = Cow<'a, [RefKey<'a>]>;

/// One key of a diff's `leaves`: the key, the position of the same key among the diff's joins
/// (or -1), the refs of its current metas when it was not joined (`None` when the state lacks
/// the key) and the refs of the metas that left.
#[derive(Clone, Debug, Deserialize)]
pub struct LeaveInput<'a>(
    #[serde(borrow)] pub Cow<'a, str>,
    pub i64,
    #[serde(borrow)] pub Option<Refs<'a>>,
    #[serde(borrow)] pub Refs<'a>,
);

/// A diff described by refs, joins and leaves each in JavaScript key order.
#[derive(Clone, Debug, Default, Deserialize)]
pub struct DiffInput<'a> {
    /// The joins.
    #[serde(rename = "j", borrow)]
    pub joins: Vec<JoinInput<'a>>,
    /// The leaves.
    #[serde(rename = "l", borrow)]
    pub leaves: Vec<LeaveInput<'a>>,
}

impl<'a> DiffInput<'a> {
    /// Reads the flat form a shell sends for small diffs (one array, so decoding allocates
    /// once): the number of joins, then per join its key, the number of current refs (`-1`
    /// when the key is absent), those refs, the number of joined refs and those refs; then the
    /// number of leaves, then per leave its key, the position of the same key among the joins
    /// (`-1` if none), the number of current refs (`-1` when absent), those refs, the number of
    /// left refs and those refs. `None` when the tokens do not have that shape.
    pub fn from_flat(tokens: &'a [RefKey<'a>]) -> Option<Self> {
        let mut rest = tokens;
        let count = |rest: &mut &'a [RefKey<'a>]| -> Option<i64> {
            let (first, tail) = rest.split_first()?;
            *rest = tail;
            match first {
                RefKey::Num(n) if n.fract() == 0.0 && *n >= -1.0 && *n < 4_294_967_296.0 => {
                    Some(*n as i64)
                }
                _ => None,
            }
        };
        let key = |rest: &mut &'a [RefKey<'a>]| -> Option<Cow<'a, str>> {
            let (first, tail) = rest.split_first()?;
            *rest = tail;
            match first {
                RefKey::Str(k) => Some(k.clone()),
                _ => None,
            }
        };
        let refs = |rest: &mut &'a [RefKey<'a>], n: i64| -> Option<Option<Refs<'a>>> {
            let Ok(n) = usize::try_from(n) else {
                return Some(None);
            };
            if n > rest.len() {
                return None;
            }
            let (refs, tail) = rest.split_at(n);
            *rest = tail;
            Some(Some(Cow::Borrowed(refs)))
        };
        let nj = count(&mut rest)?;
        let mut joins = Vec::with_capacity(usize::try_from(nj).ok()?.min(rest.len()));
        for _ in 0..nj {
            let k = key(&mut rest)?;
            let n = count(&mut rest)?;
            let current = refs(&mut rest, n)?;
            let n = count(&mut rest)?;
            let joined = refs(&mut rest, n)??;
            joins.push(JoinInput(k, current, joined));
        }
        let nl = count(&mut rest)?;
        let mut leaves = Vec::with_capacity(usize::try_from(nl).ok()?.min(rest.len()));
        for _ in 0..nl {
            let k = key(&mut rest)?;
            let join_pos = count(&mut rest)?;
            let n = count(&mut rest)?;
            let current = refs(&mut rest, n)?;
            let n = count(&mut rest)?;
            let left = refs(&mut rest, n)??;
            leaves.push(LeaveInput(k, join_pos, current, left));
        }
        rest.is_empty().then_some(Self { joins, leaves })
    }
}

/// Marks a leave of an absent key: skipped, no event.
pub const SKIP: i32 = -1;

fn push_positions(out: &mut Vec<i32>, positions: &[usize]) {
    out.push(positions.len() as i32);
    out.extend(positions.iter().map(|&i| i as i32));
}

/// Plans a diff. The answer, in order:
///
/// - per join: `n` then `n` positions of the current metas to put before the joined ones
///   (`0` for a new key);
/// - per leave: [`SKIP`] for an absent key, else `n` then the `n` positions of the metas that
///   remain, counted in the metas as they are after the joins (current metas kept by the join,
///   then the joined ones). `n == 0` means the key goes away.
pub fn plan_diff(input: &DiffInput<'_>) -> Vec<i32> {
    let mut out = Vec::new();
    // refs each joined key holds once the joins are applied, for leaves of the same key
    let mut after_join: Vec<Vec<RefKey<'_>>> = Vec::with_capacity(input.joins.len());
    for JoinInput(_, current, joined) in &input.joins {
        let keep = match current {
            Some(current) => kept(current, joined, same_key),
            None => Vec::new(),
        };
        push_positions(&mut out, &keep);
        if !input.leaves.is_empty() {
            let mut refs: Vec<RefKey<'_>> = match current {
                Some(current) => keep
                    .iter()
                    .filter_map(|&i| current.get(i).cloned())
                    .collect(),
                None => Vec::new(),
            };
            refs.extend(joined.iter().cloned());
            after_join.push(refs);
        }
    }
    for LeaveInput(_, join_pos, current, left) in &input.leaves {
        let current: Option<&[RefKey<'_>]> = match usize::try_from(*join_pos) {
            Ok(i) => after_join.get(i).map(Vec::as_slice),
            Err(_) => current.as_deref(),
        };
        match current {
            Some(current) => push_positions(&mut out, &kept(current, left, same_key)),
            None => out.push(SKIP),
        }
    }
    out
}

/// Plans the synthetic diff of `syncState` for the keys present in both states. `input` is
/// flat, per key: the number of current metas and their refs, then the number of new metas
/// and their refs. The answer, per key: `n` then the positions of the new metas that joined
/// (their ref is not current), then `m` then the positions of the current metas that left
/// (their ref is not new). A truncated input plans the keys it completes.
pub fn plan_state(input: &[RefKey<'_>]) -> Vec<i32> {
    fn take<'a, 'b>(rest: &mut &'a [RefKey<'b>]) -> Option<&'a [RefKey<'b>]> {
        let (count, tail) = rest.split_first()?;
        let n = count.count().min(tail.len());
        let (refs, tail) = tail.split_at(n);
        *rest = tail;
        Some(refs)
    }
    let mut out = Vec::with_capacity(input.len());
    let mut rest = input;
    while let (Some(current), Some(new)) = (take(&mut rest), take(&mut rest)) {
        push_positions(&mut out, &kept(new, current, same_key));
        push_positions(&mut out, &kept(current, new, same_key));
    }
    out
}

/// Which keys a long-lived state holds, in JavaScript order, each under a slot number that
/// stays the same while the key is present. Slots of removed keys are reused.
#[derive(Clone, Debug, Default)]
pub struct KeyIndex {
    slots: JsOrderMap<u32>,
    free: Vec<u32>,
    next: u32,
}

/// The index disagrees with what the shell found in its state (someone changed the state
/// behind the index's back); the shell should [`KeyIndex::reset`] and try again.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct OutOfStep;

impl KeyIndex {
    /// An empty index.
    pub fn new() -> Self {
        Self::default()
    }

    /// Number of keys.
    pub fn len(&self) -> usize {
        self.slots.len()
    }

    /// True when no key is present.
    pub fn is_empty(&self) -> bool {
        self.slots.is_empty()
    }

    /// The slot of `key`.
    pub fn slot(&self, key: &str) -> Option<u32> {
        self.slots.get(key).copied()
    }

    /// Forgets everything and indexes `keys`, which must be in JavaScript order already (as
    /// `Object.getOwnPropertyNames` gives them); returns their slots, `0..n`.
    pub fn reset<I: IntoIterator<Item = String>>(&mut self, keys: I) -> Vec<u32> {
        self.slots.clear();
        self.free.clear();
        self.next = 0;
        keys.into_iter().map(|k| self.add(k)).collect()
    }

    fn add(&mut self, key: String) -> u32 {
        let slot = self.free.pop().unwrap_or_else(|| {
            self.next += 1;
            self.next - 1
        });
        self.slots.insert(key, slot);
        slot
    }

    /// Slots in JavaScript key order.
    pub fn order(&self) -> Vec<u32> {
        self.slots.values().copied().collect()
    }

    /// [`plan_diff`], then the slots: per join the key's slot (a new slot for a new key), then
    /// per leave that is not skipped the key's slot (freed when the key goes away). Fails when
    /// the shell's view of which keys are present differs from the index.
    pub fn plan_diff(&mut self, input: &DiffInput<'_>) -> Result<Vec<i32>, OutOfStep> {
        for JoinInput(key, current, _) in &input.joins {
            if current.is_some() != self.slots.contains_key(key) {
                return Err(OutOfStep);
            }
        }
        for LeaveInput(key, join_pos, current, _) in &input.leaves {
            if *join_pos < 0 && current.is_some() != self.slots.contains_key(key) {
                return Err(OutOfStep);
            }
        }
        let mut out = plan_diff(input);
        let mut at = 0;
        for JoinInput(key, _, _) in &input.joins {
            at += 1 + out.get(at).map_or(0, |&n| n.max(0) as usize);
            let slot = match self.slot(key) {
                Some(slot) => slot,
                None => self.add(key.to_string()),
            };
            out.push(slot as i32);
        }
        for LeaveInput(key, _, _, _) in &input.leaves {
            let n = out.get(at).copied().unwrap_or(SKIP);
            if n == SKIP {
                at += 1;
                continue;
            }
            at += 1 + n.max(0) as usize;
            let Some(slot) = self.slot(key) else {
                return Err(OutOfStep);
            };
            if n == 0 {
                self.slots.remove(key);
                self.free.push(slot);
            }
            out.push(slot as i32);
        }
        Ok(out)
    }
}
