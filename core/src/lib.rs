//! # rollcall-core
//!
//! Everything rollcall *means*, with no I/O: no sockets, no threads, no system clock and no
//! global randomness. Time comes in as an argument and randomness from a seed, so the same crate
//! runs inside the Tokio server, inside the browser (compiled to `wasm32-unknown-unknown`) and
//! inside deterministic simulations in `cargo test`.
//!
//! - [`protocol`] — the Phoenix Channels message and its three wire codecs (V1 JSON, V2 JSON,
//!   V2 binary).
//! - [`presence`] — the client-side presence state with the exact semantics of phoenix.js
//!   (`syncState`, `syncDiff`, `list`).
//! - [`tracker`] — the replicated presence tracker: a delta-state CRDT with vector clocks and the
//!   shard state machine that replicates it between nodes.
//!
//! Without the default `std` feature the crate is `no_std` (with `alloc`) and holds only
//! [`presence::sync`], the presence algorithm the WebAssembly build runs.
#![cfg_attr(not(feature = "std"), no_std)]
#![forbid(unsafe_code)]
#![warn(missing_docs)]

extern crate alloc;

pub mod presence;
#[cfg(feature = "std")]
pub mod protocol;
#[cfg(feature = "std")]
pub mod tracker;
