//! Cluster transport: how rollcall nodes send each other tracker deltas and room relays.
//!
//! [`PubSub`] is the contract; [`connect`] picks an adapter from a [`ClusterConfig`]:
//! [`Local`] (single node), [`mesh`] (direct TCP between nodes), [`nats`] or [`redis`] (a broker
//! relays messages).
//!
//! ```no_run
//! # async fn demo() -> Result<(), rollcall_server::pubsub::Error> {
//! use rollcall_server::pubsub::{connect, ClusterConfig, MeshConfig};
//!
//! let seeds = vec!["rollcall-cluster.default.svc:7000".to_string()];
//! let config = ClusterConfig::Mesh(MeshConfig::new("0.0.0.0:7000", seeds, "s3cret"));
//! let cluster = connect("node-a", config).await?;
//! let mut deltas = cluster.subscribe("tracker");
//! cluster.broadcast("tracker", bytes::Bytes::from_static(b"delta"));
//! cluster.send_to("node-b", "tracker", bytes::Bytes::from_static(b"transfer request"));
//! while let Some(envelope) = deltas.recv().await {
//!     println!("{} sent {} bytes", envelope.from, envelope.payload.len());
//! }
//! cluster.shutdown().await;
//! # Ok(())
//! # }
//! ```

pub mod adapter;
pub mod chunked;
pub mod mesh;
pub mod nats;
pub mod redis;

pub use adapter::{connect, ClusterConfig, Envelope, Error, Local, PeerInfo, PubSub, Stats};
pub use chunked::Chunked;
pub use mesh::{Mesh, MeshConfig};
pub use nats::Nats;
pub use redis::Redis;
