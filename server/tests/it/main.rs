//! The server's integration tests, in one binary so that axum, the broker clients and the
//! server are linked once: one module per area, shared helpers in [`support`].
//!
//! Run one area with a filter, e.g. `cargo test -p rollcall-server --test it cluster_mesh::`.

mod support;

mod api;
mod broadcast;
mod cli;
mod cluster_brokers;
mod cluster_longpoll;
mod cluster_mesh;
mod cluster_shards;
mod coalescing;
mod fetch;
mod flags;
mod fuzz_server;
mod handlers;
mod join_hook;
mod longpoll;
mod memory;
mod metrics;
mod presence;
mod pubsub_brokers;
mod pubsub_mesh;
mod rooms;
mod rules;
mod security_accept;
mod security_cli;
mod security_cluster;
mod security_conns;
mod security_frames;
mod security_limits;
mod security_tokens;
mod webhooks;
mod websocket;
