//! `list()` of a long-lived state without asking the engine for the keys of a big dictionary
//! object each time: a cache of the state's keys and presence objects, in JavaScript key
//! order, kept in step by every change this module makes to that state.
//!
//! The cache belongs to the state object (a `WeakMap` entry, invisible on the object), so a
//! static `syncDiff` on an instance's state keeps it in step as well. It is made by the first
//! `list()` of an instance and dropped whenever a change cannot be placed (a presence object it
//! does not hold); the next `list()` rebuilds it. Changes made to the state object by other code
//! are not seen.

use crate::js::{self, index_of_key, Array};
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
            keys: js::at(&holder, 0).unchecked_into(),
            objects: js::at(&holder, 1).unchecked_into(),
            holder,
        })
    }

    /// Builds the cache of `state` from its keys.
    pub fn build(state: &JsValue) -> Result<Self, JsValue> {
        let count = js::status(js::entries_of(state))?;
        let pair: Array = js::take().unchecked_into();
        let keys: Array = js::at(&pair, 0).unchecked_into();
        let objects: Array = js::at(&pair, 1).unchecked_into();
        // integer-like keys come first: count them
        let leading = (0..count)
            .take_while(|&i| index_of_key(&js::at(&keys, i)).is_some())
            .count() as i32;
        let holder = js::triple(&keys, &objects, &JsValue::from(leading));
        js::set_list(state, &holder);
        Ok(Self {
            holder,
            keys,
            objects,
        })
    }

    fn leading(&self) -> i32 {
        js::number_at(&self.holder, 2)
    }

    fn set_leading(&self, count: i32) {
        js::put(&self.holder, 2, &JsValue::from(count));
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
            match js::index_in(&self.objects, previous) {
                -1 => self.forget(state),
                at => js::put(&self.objects, at, presence),
            }
            return;
        }
        let Some(index) = index_of_key(key) else {
            js::append(&self.keys, key);
            js::append(&self.objects, presence);
            return;
        };
        // integer-like keys come first, ascending: find the first one above `index`
        let leading = self.leading();
        let (mut low, mut high) = (0, leading);
        while low < high {
            let middle = low + (high - low) / 2;
            match index_of_key(&js::at(&self.keys, middle)) {
                Some(other) if other < index => low = middle + 1,
                _ => high = middle,
            }
        }
        js::insert_at(&self.keys, low, key);
        js::insert_at(&self.objects, low, presence);
        self.set_leading(leading + 1);
    }

    /// `delete state[key]` happened; `presence` was its value.
    pub fn removed(self, state: &JsValue, presence: &JsValue) {
        let at = js::index_in(&self.objects, presence);
        if at < 0 {
            self.forget(state);
            return;
        }
        js::remove_at(&self.keys, at);
        js::remove_at(&self.objects, at);
        let leading = self.leading();
        if at < leading {
            self.set_leading(leading - 1);
        }
    }

    /// phoenix.js's `list(by)`: the presence objects in key order, or `by(key, presence)` of
    /// each.
    pub fn list(&self, by: &JsValue) -> Result<JsValue, JsValue> {
        let objects = js::copy_of(&self.objects);
        if by.is_falsy() {
            return Ok(objects.into());
        }
        // copies: the callback may change the state (and so this cache) while it runs
        let keys = js::copy_of(&self.keys);
        js::held(js::map_pairs(&keys, &objects, by))
    }
}
