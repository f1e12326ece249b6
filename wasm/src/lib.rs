//! # rollcall-wasm
//!
//! The `Presence` of the `rollcall` npm package: phoenix.js's `Presence.syncState`,
//! `Presence.syncDiff`, `Presence.list` and the instance API (`new Presence(channel)`,
//! `onJoin` / `onLeave` / `onSync`, `list`, `inPendingSyncState`), run by
//! [`rollcall_core::presence::sync`] — the same code as the Rust `PresenceState` — over live
//! JavaScript objects. The objects stay JavaScript's: callers see them alias exactly as with
//! phoenix.js (`onLeave`'s `current` is the stored object, `list()` returns stored objects,
//! `syncState` overwrites the caller's `metas`), and no value is serialized across the
//! boundary, only handles.
//!
//! The module is built small: `no_std` on wasm32 (the core's presence algorithm needs only
//! `alloc`), no JSON, formatting or string code, no `js-sys`, a panic is a trap. JavaScript
//! exceptions (a throwing callback, a getter, JSON on a cycle) are caught inside the imported
//! helpers and come back as values (see `js.rs`), so no call leaves the module half-way through
//! Rust code, and there is no module state to poison: every call starts afresh.
#![cfg_attr(target_arch = "wasm32", no_std)]
#![warn(missing_docs)]

extern crate alloc;

mod instance;
mod js;
mod list;
mod model;

use alloc::vec::Vec;
use js::Array;
use list::ListCache;
use model::{key_values, JsModel, States};
use rollcall_core::presence::sync;
use wasm_bindgen::prelude::*;

#[cfg(target_arch = "wasm32")]
#[global_allocator]
static ALLOCATOR: talc::wasm::WasmDynamicTalc = talc::wasm::new_wasm_dynamic_allocator();

#[cfg(target_arch = "wasm32")]
#[panic_handler]
fn panic(_: &core::panic::PanicInfo) -> ! {
    core::arch::wasm32::unreachable()
}

/// phoenix.js `Presence.syncState(currentState, newState, onJoin?, onLeave?)`: a new state
/// (null-prototype; the current one is deep-copied, never changed) brought to `newState`,
/// calling `onJoin` for every key that joined or gained metas, then `onLeave` for every key
/// that vanished, then for every key that lost metas. The `metas` of a new presence that
/// gained metas is overwritten with only the gained ones, as phoenix.js does.
#[wasm_bindgen(js_name = syncState)]
pub fn sync_state(
    current_state: &JsValue,
    new_state: &JsValue,
    on_join: &JsValue,
    on_leave: &JsValue,
) -> Result<JsValue, JsValue> {
    if js::is_nullish(new_state) {
        return Err(js::Failure::NoNewState.error());
    }
    let copy: Array = js::held(js::copy_state(current_state))?.unchecked_into();
    let state = js::at(&copy, 0);
    let (new_keys, new_values) = key_values(new_state)?;
    let states = States {
        old_keys: js::at(&copy, 1).unchecked_into(),
        old_values: js::at(&copy, 2).unchecked_into(),
        new_state,
        new_keys,
        new_values,
    };
    let mut model = JsModel::resync(&state, states, on_join, on_leave);
    sync::sync_state(&mut model)?;
    Ok(state)
}

/// phoenix.js `Presence.syncDiff(state, diff, onJoin?, onLeave?)`: applies every join, then
/// every leave of a copy of `diff` to `state` (changed in place and returned when it has a null
/// prototype, else a null-prototype copy of its top level is), calling `onJoin` / `onLeave`.
#[wasm_bindgen(js_name = syncDiff)]
pub fn sync_diff(
    state: &JsValue,
    diff: &JsValue,
    on_join: &JsValue,
    on_leave: &JsValue,
) -> Result<JsValue, JsValue> {
    apply(state, diff, on_join, on_leave)
}

/// [`sync_diff`]: `state` (made a null-prototype object if it is not one) after the diff,
/// which [`instance`] also applies to an instance's state.
fn apply(
    state: &JsValue,
    diff: &JsValue,
    on_join: &JsValue,
    on_leave: &JsValue,
) -> Result<JsValue, JsValue> {
    let code = js::status(js::open_diff(state, diff))?;
    match code {
        -2 => return Err(js::Failure::NoDiff.error()),
        -3 => return Err(js::Failure::NoJoins.error()),
        _ => {}
    }
    let parts: Array = js::take().unchecked_into();
    let state = js::at(&parts, 0);
    let pairs = |keys: JsValue, values: JsValue| -> Vec<(JsValue, JsValue)> {
        let keys: Array = keys.unchecked_into();
        let values: Array = values.unchecked_into();
        (0..js::len(&keys))
            .map(|i| (js::at(&keys, i), js::at(&values, i)))
            .collect()
    };
    let mut model = JsModel::new(&state, on_join, on_leave);
    sync::apply_joins(&mut model, pairs(js::at(&parts, 1), js::at(&parts, 2)))?;
    if code == 2 {
        return Err(js::Failure::NoLeaves.error());
    }
    sync::apply_leaves(&mut model, pairs(js::at(&parts, 3), js::at(&parts, 4)))?;
    Ok(state)
}

/// phoenix.js `Presence.list(presences, chooser?)`: `chooser(key, presence)` for every key of
/// `presences` in JavaScript order, or the presences themselves (the live objects).
#[wasm_bindgen]
pub fn list(presences: &JsValue, chooser: &JsValue) -> Result<JsValue, JsValue> {
    if let Some(cache) = ListCache::of(presences) {
        return cache.list(chooser);
    }
    js::held(js::map_own(presences, chooser))
}
