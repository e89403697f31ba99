//! Routing: a statement plus the shard map snapshot -> a [`decide::Decision`]. No
//! I/O.
//!
//! Architecture invariant: the router does no I/O; its only lock is the plan
//! cache's, held for one lookup. It reads the shard map snapshot its caller loaded.

pub mod copy;
pub mod decide;
pub mod hash;
pub mod load;
pub mod scatter;
pub mod shardmap;
pub mod split;
pub mod sql;
pub mod touch;

pub use shardmap::{BackendId, ShardMap};
