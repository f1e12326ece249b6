//! Embedding rollcall in an axum application: the app keeps its own routes and serves
//! rollcall's socket endpoints beside them, and reads presence from Rust.
//!
//! ```sh
//! cargo run -p rollcall-server --example embed
//! # then connect a phoenix client to ws://127.0.0.1:4001/socket and join room:lobby;
//! curl http://127.0.0.1:4001/lobby     # who is in room:lobby, in the presence_state shape
//! ```

use axum::extract::State;
use axum::routing::get;
use axum::{Json, Router};
use rollcall_server::{Config, Server};
use serde_json::Value;

/// The application's own handler: reads the room from the node's tracker (cluster-wide).
async fn lobby(State(server): State<std::sync::Arc<Server>>) -> Json<Value> {
    Json(server.tracker().list("room:lobby").await)
}

#[tokio::main]
async fn main() -> std::io::Result<()> {
    let server = std::sync::Arc::new(Server::new(Config {
        // The app serves its own pages; rollcall serves only the sockets and /healthz.
        static_dir: None,
        ..Config::default()
    }));
    let app = Router::new()
        .route("/lobby", get(lobby))
        .with_state(server.clone())
        .merge(server.router());
    let listener = tokio::net::TcpListener::bind("127.0.0.1:4001").await?;
    println!(
        "app with rollcall listening on http://{}",
        listener.local_addr()?
    );
    axum::serve(listener, app).await
}
