//! What the module imports from JavaScript beyond `js-sys` (`js/values.js`): JSON copies of
//! plain data, and the property reads and writes of presence objects, each one call across the
//! boundary.
//!
//! A JavaScript exception must never unwind through WebAssembly (it would skip the Rust frames'
//! epilogues and leave the module's stack pointer behind), so every import that can throw —
//! it runs a callback, a getter, or JSON on a cycle — catches inside JavaScript and answers a
//! status: a number, with the value (or the exception, when the status is negative) held for
//! [`take`]. [`held`] turns that pair into a `Result`. This is cheaper than wasm-bindgen's
//! `catch`, which matters for calls made once per key.
//!
//! Arrays are worked on through the few functions here too, rather than `js-sys`: they are
//! imported directly (no glue function in between), and `js-sys` would bring wasm-bindgen's
//! closure support into the module, and with it glue that sets up a `TextDecoder` when the
//! module loads (which test environments such as jsdom lack).

use wasm_bindgen::prelude::*;

#[wasm_bindgen(module = "/js/values.js")]
extern "C" {
    /// A JavaScript array.
    #[wasm_bindgen(typescript_type = "Array<any>")]
    pub type Array;
    /// `array[at]`.
    pub fn at(array: &Array, at: i32) -> JsValue;
    /// `array.length`.
    pub fn len(array: &Array) -> i32;
    /// `array[at] = value`.
    pub fn put(array: &Array, at: i32, value: &JsValue);
    /// `array.push(value)`.
    pub fn append(array: &Array, value: &JsValue);
    /// `array.splice(at, 0, value)`.
    #[wasm_bindgen(js_name = insertAt)]
    pub fn insert_at(array: &Array, at: i32, value: &JsValue);
    /// `array.indexOf(value)`.
    #[wasm_bindgen(js_name = indexIn)]
    pub fn index_in(array: &Array, value: &JsValue) -> i32;
    /// `array.slice()`.
    #[wasm_bindgen(js_name = copyOf)]
    pub fn copy_of(array: &Array) -> Array;
    /// `[]`.
    #[wasm_bindgen(js_name = newArray)]
    pub fn new_array() -> Array;
    /// `[a, b, c]`.
    pub fn triple(a: &JsValue, b: &JsValue, c: &JsValue) -> Array;

    /// The value (or exception) the last status-answering call held.
    pub fn take() -> JsValue;

    /// A JSON copy of `value` as an object member is copied: 1, or 0 when JSON drops it.
    #[wasm_bindgen(js_name = copyMember)]
    pub fn copy_member(value: &JsValue) -> i32;
    /// `[copy, keys, values]`: `toNullProtoObj(clone(state))`, its own keys and their values.
    #[wasm_bindgen(js_name = copyState)]
    pub fn copy_state(state: &JsValue) -> i32;
    /// `[keys, values]` of the own properties of `obj`; the status is their number.
    #[wasm_bindgen(js_name = entriesOf)]
    pub fn entries_of(obj: &JsValue) -> i32;
    /// What `syncDiff` reads first: `[toNullProtoObj(state), joinKeys, joinValues, leaveKeys,
    /// leaveValues]` of a copy of `diff`. 1; 2 when `leaves` is missing; -2 when the copy is
    /// null or undefined; -3 when `joins` is missing.
    #[wasm_bindgen(js_name = openDiff)]
    pub fn open_diff(state: &JsValue, diff: &JsValue) -> i32;
    /// `obj[key]`: 1 when truthy (held), 0 when falsy.
    #[wasm_bindgen(js_name = presenceAt)]
    pub fn presence_at(obj: &JsValue, key: &JsValue) -> i32;
    /// For each of `old_keys`, 1 in `out` when `newState[key]` is truthy (own properties only
    /// when `inherits`), else 0: status 1.
    #[wasm_bindgen(js_name = inNewState)]
    pub fn in_new_state(
        old_keys: &Array,
        new_state: &JsValue,
        new_keys: &Array,
        new_values: &Array,
        inherits: bool,
        out: &mut [u8],
    ) -> i32;
    /// For each of `new_keys`, what `state` holds under it, in `out`: 0 nothing (or falsy), 2
    /// a presence whose metas carry the same refs as the new one's position by position, 1
    /// another: status 1.
    pub fn found(
        state: &JsValue,
        old_keys: &Array,
        old_values: &Array,
        new_keys: &Array,
        new_values: &Array,
        out: &mut [u8],
    ) -> i32;
    /// `state[key] = ` a JSON copy of `presence`, the copy held: 1 when the state has no list
    /// cache, 2 when it has one, 3 when it has one but the key held a (falsy) value other than
    /// the previous presence the caller knows of.
    #[wasm_bindgen(js_name = storeCopy)]
    pub fn store_copy(
        state: &JsValue,
        key: &JsValue,
        presence: &JsValue,
        previous_known: bool,
    ) -> i32;
    /// `delete state[key]`: 2 when the state has a list cache, else 1.
    #[wasm_bindgen(js_name = deleteKey)]
    pub fn delete_key(state: &JsValue, key: &JsValue) -> i32;
    /// `presence.metas`: its length with the `phx_ref` of each meta held; -2 when the presence
    /// is null or undefined, -3 when `metas` is not an array, -4 when a meta is null or
    /// undefined.
    #[wasm_bindgen(js_name = metasOf)]
    pub fn metas_of(presence: &JsValue) -> i32;
    /// `presence.metas = ` the metas of presence `a` at the positions whose bits are set in
    /// `a_mask`, then those of presence `b` in `b_mask`: 1.
    #[wasm_bindgen(js_name = setMetas)]
    pub fn set_metas(presence: &JsValue, a: &JsValue, a_mask: i32, b: &JsValue, b_mask: i32)
        -> i32;
    /// [`set_metas`] with the positions listed, for lists longer than 32.
    #[wasm_bindgen(js_name = setMetasAt)]
    pub fn set_metas_at(
        presence: &JsValue,
        a: &JsValue,
        a_at: &[u32],
        b: &JsValue,
        b_at: &[u32],
    ) -> i32;
    /// `presence.metas.length === 0`: 1 or 0.
    #[wasm_bindgen(js_name = metasEmpty)]
    pub fn metas_empty(presence: &JsValue) -> i32;
    /// `f(a, b, c)` with `this` undefined (nothing when `f` is falsy): 1.
    pub fn call(f: &JsValue, a: &JsValue, b: &JsValue, c: &JsValue) -> i32;
    /// `f()`: 1.
    #[wasm_bindgen(js_name = callBare)]
    pub fn call_bare(f: &JsValue) -> i32;
    /// phoenix.js's list of `obj`: `chooser(key, presence)` (or the presence when `chooser` is
    /// falsy) for each own key: 1, the array held.
    #[wasm_bindgen(js_name = mapOwn)]
    pub fn map_own(obj: &JsValue, chooser: &JsValue) -> i32;
    /// `chooser(keys[i], objects[i])` for each `i`: 1, the array held.
    #[wasm_bindgen(js_name = mapPairs)]
    pub fn map_pairs(keys: &Array, objects: &Array, chooser: &JsValue) -> i32;

    /// Whether `obj` is an object with a null prototype.
    #[wasm_bindgen(js_name = isNullProto)]
    pub fn is_null_proto(obj: &JsValue) -> bool;
    /// `v === null || v === undefined`.
    #[wasm_bindgen(js_name = isNullish)]
    pub fn is_nullish(v: &JsValue) -> bool;
    /// The `TypeError` for a malformed value (see [`Failure`]), naming `key` where it says.
    pub fn failure(code: i32, key: &JsValue) -> JsValue;
    /// The numeric value of `key` if JavaScript lists it among an object's integer-like keys,
    /// else -1.
    #[wasm_bindgen(js_name = arrayIndex)]
    pub fn array_index(key: &JsValue) -> f64;

    /// `array.splice(at, 1)`.
    #[wasm_bindgen(js_name = removeAt)]
    pub fn remove_at(array: &Array, at: i32);
    /// `array[at]` when it is a number, else 0.
    #[wasm_bindgen(js_name = numberAt)]
    pub fn number_at(array: &Array, at: i32) -> i32;
    /// The list cache of a state object (`[keys, objects, integer-like key count]`).
    #[wasm_bindgen(js_name = listOf)]
    pub fn list_of(state: &JsValue) -> JsValue;
    /// Sets the list cache of a state object.
    #[wasm_bindgen(js_name = setList)]
    pub fn set_list(state: &JsValue, list: &Array);
    /// Forgets the list cache of a state object.
    #[wasm_bindgen(js_name = dropList)]
    pub fn drop_list(state: &JsValue);

    /// `obj[FIELDS[field]]` held (see [`Field`]).
    pub fn field(obj: &JsValue, field: i32) -> i32;
    /// `obj[FIELDS[field]] = value`: 1.
    #[wasm_bindgen(js_name = setField)]
    pub fn set_field(obj: &JsValue, field: i32, value: &JsValue) -> i32;
    /// `obj[FIELDS[field]]()` held.
    #[wasm_bindgen(js_name = callMethod)]
    pub fn call_method(obj: &JsValue, field: i32) -> i32;
}

/// The property names the instance functions use, numbered as `FIELDS` in `js/values.js`.
#[derive(Clone, Copy)]
pub enum Field {
    /// `state`
    State = 0,
    /// `pendingDiffs`
    PendingDiffs = 1,
    /// `channel`
    Channel = 2,
    /// `joinRef`
    JoinRef = 3,
    /// `caller`
    Caller = 4,
    /// `onJoin`
    OnJoin = 5,
    /// `onLeave`
    OnLeave = 6,
    /// `onSync`
    OnSync = 7,
    /// `inPendingSyncState`
    InPendingSyncState = 8,
}

/// `obj[field]`.
pub fn get(obj: &JsValue, name: Field) -> Result<JsValue, JsValue> {
    held(field(obj, name as i32))
}

/// `obj[field] = value`.
pub fn set(obj: &JsValue, name: Field, value: &JsValue) -> Result<(), JsValue> {
    status(set_field(obj, name as i32, value)).map(|_| ())
}

/// `obj[field]()`.
pub fn call0(obj: &JsValue, name: Field) -> Result<JsValue, JsValue> {
    held(call_method(obj, name as i32))
}

/// A status-answering call's outcome: `Ok(status)` when it did not throw (take the value with
/// [`take`] where the status says one is held), `Err(exception)` when it did.
pub fn status(code: i32) -> Result<i32, JsValue> {
    if code == -1 {
        Err(take())
    } else {
        Ok(code)
    }
}

/// The value a status-1 call held, or its exception.
pub fn held(code: i32) -> Result<JsValue, JsValue> {
    status(code).map(|_| take())
}

/// The malformed values this module refuses, each with its `TypeError` (message in
/// `js/values.js`).
#[derive(Clone, Copy)]
pub enum Failure {
    /// A `syncState` whose new state is null or undefined.
    NoNewState = 0,
    /// A diff that is null or undefined.
    NoDiff = 1,
    /// A diff without `joins`.
    NoJoins = 2,
    /// A diff without `leaves`.
    NoLeaves = 3,
    /// A presence that is null or undefined.
    NotAPresence = 4,
    /// A presence whose `metas` is not an array.
    NoMetas = 5,
    /// A meta that is null or undefined.
    NotAMeta = 6,
    /// A call this module made out of order (a bug).
    Internal = 7,
}

impl Failure {
    /// The `TypeError`, naming `key`.
    pub fn of(self, key: &JsValue) -> JsValue {
        failure(self as i32, key)
    }

    /// The `TypeError`, for failures that name no key.
    pub fn error(self) -> JsValue {
        failure(self as i32, &JsValue::UNDEFINED)
    }
}

/// The numeric value of `key` if JavaScript lists it among an object's integer-like keys.
pub fn index_of_key(key: &JsValue) -> Option<u32> {
    let index = array_index(key);
    (index >= 0.0).then_some(index as u32)
}
