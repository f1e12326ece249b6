//! # rollcall-wasm
//!
//! wasm-bindgen bindings over [`rollcall_core::presence`]: nothing but translation between JS
//! values and core types lives here. The npm package `rollcall` wraps these bindings in the
//! phoenix.js-compatible `Presence` class.
#![warn(missing_docs)]

use wasm_bindgen::prelude::*;

/// The version of the rollcall core compiled into this module.
#[wasm_bindgen(js_name = coreVersion)]
pub fn core_version() -> String {
    env!("CARGO_PKG_VERSION").to_string()
}
