//! # rollcall-wasm
//!
//! wasm-bindgen bindings over [`rollcall_core::presence`]: nothing but translation between JS
//! values and core types lives here. The npm package `rollcall` wraps these bindings in the
//! phoenix.js-compatible `Presence` class, which keeps the JS objects and asks the core what to
//! do with them (see `docs/ARCHITECTURE.md`, "Presence in the npm package").
//!
//! Inputs arrive as one JSON string per call (built by `JSON.stringify`, which is native and
//! fast) and answers leave as one `Int32Array` / `Uint32Array`, so a call costs one crossing
//! each way whatever the size of the diff.
#![warn(missing_docs)]

use rollcall_core::presence::plan;
use std::cell::RefCell;
use wasm_bindgen::prelude::*;

thread_local! {
    /// The answer of the last `*Into` call, read by JS straight from wasm memory: no
    /// allocation, copy or free per call, which matters for one-key diffs.
    static ANSWER: RefCell<Vec<i32>> = const { RefCell::new(Vec::new()) };
    /// Why the last `*Into` call failed.
    static LAST_ERROR: RefCell<String> = const { RefCell::new(String::new()) };
}

/// Stores `answer` for JS to read and returns its length, or -1 after storing the error.
fn answer(result: Result<Vec<i32>, String>) -> i32 {
    match result {
        Ok(out) => ANSWER.with(|a| {
            let mut a = a.borrow_mut();
            a.clear();
            a.extend_from_slice(&out);
            a.len() as i32
        }),
        Err(e) => {
            LAST_ERROR.with(|l| *l.borrow_mut() = e);
            -1
        }
    }
}

/// Where the answer of the last `*Into` call starts in wasm memory (a byte offset; it may move
/// after any call, so read it after each one).
#[wasm_bindgen(js_name = answerPtr)]
pub fn answer_ptr() -> usize {
    ANSWER.with(|a| a.borrow().as_ptr() as usize)
}

/// Why the last `*Into` call returned -1.
#[wasm_bindgen(js_name = lastError)]
pub fn last_error() -> String {
    LAST_ERROR.with(|l| l.borrow().clone())
}

/// The module's memory, for reading answers. (Not named `memory`: that export name is taken by
/// the memory itself.)
#[wasm_bindgen(js_name = answerMemory)]
pub fn answer_memory() -> JsValue {
    wasm_bindgen::memory()
}

fn parse_flat<T>(input: &str, then: impl FnOnce(&plan::DiffInput<'_>) -> T) -> Result<T, String> {
    let tokens: Vec<plan::RefKey<'_>> =
        serde_json::from_str(input).map_err(|e| format!("rollcall: bad diff plan input: {e}"))?;
    let diff = plan::DiffInput::from_flat(&tokens)
        .ok_or_else(|| "rollcall: bad diff plan input: wrong shape".to_owned())?;
    Ok(then(&diff))
}

/// [`plan::plan_diff`] over the flat JSON form of [`plan::DiffInput::from_flat`]; the answer
/// is left in wasm memory (see `answerPtr`), its length returned, -1 on bad input (see
/// `lastError`).
#[wasm_bindgen(js_name = planDiffInto)]
pub fn plan_diff_into(input: &str) -> i32 {
    answer(parse_flat(input, plan::plan_diff))
}

/// The version of the rollcall core compiled into this module.
#[wasm_bindgen(js_name = coreVersion)]
pub fn core_version() -> String {
    env!("CARGO_PKG_VERSION").to_string()
}

fn parse<'a, T: serde::Deserialize<'a>>(what: &str, input: &'a str) -> Result<T, JsError> {
    serde_json::from_str(input).map_err(|e| JsError::new(&format!("rollcall: bad {what}: {e}")))
}

/// [`plan::plan_diff`] over a JSON-encoded [`plan::DiffInput`].
#[wasm_bindgen(js_name = planDiff)]
pub fn plan_diff(input: &str) -> Result<Vec<i32>, JsError> {
    Ok(plan::plan_diff(&parse("diff plan input", input)?))
}

/// [`plan::plan_state`] over its flat JSON input, as UTF-8 bytes (a large input is encoded
/// faster by `TextEncoder` than by wasm-bindgen's per-character string copy).
#[wasm_bindgen(js_name = planState)]
pub fn plan_state(input: &[u8]) -> Result<Vec<i32>, JsError> {
    let refs: Vec<plan::RefKey<'_>> = serde_json::from_slice(input)
        .map_err(|e| JsError::new(&format!("rollcall: bad state plan input: {e}")))?;
    Ok(plan::plan_state(&refs))
}

/// A [`plan::KeyIndex`]: the keys of one `Presence` instance's state, in JavaScript order,
/// under stable slot numbers.
#[wasm_bindgen]
#[derive(Default)]
pub struct KeyIndex(plan::KeyIndex);

#[wasm_bindgen]
impl KeyIndex {
    /// An empty index.
    #[wasm_bindgen(constructor)]
    pub fn new() -> KeyIndex {
        KeyIndex::default()
    }

    /// Number of keys.
    #[wasm_bindgen(getter)]
    pub fn size(&self) -> usize {
        self.0.len()
    }

    /// Re-indexes from a JSON array of keys in JavaScript order; returns their slots.
    pub fn reset(&mut self, keys: &str) -> Result<Vec<u32>, JsError> {
        let keys: Vec<String> = parse("key list", keys)?;
        Ok(self.0.reset(keys))
    }

    /// Slots in JavaScript key order.
    pub fn order(&self) -> Vec<u32> {
        self.0.order()
    }

    /// [`plan::KeyIndex::plan_diff`] over the flat JSON form of
    /// [`plan::DiffInput::from_flat`]; `undefined` when the index is out of step with the
    /// caller's state (reset it and ask again).
    #[wasm_bindgen(js_name = planDiff)]
    pub fn plan_diff(&mut self, input: &str) -> Result<Option<Vec<i32>>, JsError> {
        parse_flat(input, |diff| self.0.plan_diff(diff).ok()).map_err(|e| JsError::new(&e))
    }
}
