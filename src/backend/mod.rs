//! The server side: connections to PostgreSQL, pools, and the topology snapshot that
//! pairs the shard map with one pool per backend.

pub mod dsn;
pub mod mux;
pub mod pool;
pub mod server;
pub mod stream;
pub mod twophase;

use std::sync::Arc;
use std::time::Duration;

use crate::router::{BackendId, ShardMap};
use pool::Pool;

/// The shard map and the pools of its backends, swapped together as one snapshot.
pub struct Topology {
    pub map: ShardMap,
    /// `pools[id]` serves the primary of `map.backends[id]`.
    pub pools: Vec<Arc<Pool>>,
}

impl Topology {
    /// Builds pools for `map`, reusing those of `previous` whose backend and DSN match.
    pub fn new(
        mut map: ShardMap,
        previous: Option<&Topology>,
        size: usize,
        timeout: Duration,
    ) -> Topology {
        if let Some(previous) = previous.filter(|p| p.map.load.len() == map.load.len()) {
            // The load measured so far outlives the map version.
            map.load = previous.map.load.clone();
        }
        let pools = map
            .backends
            .iter()
            .map(|b| {
                let reuse = previous.and_then(|p| {
                    p.pools
                        .iter()
                        .find(|pool| *pool.backend == *b.name && pool.dsn == b.primary)
                });
                match reuse {
                    Some(pool) => pool.clone(),
                    None => Arc::new(Pool::new(
                        &b.name,
                        "primary",
                        b.primary.clone(),
                        size,
                        timeout,
                    )),
                }
            })
            .collect();
        Topology { map, pools }
    }

    pub fn pool(&self, id: BackendId) -> &Arc<Pool> {
        &self.pools[id]
    }
}
