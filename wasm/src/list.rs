//! `list()` of a long-lived state without asking the engine for the keys of a big dictionary
//! object each time: a cache of the state's keys and presence objects, in JavaScript key
//! order, kept in step by every change this module makes to that state.
//!
//! The cache belongs to the state object (a `WeakMap` entry, invisible on the object), so a
//! static `syncDiff` on an instance's state keeps it in step as well. It is made by the first
//! `list()` of an instance and dropped whenever a change cannot be placed (a presence object it
//! does not hold); the next `list()` rebuilds it. Changes made to the state object by other code
//! are not seen.

use crate::js::{self, index_of_key};
use js_sys::Array;
use wasm_bindgen::{JsCast, JsValue};

/// The cache of one state: `[keys, objects, number of integer-like keys at the front]`.
pub struct ListCache {
    holder: Array,
    keys: Array,
    objects: Array,
}

impl ListCache {
    /// The cache of `state`, if it has one.
    pub fn of(state: &JsValue) -> Option<Self> {
        let holder = js::list_of(state);
        if holder.is_undefined() {
            return None;
        }
        let holder: Array = holder.unchecked_into();
        Some(Self {
            keys: holder.get(0).unchecked_into(),
            objects: holder.get(1).unchecked_into(),
            holder,
        })
    }

    /// Builds the cache of `state` from its keys.
    pub fn build(state: &JsValue) -> Result<Self, JsValue> {
        let count = js::status(js::entries_of(state))?;
        let pair: Array = js::take().unchecked_into();
        let keys: Array = pair.get(0).unchecked_into();
        let objects: Array = pair.get(1).unchecked_into();
        // integer-like keys come first: count them
        let leading = (0..count as u32)
            .take_while(|&i| index_of_key(&keys.get(i)).is_some())
            .count() as u32;
        let holder = Array::of3(&keys, &objects, &JsValue::from(leading));
        js::set_list(state, &holder);
        Ok(Self {
            holder,
            keys,
            objects,
        })
    }

    fn leading(&self) -> u32 {
        self.holder.get(2).as_f64().unwrap_or(0.0) as u32
    }

    fn set_leading(&self, count: u32) {
        self.holder.set(2, JsValue::from(count));
    }

    /// Drops the cache of `state`.
    pub fn forget(self, state: &JsValue) {
        js::drop_list(state);
    }

    /// `state[key] = presence` happened; `previous` was the value under the key.
    pub fn stored(
        self,
        state: &JsValue,
        key: &JsValue,
        presence: &JsValue,
        previous: Option<&JsValue>,
    ) {
        if let Some(previous) = previous {
            // an assignment to a present key keeps its place
            match u32::try_from(self.objects.index_of(previous, 0)) {
                Ok(at) => self.objects.set(at, presence.clone()),
                Err(_) => self.forget(state),
            }
            return;
        }
        let Some(index) = index_of_key(key) else {
            self.keys.push(key);
            self.objects.push(presence);
            return;
        };
        // integer-like keys come first, ascending: find the first one above `index`
        let leading = self.leading();
        let (mut low, mut high) = (0, leading);
        while low < high {
            let middle = low + (high - low) / 2;
            match index_of_key(&self.keys.get(middle)) {
                Some(other) if other < index => low = middle + 1,
                _ => high = middle,
            }
        }
        self.keys.splice(low, 0, key);
        self.objects.splice(low, 0, presence);
        self.set_leading(leading + 1);
    }

    /// `delete state[key]` happened; `presence` was its value.
    pub fn removed(self, state: &JsValue, presence: &JsValue) {
        let Ok(at) = u32::try_from(self.objects.index_of(presence, 0)) else {
            self.forget(state);
            return;
        };
        self.keys.splice_many(at, 1, &[]);
        self.objects.splice_many(at, 1, &[]);
        let leading = self.leading();
        if at < leading {
            self.set_leading(leading - 1);
        }
    }

    /// phoenix.js's `list(by)`: the presence objects in key order, or `by(key, presence)` of
    /// each.
    pub fn list(&self, by: &JsValue) -> Result<JsValue, JsValue> {
        let count = self.objects.length();
        let objects = self.objects.slice(0, count);
        if by.is_falsy() {
            return Ok(objects.into());
        }
        // copies: the callback may change the state (and so this cache) while it runs
        let keys = self.keys.slice(0, count);
        js::held(js::map_pairs(&keys, &objects, by))
    }
}
