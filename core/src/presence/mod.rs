//! Client-side presence state with the exact semantics of phoenix.js `Presence`
//! (`syncState`, `syncDiff`, `list`).
//!
//! A [`PresenceState`] maps a key (usually a user id) to a [`Presence`]: a JSON object with a
//! `metas` array, one meta per connection, each carrying a `phx_ref`. Two things make this more
//! than a map:
//!
//! - **Key order is the order JavaScript reports.** phoenix.js iterates its state objects with
//!   `Object.getOwnPropertyNames`, so integer-like keys (`"0"`..`"4294967294"`, no leading zeros)
//!   come first in ascending numeric order, then every other key in insertion order. Deleting a
//!   key and adding it again moves it to the end; replacing its value does not move it. `list`,
//!   events and serialization all follow this order, so a Rust client and a JS client show the
//!   same list.
//! - **Changes are reported as values.** [`PresenceState::sync_diff`] and
//!   [`PresenceState::sync_state`] return the [`PresenceEvent`]s that phoenix.js would pass to
//!   `onJoin` / `onLeave`, in the same order and with the same before/after snapshots, so any
//!   shell (Rust, or the JS `Presence` over wasm) can drive its callbacks from them.
//!
//! `sync_diff` costs O(size of the diff · log N), never O(N): it only touches the keys the diff
//! names.
//!
//! The rules themselves live in [`sync`], written over a [`sync::Model`] of where presences
//! live; [`PresenceState`] is its model over `serde_json` values, and the npm package's
//! `Presence` (crate `rollcall-wasm`) is its model over live JavaScript objects. Without the
//! `std` feature only [`sync`] and [`array_index`] are built, with no JSON code.

mod order;
pub mod sync;

pub use order::array_index;

#[cfg(feature = "std")]
mod json;
#[cfg(feature = "std")]
pub use json::{same_ref, Diff, Presence, PresenceError, PresenceEvent, PresenceState};
#[cfg(feature = "std")]
pub use order::JsOrderMap;
