//! phoenix.js's `new Presence(channel, opts)`: an instance follows one channel's presence
//! events. The instance is a plain JavaScript object with phoenix.js's own fields (`state`,
//! `pendingDiffs`, `channel`, `joinRef`, `caller`), which these functions read and write; the
//! package's `Presence` class sets those fields up and binds the channel's events to them.

use crate::apply;
use crate::js::{self, call0, get, set, Array, Field};
use crate::list::ListCache;
use wasm_bindgen::prelude::*;

/// The instance's callbacks, read when an event arrives (so later registrations count).
struct Callbacks {
    on_join: JsValue,
    on_leave: JsValue,
    on_sync: JsValue,
}

impl Callbacks {
    fn of(instance: &JsValue) -> Result<Self, JsValue> {
        let caller = get(instance, Field::Caller)?;
        Ok(Self {
            on_join: get(&caller, Field::OnJoin)?,
            on_leave: get(&caller, Field::OnLeave)?,
            on_sync: get(&caller, Field::OnSync)?,
        })
    }

    fn sync(&self) -> Result<(), JsValue> {
        js::status(js::call_bare(&self.on_sync)).map(|_| ())
    }
}

/// `!this.joinRef || this.joinRef !== this.channel.joinRef()`: whether diffs must wait for a
/// state (before the first one, and after every rejoin until the next one).
#[wasm_bindgen(js_name = presenceInPendingSyncState)]
pub fn in_pending_sync_state(instance: &JsValue) -> Result<bool, JsValue> {
    let join_ref = get(instance, Field::JoinRef)?;
    if join_ref.is_falsy() {
        return Ok(true);
    }
    Ok(join_ref != call0(&get(instance, Field::Channel)?, Field::JoinRef)?)
}

/// The state event: `state = syncState(state, newState)`, then every held-back diff in
/// arrival order, then `onSync()` once.
#[wasm_bindgen(js_name = presenceOnState)]
pub fn on_state(instance: &JsValue, new_state: &JsValue) -> Result<(), JsValue> {
    let callbacks = Callbacks::of(instance)?;
    let join_ref = call0(&get(instance, Field::Channel)?, Field::JoinRef)?;
    set(instance, Field::JoinRef, &join_ref)?;
    let current = get(instance, Field::State)?;
    let state = crate::sync_state(&current, new_state, &callbacks.on_join, &callbacks.on_leave)?;
    set(instance, Field::State, &state)?;
    let pending: Array = get(instance, Field::PendingDiffs)?.unchecked_into();
    // forEach visits the diffs there when it starts
    for i in 0..js::len(&pending) {
        let state = get(instance, Field::State)?;
        let state = apply(
            &state,
            &js::at(&pending, i),
            &callbacks.on_join,
            &callbacks.on_leave,
        )?;
        set(instance, Field::State, &state)?;
    }
    set(instance, Field::PendingDiffs, &js::new_array())?;
    callbacks.sync()
}

/// The diff event: held back while a state is pending, else applied, then `onSync()`.
#[wasm_bindgen(js_name = presenceOnDiff)]
pub fn on_diff(instance: &JsValue, diff: &JsValue) -> Result<(), JsValue> {
    let callbacks = Callbacks::of(instance)?;
    // the method, so that a subclass's override counts, as in phoenix.js
    if call0(instance, Field::InPendingSyncState)?.is_truthy() {
        let diffs: Array = get(instance, Field::PendingDiffs)?.unchecked_into();
        js::append(&diffs, diff);
        return Ok(());
    }
    let state = apply(
        &get(instance, Field::State)?,
        diff,
        &callbacks.on_join,
        &callbacks.on_leave,
    )?;
    set(instance, Field::State, &state)?;
    callbacks.sync()
}

/// `list(by)` of the instance's state, from the state's list cache (made on the first call).
#[wasm_bindgen(js_name = presenceList)]
pub fn instance_list(instance: &JsValue, by: &JsValue) -> Result<JsValue, JsValue> {
    let state = get(instance, Field::State)?;
    let cache = match ListCache::of(&state) {
        Some(cache) => cache,
        // a state that is not a null-prototype object is nobody's: list it afresh
        None if !js::is_null_proto(&state) => return crate::list(&state, by),
        None => ListCache::build(&state)?,
    };
    cache.list(by)
}
