//! Routing: a request plus the current snapshots -> a [`Route`]. Pure; no I/O.
//!
//! Architecture invariant: the router does no I/O and takes no lock; it reads the shard
//! map snapshot its caller loaded once for the whole transaction.

pub mod decide;
pub mod hash;
pub mod shardmap;
pub mod sql;

pub use shardmap::{BackendId, ShardMap};

/// Where a transaction's statements go.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Route {
    /// One backend's primary.
    Backend(BackendId),
}

/// Routes the first message of a transaction. Until sharded routing lands (issue 3)
/// every statement goes to the map's default backend.
pub fn route(map: &ShardMap, _message: &[u8]) -> Route {
    Route::Backend(map.default_backend)
}
