//! # rollcall-server
//!
//! The rollcall presence server as a library: build a [`Router`](axum::Router) with [`app`] and
//! serve it with axum, or run the `rollcall` binary.
#![forbid(unsafe_code)]
#![warn(missing_docs)]

pub mod pubsub;

use std::path::PathBuf;

use axum::routing::get;
use axum::Router;
use tower_http::services::ServeDir;

/// Server configuration.
#[derive(Debug, Clone)]
pub struct Config {
    /// Directory served at `/` (the demo page).
    pub static_dir: PathBuf,
}

/// Builds the HTTP application: the demo page at `/` and `GET /healthz`.
pub fn app(config: &Config) -> Router {
    Router::new()
        .route("/healthz", get(|| async { "ok" }))
        .fallback_service(ServeDir::new(&config.static_dir))
}
