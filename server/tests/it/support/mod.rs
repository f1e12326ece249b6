//! What the tests share: an in-process server with a raw Phoenix WebSocket client
//! ([`server`]), real brokers ([`broker`]), clusters of real `rollcall` processes
//! ([`cluster`]) and reserved ports ([`ports`]). Every wait has a deadline.

pub mod alloc;
pub mod broker;
pub mod cluster;
pub mod mesh;
pub mod ports;
pub mod pubsub;
pub mod receiver;
pub mod server;
