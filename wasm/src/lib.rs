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
use wasm_bindgen::prelude::*;

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

/// [`plan::plan_state`] over its flat JSON input.
#[wasm_bindgen(js_name = planState)]
pub fn plan_state(input: &str) -> Result<Vec<i32>, JsError> {
    let refs: Vec<plan::RefKey> = parse("state plan input", input)?;
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

    /// [`plan::KeyIndex::plan_diff`]; `undefined` when the index is out of step with the
    /// caller's state (reset it and ask again).
    #[wasm_bindgen(js_name = planDiff)]
    pub fn plan_diff(&mut self, input: &str) -> Result<Option<Vec<i32>>, JsError> {
        let input: plan::DiffInput = parse("diff plan input", input)?;
        Ok(self.0.plan_diff(&input).ok())
    }
}
