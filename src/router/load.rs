//! Statements routed to each vshard by key since the proxy started: the measured
//! load `pgshard rebalance --by load` evens out. One relaxed atomic add per key
//! routed; shared by every map version with the same vshard count.

use std::sync::atomic::{AtomicU64, Ordering::Relaxed};

pub struct VshardLoad {
    counts: Box<[AtomicU64]>,
}

impl VshardLoad {
    pub fn new(vshards: u32) -> VshardLoad {
        VshardLoad {
            counts: (0..vshards).map(|_| AtomicU64::new(0)).collect(),
        }
    }

    pub fn record(&self, vshard: u32) {
        if let Some(count) = self.counts.get(vshard as usize) {
            count.fetch_add(1, Relaxed);
        }
    }

    pub fn len(&self) -> usize {
        self.counts.len()
    }

    pub fn is_empty(&self) -> bool {
        self.counts.is_empty()
    }

    pub fn snapshot(&self) -> Vec<u64> {
        self.counts.iter().map(|c| c.load(Relaxed)).collect()
    }
}

impl std::fmt::Debug for VshardLoad {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "VshardLoad({} vshards)", self.counts.len())
    }
}
