//! Client-side presence state with the exact semantics of phoenix.js `Presence`
//! (`syncState`, `syncDiff`, `list`).
//!
//! A [`PresenceState`] maps a key (usually a user id) to a [`Presence`]: a JSON object with a
//! `metas` array, one meta per connection, each carrying a `phx_ref`. Two things make this more
//! than a map:
//!
//! - **Key order is the order JavaScript reports.** phoenix.js iterates its state objects with
//!   `Object.getOwnPropertyNames`, so integer-like keys (`"0"`..`"4294967294"`, no leading zeros)
//!   come first in ascending numeric order, then every other key in insertion order. Deleting a
//!   key and adding it again moves it to the end; replacing its value does not move it. `list`,
//!   events and serialization all follow this order, so a Rust client and a JS client show the
//!   same list.
//! - **Changes are reported as values.** [`PresenceState::sync_diff`] and
//!   [`PresenceState::sync_state`] return the [`PresenceEvent`]s that phoenix.js would pass to
//!   `onJoin` / `onLeave`, in the same order and with the same before/after snapshots, so any
//!   shell (Rust, or the JS `Presence` over wasm) can drive its callbacks from them.
//!
//! `sync_diff` costs O(size of the diff · log N), never O(N): it only touches the keys the diff
//! names.

use serde::{Deserialize, Serialize, Serializer};
use serde_json::{Map, Value};
use std::fmt;

mod order;
pub mod plan;

pub use order::{array_index, JsOrderMap};

/// Why a JSON value could not be read as a presence, a presence state or a diff.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum PresenceError {
    /// The value should have been a JSON object (a state, a diff or a presence) but was not.
    NotAnObject {
        /// What the value was supposed to be, e.g. `"presence \"alice\""`.
        what: String,
    },
    /// A presence has no `metas` field, or it is not an array.
    MetasNotAnArray {
        /// The presence's key.
        key: String,
    },
    /// An element of a presence's `metas` array is not a JSON object.
    MetaNotAnObject {
        /// The presence's key.
        key: String,
        /// Position of the bad element in `metas`.
        index: usize,
    },
    /// A diff lacks its `joins` or its `leaves` field (phoenix.js throws a `TypeError` there).
    MissingDiffField {
        /// `"joins"` or `"leaves"`.
        field: &'static str,
    },
}

impl fmt::Display for PresenceError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::NotAnObject { what } => write!(f, "{what} must be a JSON object"),
            Self::MetasNotAnArray { key } => {
                write!(f, "presence {key:?} must have a `metas` array")
            }
            Self::MetaNotAnObject { key, index } => {
                write!(f, "meta {index} of presence {key:?} must be a JSON object")
            }
            Self::MissingDiffField { field } => {
                write!(f, "a presence diff must have a `{field}` object")
            }
        }
    }
}

impl std::error::Error for PresenceError {}

/// One key's presence: a JSON object whose `metas` field is an array of objects (one per
/// connection, each normally carrying a `phx_ref`). Other fields, such as those a server adds in
/// `fetch/2`, are kept as they are.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(try_from = "Map<String, Value>", into = "Map<String, Value>")]
pub struct Presence(Map<String, Value>);

impl Presence {
    /// Reads a presence from a JSON object, checking that `metas` is an array of objects.
    /// `key` only names the presence in the error.
    pub fn from_json(key: &str, value: Value) -> Result<Self, PresenceError> {
        match value {
            Value::Object(fields) => Self::from_fields(key, fields),
            _ => Err(PresenceError::NotAnObject {
                what: format!("presence {key:?}"),
            }),
        }
    }

    fn from_fields(key: &str, fields: Map<String, Value>) -> Result<Self, PresenceError> {
        let Some(Value::Array(metas)) = fields.get("metas") else {
            return Err(PresenceError::MetasNotAnArray { key: key.into() });
        };
        if let Some(index) = metas.iter().position(|m| !m.is_object()) {
            return Err(PresenceError::MetaNotAnObject {
                key: key.into(),
                index,
            });
        }
        Ok(Self(fields))
    }

    /// A presence with the given metas and no other fields.
    pub fn with_metas(metas: Vec<Map<String, Value>>) -> Self {
        let mut fields = Map::new();
        fields.insert(
            "metas".into(),
            Value::Array(metas.into_iter().map(Value::Object).collect()),
        );
        Self(fields)
    }

    /// The metas, one per connection, in order.
    pub fn metas(&self) -> &[Value] {
        match self.0.get("metas") {
            Some(Value::Array(metas)) => metas,
            _ => &[],
        }
    }

    /// The `phx_ref` of every meta, in order (`None` where a meta has none).
    pub fn refs(&self) -> Vec<Option<&Value>> {
        self.metas().iter().map(phx_ref).collect()
    }

    /// All fields of the presence, `metas` included, in their original order.
    pub fn fields(&self) -> &Map<String, Value> {
        &self.0
    }

    /// The presence as a JSON object.
    pub fn into_json(self) -> Value {
        Value::Object(self.0)
    }

    /// Replaces `metas`, keeping the field where it was (like assigning `presence.metas` in JS).
    fn set_metas(&mut self, metas: Vec<Value>) {
        // An existing key keeps its position in a preserve_order map.
        self.0.insert("metas".into(), Value::Array(metas));
    }
}

impl TryFrom<Map<String, Value>> for Presence {
    type Error = PresenceError;

    fn try_from(fields: Map<String, Value>) -> Result<Self, Self::Error> {
        Self::from_fields("?", fields)
    }
}

impl From<Presence> for Map<String, Value> {
    fn from(presence: Presence) -> Self {
        presence.0
    }
}

/// The `phx_ref` of a meta, if it has one.
fn phx_ref(meta: &Value) -> Option<&Value> {
    meta.get("phx_ref")
}

/// `a === b` in JavaScript for two `phx_ref`s after phoenix.js has JSON-cloned one of them:
/// a missing ref (`undefined`) equals a missing ref, scalars compare by value (numbers as
/// doubles), and objects or arrays never equal anything because the clone is a new object.
pub fn same_ref(a: Option<&Value>, b: Option<&Value>) -> bool {
    match (a, b) {
        (None, None) => true,
        (Some(Value::String(a)), Some(Value::String(b))) => a == b,
        (Some(Value::Number(a)), Some(Value::Number(b))) => a.as_f64() == b.as_f64(),
        (Some(Value::Bool(a)), Some(Value::Bool(b))) => a == b,
        (Some(Value::Null), Some(Value::Null)) => true,
        _ => false,
    }
}

/// Positions of the refs in `refs` that match none of `remove`, in order: phoenix.js's
/// `metas.filter(m => remove.indexOf(m.phx_ref) < 0)`. The one matcher behind every rule, for
/// [`PresenceState`] and for [`plan`].
pub(crate) fn kept<R>(refs: &[R], remove: &[R], same: impl Fn(&R, &R) -> bool) -> Vec<usize> {
    (0..refs.len())
        .filter(|&i| !remove.iter().any(|r| same(&refs[i], r)))
        .collect()
}

/// The metas of `metas` whose `phx_ref` is not among `refs`, in their order.
fn metas_not_in(metas: &[Value], refs: &[Option<&Value>]) -> Vec<Value> {
    let own: Vec<Option<&Value>> = metas.iter().map(phx_ref).collect();
    kept(&own, refs, |a, b| same_ref(*a, *b))
        .into_iter()
        .filter_map(|i| metas.get(i).cloned())
        .collect()
}

/// Presences by key, iterated in JavaScript's own-property order (see the module docs). Used
/// for a client's state and for the `joins` / `leaves` of a [`Diff`].
pub type PresenceState = JsOrderMap<Presence>;

impl PresenceState {
    /// Reads a state (or a diff's `joins` / `leaves`) from a JSON object, keeping the keys in
    /// the order JavaScript would report them.
    pub fn from_json(value: Value) -> Result<Self, PresenceError> {
        match value {
            Value::Object(map) => Self::from_map(map),
            _ => Err(PresenceError::NotAnObject {
                what: "presence state".into(),
            }),
        }
    }

    fn from_map(map: Map<String, Value>) -> Result<Self, PresenceError> {
        let mut state = Self::new();
        for (key, value) in map {
            let presence = Presence::from_json(&key, value)?;
            state.insert(key, presence);
        }
        Ok(state)
    }

    /// The state as a JSON object, keys in JavaScript order.
    pub fn to_json(&self) -> Value {
        Value::Object(
            self.iter()
                .map(|(k, p)| (k.to_owned(), Value::Object(p.0.clone())))
                .collect(),
        )
    }

    /// phoenix.js `Presence.list(state, chooser)`: `chooser(key, presence)` for every key, in
    /// JavaScript order.
    pub fn list<T>(&self, mut chooser: impl FnMut(&str, &Presence) -> T) -> Vec<T> {
        self.iter().map(|(k, p)| chooser(k, p)).collect()
    }

    /// phoenix.js `Presence.syncDiff`: applies every join, then every leave, each in
    /// JavaScript key order, and returns what phoenix.js would pass to `onJoin` / `onLeave`.
    ///
    /// - A join stores the joined presence (its presence-level fields included); if the key was
    ///   present, its metas whose `phx_ref` is not among the joined refs are put first, in
    ///   their old order.
    /// - A leave removes the metas whose `phx_ref` is among the left refs, and the key when no
    ///   meta is left. A leave of an absent key is ignored (no event); a leave that matches no
    ///   ref still reports an event.
    ///
    /// Costs O(size of the diff · log N).
    pub fn sync_diff(&mut self, diff: Diff) -> Vec<PresenceEvent> {
        let mut events = Vec::with_capacity(diff.joins.len() + diff.leaves.len());
        for (key, joined) in diff.joins.into_entries() {
            let mut stored = joined.clone();
            if let Some(current) = self.get(&key) {
                let joined_refs = joined.refs();
                let mut metas = metas_not_in(current.metas(), &joined_refs);
                metas.extend_from_slice(joined.metas());
                stored.set_metas(metas);
            }
            let current = self.insert(key.clone(), stored);
            events.push(PresenceEvent::Join {
                key,
                current,
                joined,
            });
        }
        for (key, left) in diff.leaves.into_entries() {
            let Some(current) = self.get_mut(&key) else {
                continue;
            };
            let left_refs = left.refs();
            let remaining = metas_not_in(current.metas(), &left_refs);
            current.set_metas(remaining);
            let current = if current.metas().is_empty() {
                match self.remove(&key) {
                    Some(removed) => removed,
                    None => continue,
                }
            } else {
                current.clone()
            };
            events.push(PresenceEvent::Leave { key, current, left });
        }
        events
    }

    /// The diff phoenix.js `Presence.syncState` builds to go from this state to `new_state`:
    ///
    /// - `leaves` first names every key absent from `new_state` (whole presence, in this
    ///   state's order), then every key that lost metas (a copy of the current presence whose
    ///   `metas` are only the lost ones, in `new_state`'s order);
    /// - `joins` names every new key (whole new presence) and every key that gained metas (the
    ///   new presence with `metas` overwritten by only the gained ones — phoenix.js overwrites
    ///   the caller's object there), in `new_state`'s order.
    ///
    /// A key whose refs are identical in both states appears in neither.
    pub fn diff_to(&self, new_state: PresenceState) -> Diff {
        let mut joins = PresenceState::new();
        let mut leaves = PresenceState::new();
        for (key, presence) in self.iter() {
            if !new_state.contains_key(key) {
                leaves.insert(key.to_owned(), presence.clone());
            }
        }
        for (key, mut new_presence) in new_state.into_entries() {
            let Some(current) = self.get(&key) else {
                joins.insert(key, new_presence);
                continue;
            };
            let current_refs = current.refs();
            let joined_metas = metas_not_in(new_presence.metas(), &current_refs);
            let left_metas = metas_not_in(current.metas(), &new_presence.refs());
            if !left_metas.is_empty() {
                let mut left = current.clone();
                left.set_metas(left_metas);
                leaves.insert(key.clone(), left);
            }
            if !joined_metas.is_empty() {
                new_presence.set_metas(joined_metas);
                joins.insert(key, new_presence);
            }
        }
        Diff { joins, leaves }
    }

    /// phoenix.js `Presence.syncState`: brings this state to `new_state` through the diff of
    /// [`PresenceState::diff_to`] and returns the events phoenix.js would report: all joins in
    /// `new_state` order, then the leaves of vanished keys (their `current` has empty metas),
    /// then the partial leaves. A key with identical refs in both states keeps its old
    /// presence-level fields and reports nothing; a key that gained metas ends with
    /// `[surviving old metas..., gained metas...]` and the new presence-level fields.
    ///
    /// phoenix.js deep-copies the current state and returns a new one; here the state is
    /// updated in place — clone it first to keep the old one.
    pub fn sync_state(&mut self, new_state: PresenceState) -> Vec<PresenceEvent> {
        let diff = self.diff_to(new_state);
        self.sync_diff(diff)
    }
}

impl<V: Serialize> Serialize for JsOrderMap<V> {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.collect_map(self.iter())
    }
}

impl<'de> Deserialize<'de> for PresenceState {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let map = Map::<String, Value>::deserialize(deserializer)?;
        Self::from_map(map).map_err(serde::de::Error::custom)
    }
}

/// A `presence_diff` payload: presences that joined and presences that left.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct Diff {
    /// Presences with the metas that joined.
    pub joins: PresenceState,
    /// Presences with the metas that left.
    pub leaves: PresenceState,
}

impl Diff {
    /// Reads a diff from a JSON object with `joins` and `leaves` objects. A missing or null
    /// field is an error, as it is in phoenix.js (which throws).
    pub fn from_json(value: Value) -> Result<Self, PresenceError> {
        let Value::Object(mut map) = value else {
            return Err(PresenceError::NotAnObject {
                what: "presence diff".into(),
            });
        };
        let mut field = |name: &'static str| match map.remove(name) {
            None | Some(Value::Null) => Err(PresenceError::MissingDiffField { field: name }),
            Some(v) => PresenceState::from_json(v),
        };
        let joins = field("joins")?;
        let leaves = field("leaves")?;
        Ok(Self { joins, leaves })
    }
}

/// What phoenix.js passes to `onJoin` / `onLeave`, as a value.
#[derive(Clone, Debug, PartialEq)]
pub enum PresenceEvent {
    /// `onJoin(key, current, joined)`.
    Join {
        /// The key that joined.
        key: String,
        /// The presence before the join, unmodified; `None` for a new key.
        current: Option<Presence>,
        /// The presence from the diff, holding only the joined metas (not the stored presence,
        /// which also keeps the old metas).
        joined: Presence,
    },
    /// `onLeave(key, current, left)`.
    Leave {
        /// The key that left.
        key: String,
        /// The presence after the removal; its metas may be empty, in which case the key is
        /// no longer in the state.
        current: Presence,
        /// The presence from the diff, with the metas that left.
        left: Presence,
    },
}

impl PresenceEvent {
    /// The key the event is about.
    pub fn key(&self) -> &str {
        match self {
            Self::Join { key, .. } | Self::Leave { key, .. } => key,
        }
    }
}
