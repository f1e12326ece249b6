//! Cluster transport: how rollcall nodes send each other tracker deltas and room relays.
//!
//! [`PubSub`] is the contract; [`connect`] picks an adapter from a [`ClusterConfig`]:
//! [`Local`] (single node), [`mesh`] (direct TCP between nodes), [`nats`] or [`redis`] (a broker
//! relays messages).

pub mod adapter;
pub mod mesh;
pub mod nats;
pub mod redis;

pub use adapter::{connect, ClusterConfig, Envelope, Error, Local, PeerInfo, PubSub, Stats};
pub use mesh::{Mesh, MeshConfig};
pub use nats::Nats;
pub use redis::Redis;
