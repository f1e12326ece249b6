//! What the tests share: an in-process server with a raw Phoenix WebSocket client
//! ([`server`]), real brokers ([`broker`]), and clusters of real `rollcall` processes
//! ([`cluster`]). Every wait has a deadline.

pub mod broker;
pub mod cluster;
pub mod mesh;
pub mod pubsub;
pub mod receiver;
pub mod server;
