//! The replicated presence tracker (delta-state CRDT and shard state machine).
