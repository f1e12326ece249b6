//! The presence algorithm's [`Model`] over live JavaScript objects: keys, presences and refs
//! are handles (`JsValue`) and a metas list is the array itself, so a change to a presence is
//! seen wherever the caller holds it, as in phoenix.js.

use crate::js::{self, held, status, Array, Failure};
use crate::list::ListCache;
use alloc::vec::Vec;
use rollcall_core::presence::sync::{Found, Model, Parts, Resync};
use wasm_bindgen::{JsCast, JsValue};

/// A JavaScript state (a null-prototype object) being synced, with the callbacks of the call.
pub struct JsModel<'a> {
    /// The state object: changed in place.
    state: &'a JsValue,
    /// Whether the state may have a list cache to keep in step (a state `syncState` is still
    /// building cannot: nobody else has seen it).
    listed: bool,
    /// What a `syncState` reads besides the state: the current and new states' entries.
    resync: Option<States<'a>>,
    on_join: &'a JsValue,
    on_leave: &'a JsValue,
}

/// The current state's entries (of which the model's state is a copy) and the new state with
/// its entries, each as key and value arrays in JavaScript key order.
pub struct States<'a> {
    /// The current state's keys.
    pub old_keys: Array,
    /// The current state's values (the copies).
    pub old_values: Array,
    /// The new state.
    pub new_state: &'a JsValue,
    /// The new state's keys.
    pub new_keys: Array,
    /// The new state's values.
    pub new_values: Array,
}

/// A presence's metas, known by the presence (whose `metas` array the JavaScript side reads
/// again when a new list is made of it) and the `phx_ref` of each meta, read in one call.
pub struct Metas {
    presence: JsValue,
    refs: Array,
    len: i32,
}

impl<'a> JsModel<'a> {
    /// A model of `state` with phoenix.js's optional `onJoin` / `onLeave` (falsy: none).
    pub fn new(state: &'a JsValue, on_join: &'a JsValue, on_leave: &'a JsValue) -> Self {
        Self {
            state,
            listed: true,
            resync: None,
            on_join,
            on_leave,
        }
    }

    /// The model `syncState` runs: `state` is its fresh copy of the current state.
    pub fn resync(
        state: &'a JsValue,
        states: States<'a>,
        on_join: &'a JsValue,
        on_leave: &'a JsValue,
    ) -> Self {
        Self {
            listed: false,
            resync: Some(states),
            ..Self::new(state, on_join, on_leave)
        }
    }

    fn states(&self) -> Result<&States<'a>, JsValue> {
        self.resync
            .as_ref()
            .ok_or_else(|| Failure::Internal.error())
    }

    fn list(&self) -> Option<ListCache> {
        if self.listed {
            ListCache::of(self.state)
        } else {
            None
        }
    }
}

/// `Object.getOwnPropertyNames(obj)` and each key's value, in order, as two arrays.
pub fn key_values(obj: &JsValue) -> Result<(Array, Array), JsValue> {
    let pair: Array = held(js::entries_of(obj))?.unchecked_into();
    Ok((
        js::at(&pair, 0).unchecked_into(),
        js::at(&pair, 1).unchecked_into(),
    ))
}

fn positions(at: &[usize]) -> Vec<u32> {
    at.iter().map(|&i| i as u32).collect()
}

/// The positions as the bits of a `u32`, when they all fit.
fn mask(at: &[usize]) -> Option<u32> {
    at.iter().try_fold(0u32, |mask, &i| {
        1u32.checked_shl(i as u32).map(|bit| mask | bit)
    })
}

impl Model for JsModel<'_> {
    type Key = JsValue;
    type Presence = JsValue;
    type Metas = Metas;
    type Ref = JsValue;
    type Error = JsValue;

    fn get(&mut self, key: &JsValue) -> Result<Option<JsValue>, JsValue> {
        Ok(match status(js::presence_at(self.state, key))? {
            1 => Some(js::take()),
            _ => None,
        })
    }

    fn store_copy(
        &mut self,
        key: &JsValue,
        presence: &JsValue,
        previous: Option<&JsValue>,
    ) -> Result<JsValue, JsValue> {
        let code = status(js::store_copy(
            self.state,
            key,
            presence,
            previous.is_some(),
        ))?;
        let stored = js::take();
        if code >= 2 {
            if let Some(list) = self.list() {
                if code == 3 {
                    list.forget(self.state);
                } else {
                    list.stored(self.state, key, &stored, previous);
                }
            }
        }
        Ok(stored)
    }

    fn delete(&mut self, key: &JsValue, presence: &JsValue) -> Result<(), JsValue> {
        if status(js::delete_key(self.state, key))? == 2 {
            if let Some(list) = self.list() {
                list.removed(self.state, presence);
            }
        }
        Ok(())
    }

    fn metas(&mut self, key: &JsValue, presence: &JsValue) -> Result<Metas, JsValue> {
        let len = match status(js::metas_of(presence))? {
            -2 => return Err(Failure::NotAPresence.of(key)),
            -3 => return Err(Failure::NoMetas.of(key)),
            -4 => return Err(Failure::NotAMeta.of(key)),
            len => len,
        };
        Ok(Metas {
            presence: presence.clone(),
            refs: js::take().unchecked_into(),
            len,
        })
    }

    fn refs(&mut self, metas: &Metas) -> Result<Vec<JsValue>, JsValue> {
        Ok((0..metas.len).map(|i| js::at(&metas.refs, i)).collect())
    }

    fn set_metas(
        &mut self,
        presence: &mut JsValue,
        parts: &Parts<'_, Self>,
    ) -> Result<(), JsValue> {
        let undefined = JsValue::UNDEFINED;
        let part = |index: usize| match parts.get(index) {
            Some((metas, at)) => (&metas.presence, *at),
            None => (&undefined, &[][..]),
        };
        let (a, a_at) = part(0);
        let (b, b_at) = part(1);
        let code = match (mask(a_at), mask(b_at)) {
            (Some(a_mask), Some(b_mask)) => {
                js::set_metas(presence, a, a_mask as i32, b, b_mask as i32)
            }
            _ => js::set_metas_at(presence, a, &positions(a_at), b, &positions(b_at)),
        };
        status(code).map(|_| ())
    }

    fn has_no_metas(&mut self, _: &JsValue, presence: &JsValue) -> Result<bool, JsValue> {
        Ok(status(js::metas_empty(presence))? == 1)
    }

    fn same_ref(&mut self, a: &JsValue, b: &JsValue) -> bool {
        a == b
    }

    fn copy(&mut self, presence: &JsValue) -> Result<Option<JsValue>, JsValue> {
        Ok(match status(js::copy_member(presence))? {
            1 => Some(js::take()),
            _ => None,
        })
    }

    fn array_index(&mut self, key: &JsValue) -> Option<u32> {
        js::index_of_key(key)
    }

    fn on_join(
        &mut self,
        key: &JsValue,
        current: Option<&JsValue>,
        joined: &JsValue,
    ) -> Result<(), JsValue> {
        let undefined = JsValue::UNDEFINED;
        let current = current.unwrap_or(&undefined);
        status(js::call(self.on_join, key, current, joined)).map(|_| ())
    }

    fn on_leave(
        &mut self,
        key: &JsValue,
        current: &JsValue,
        left: &JsValue,
    ) -> Result<(), JsValue> {
        status(js::call(self.on_leave, key, current, left)).map(|_| ())
    }
}

impl Resync for JsModel<'_> {
    fn old_entry(&mut self, index: usize) -> Result<(JsValue, JsValue), JsValue> {
        let states = self.states()?;
        let index = index as i32;
        Ok((
            js::at(&states.old_keys, index),
            js::at(&states.old_values, index),
        ))
    }

    fn new_entry(&mut self, index: usize) -> Result<(JsValue, JsValue), JsValue> {
        let states = self.states()?;
        let index = index as i32;
        Ok((
            js::at(&states.new_keys, index),
            js::at(&states.new_values, index),
        ))
    }

    fn in_new_state(&mut self) -> Result<Vec<bool>, JsValue> {
        let states = self.states()?;
        let inherits = !js::is_null_proto(states.new_state);
        let mut kept = alloc::vec![0u8; js::len(&states.old_keys) as usize];
        status(js::in_new_state(
            &states.old_keys,
            states.new_state,
            &states.new_keys,
            &states.new_values,
            inherits,
            &mut kept,
        ))?;
        Ok(kept.into_iter().map(|kept| kept == 1).collect())
    }

    fn found(&mut self) -> Result<Vec<Found>, JsValue> {
        let states = self.states()?;
        let mut found = alloc::vec![0u8; js::len(&states.new_keys) as usize];
        status(js::found(
            self.state,
            &states.old_keys,
            &states.old_values,
            &states.new_keys,
            &states.new_values,
            &mut found,
        ))?;
        Ok(found
            .into_iter()
            .map(|code| match code {
                0 => Found::Absent,
                2 => Found::Unchanged,
                _ => Found::Present,
            })
            .collect())
    }
}
