//! Decisions that need several backends: which of them run where, as what, and
//! why one that cannot run is refused.

use bytes::{Bytes, BytesMut};

use crate::protocol::messages;
use crate::router::decide::{Decision, Merge};
use crate::router::{BackendId, ShardMap};

/// A read on several backends that can be merged: the backends (every one, or
/// those of its keys) and how.
pub(super) fn read_on(decision: &Decision, map: &ShardMap) -> Option<(Vec<BackendId>, Merge)> {
    match decision {
        Decision::Scatter(merge @ (Merge::Concat | Merge::Combine(_))) => {
            Some(((0..map.backends.len()).collect(), merge.clone()))
        }
        Decision::Gather {
            backends,
            merge: merge @ (Merge::Concat | Merge::Combine(_)),
        } => Some((backends.clone(), merge.clone())),
        _ => None,
    }
}

/// Decisions that run on several backends inside a transaction as an extended
/// batch (`batch.rs`).
pub(super) fn spreads_batch(decision: &Decision) -> bool {
    matches!(
        decision,
        Decision::All
            | Decision::Many { .. }
            | Decision::Split(_)
            | Decision::Scatter(Merge::Concat | Merge::Combine(_))
            | Decision::Gather {
                merge: Merge::Concat | Merge::Combine(_),
                ..
            }
    )
}

/// Decisions that run on several backends inside a transaction (as simple Queries):
/// those of a batch, and COPY.
pub(super) fn spreads(decision: &Decision) -> bool {
    spreads_batch(decision) || matches!(decision, Decision::CopyIn(_) | Decision::CopyOut { .. })
}

/// A Query frame's INSERT split into one Query frame per backend.
pub(super) fn split_query(
    frame: &[u8],
    split: &[(BackendId, Vec<usize>)],
) -> Option<Vec<(BackendId, Bytes)>> {
    let sql = std::str::from_utf8(frame.get(5..)?.strip_suffix(b"\0")?).ok()?;
    let parts = crate::router::split::split_insert(sql, split)?;
    Some(
        parts
            .into_iter()
            .map(|(backend, sql)| {
                let mut out = BytesMut::new();
                messages::query(&mut out, &sql);
                (backend, out.freeze())
            })
            .collect(),
    )
}

/// Why a decision that needs several backends cannot run (yet).
pub(super) fn needs_several(decision: &Decision) -> String {
    let what = match decision {
        Decision::Scatter(Merge::No(why))
        | Decision::Gather {
            merge: Merge::No(why),
            ..
        } => return format!("pgshard cannot run this statement yet: {why}"),
        Decision::Scatter(_) => {
            "it reads a sharded table without its key (gathered only for a simple Query \
             outside a transaction)"
        }
        Decision::Split(_) => {
            "its rows belong on several backends (split only for a simple Query with the \
             values written out, outside a transaction)"
        }
        Decision::CopyIn(_) | Decision::CopyOut { .. } => {
            "COPY with a sharded table runs only as a simple Query"
        }
        Decision::All | Decision::Maintenance => {
            "it runs on every backend, which pgshard does only outside a transaction"
        }
        _ => "it needs several backends",
    };
    format!("pgshard cannot run this statement yet: {what}")
}
