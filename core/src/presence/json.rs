//! The presence algorithm over `serde_json` values: [`PresenceState`] for Rust clients and
//! tests, with callbacks reported as [`PresenceEvent`]s.

use super::sync::{self, Found, Model, Parts, Resync};
use super::{array_index, JsOrderMap};
use serde::{Deserialize, Serialize, Serializer};
use serde_json::{Map, Value};
use std::convert::Infallible;
use std::fmt;

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
    /// The rules are [`sync::apply_diff`]'s, the same code the npm package runs. Costs
    /// O(size of the diff · log N).
    pub fn sync_diff(&mut self, diff: Diff) -> Vec<PresenceEvent> {
        let mut model = Native::new(self);
        let result = sync::apply_diff(
            &mut model,
            diff.joins.into_entries(),
            diff.leaves.into_entries(),
        );
        infallible(result);
        model.events
    }

    /// The diff phoenix.js `Presence.syncState` builds to go from this state to `new_state`
    /// ([`sync::state_diff`]):
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
        let mut scratch = self.clone();
        let mut model = Native::new(&mut scratch).resync(entries(self), new_state);
        let (joins, leaves) = infallible(sync::state_diff(&mut model));
        Diff {
            joins: joins.into_iter().collect(),
            leaves: leaves.into_iter().collect(),
        }
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
        let old = entries(self);
        let mut model = Native::new(self).resync(old, new_state);
        infallible(sync::sync_state(&mut model));
        model.events
    }
}

impl FromIterator<(String, Presence)> for PresenceState {
    fn from_iter<I: IntoIterator<Item = (String, Presence)>>(entries: I) -> Self {
        let mut state = Self::new();
        for (key, presence) in entries {
            state.insert(key, presence);
        }
        state
    }
}

/// A state's entries, in order.
fn entries(state: &PresenceState) -> Vec<(String, Presence)> {
    state
        .iter()
        .map(|(key, presence)| (key.to_owned(), presence.clone()))
        .collect()
}

fn infallible<T>(result: Result<T, Infallible>) -> T {
    match result {
        Ok(value) => value,
        Err(never) => match never {},
    }
}

/// The presence algorithm's [`Model`] over `serde_json` values: presences are values (a lookup
/// returns a copy), callbacks become [`PresenceEvent`]s.
struct Native<'a> {
    state: &'a mut PresenceState,
    /// For `syncState`: the current state's entries, the new state's, and the new state.
    old: Vec<(String, Presence)>,
    new: Vec<(String, Presence)>,
    new_state: PresenceState,
    events: Vec<PresenceEvent>,
}

impl<'a> Native<'a> {
    fn new(state: &'a mut PresenceState) -> Self {
        Self {
            state,
            old: Vec::new(),
            new: Vec::new(),
            new_state: PresenceState::new(),
            events: Vec::new(),
        }
    }

    fn resync(self, old: Vec<(String, Presence)>, new_state: PresenceState) -> Self {
        Self {
            old,
            new: entries(&new_state),
            new_state,
            ..self
        }
    }
}

impl Resync for Native<'_> {
    fn old_entry(&mut self, index: usize) -> Result<(String, Presence), Infallible> {
        Ok(self.old[index].clone())
    }

    fn new_entry(&mut self, index: usize) -> Result<(String, Presence), Infallible> {
        Ok(self.new[index].clone())
    }

    fn in_new_state(&mut self) -> Result<Vec<bool>, Infallible> {
        Ok(self
            .old
            .iter()
            .map(|(key, _)| self.new_state.contains_key(key))
            .collect())
    }

    fn found(&mut self) -> Result<Vec<Found>, Infallible> {
        Ok(self
            .new
            .iter()
            .map(|(key, _)| match self.state.get(key) {
                Some(_) => Found::Present,
                None => Found::Absent,
            })
            .collect())
    }
}

impl Model for Native<'_> {
    type Key = String;
    type Presence = Presence;
    type Metas = Vec<Value>;
    type Ref = Option<Value>;
    type Error = Infallible;

    fn get(&mut self, key: &String) -> Result<Option<Presence>, Infallible> {
        Ok(self.state.get(key).cloned())
    }

    fn store_copy(
        &mut self,
        key: &String,
        presence: &Presence,
        _: Option<&Presence>,
    ) -> Result<Presence, Infallible> {
        self.state.insert(key.clone(), presence.clone());
        Ok(presence.clone())
    }

    fn delete(&mut self, key: &String, _: &Presence) -> Result<(), Infallible> {
        self.state.remove(key);
        Ok(())
    }

    fn metas(&mut self, _: &String, presence: &Presence) -> Result<Vec<Value>, Infallible> {
        Ok(presence.metas().to_vec())
    }

    fn refs(&mut self, metas: &Vec<Value>) -> Result<Vec<Option<Value>>, Infallible> {
        Ok(metas.iter().map(|meta| phx_ref(meta).cloned()).collect())
    }

    fn set_metas(
        &mut self,
        presence: &mut Presence,
        parts: &Parts<'_, Self>,
    ) -> Result<(), Infallible> {
        presence.set_metas(compose(parts));
        Ok(())
    }

    fn set_stored_metas(
        &mut self,
        key: &String,
        presence: &mut Presence,
        parts: &Parts<'_, Self>,
    ) -> Result<(), Infallible> {
        let metas = compose(parts);
        if let Some(stored) = self.state.get_mut(key) {
            stored.set_metas(metas.clone());
        }
        presence.set_metas(metas);
        Ok(())
    }

    fn has_no_metas(&mut self, _: &String, presence: &Presence) -> Result<bool, Infallible> {
        Ok(presence.metas().is_empty())
    }

    fn same_ref(&mut self, a: &Option<Value>, b: &Option<Value>) -> bool {
        same_ref(a.as_ref(), b.as_ref())
    }

    fn copy(&mut self, presence: &Presence) -> Result<Option<Presence>, Infallible> {
        Ok(Some(presence.clone()))
    }

    fn array_index(&mut self, key: &String) -> Option<u32> {
        array_index(key)
    }

    fn on_join(
        &mut self,
        key: &String,
        current: Option<&Presence>,
        joined: &Presence,
    ) -> Result<(), Infallible> {
        self.events.push(PresenceEvent::Join {
            key: key.clone(),
            current: current.cloned(),
            joined: joined.clone(),
        });
        Ok(())
    }

    fn on_leave(
        &mut self,
        key: &String,
        current: &Presence,
        left: &Presence,
    ) -> Result<(), Infallible> {
        self.events.push(PresenceEvent::Leave {
            key: key.clone(),
            current: current.clone(),
            left: left.clone(),
        });
        Ok(())
    }
}

/// The metas list made of `parts`.
fn compose(parts: &Parts<'_, Native<'_>>) -> Vec<Value> {
    parts
        .iter()
        .flat_map(|(metas, positions)| positions.iter().filter_map(|&i| metas.get(i).cloned()))
        .collect()
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
