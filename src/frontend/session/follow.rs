//! A transaction's map snapshot, and what a vshard move asks of a session.
//!
//! A session takes the running topology (map and pools) at the first message of a
//! transaction and routes the whole transaction with it, so a map swap never moves
//! a transaction in flight, and backend ids stay valid for its servers. One
//! exception: when a vshard the transaction touches has moved since, its rows are on
//! the new backend, so the transaction takes the running map (whose backend list
//! extends its own) and follows them. Before a statement on a moving vshard is
//! routed, the session passes the move's gate (`moves::gate`), which may hold it.
//!
//! Architecture invariant: an idle session holds no snapshot and no permit, so a
//! mover waiting for old snapshots or permits waits only for work in flight.

use std::sync::Arc;

use super::shared::frames_of;
use super::Session;
use crate::backend::Topology;
use crate::limits;
use crate::router::touch::{touch, Touch};
use crate::router::ShardMap;

impl Session {
    /// The topology the session routes with: its transaction's snapshot, or the
    /// running one when it holds none.
    pub(super) fn topology(&self) -> Arc<Topology> {
        match &self.snapshot {
            Some(topology) => topology.clone(),
            None => self.app.topology.load_full(),
        }
    }

    /// The snapshot of the transaction starting now (kept if one is held).
    pub(super) fn take_snapshot(&mut self) -> Arc<Topology> {
        let app = &self.app;
        self.snapshot
            .get_or_insert_with(|| app.topology.load_full())
            .clone()
    }

    /// A transaction, or a server, or a BEGIN the proxy answered, is open.
    fn open(&self) -> bool {
        self.server.is_some()
            || !self.parked.is_empty()
            || self.deferred_begin.is_some()
            || self.pipeline.tx_status != b'I'
    }

    /// Lets go of the snapshot and the gate's permits once nothing is open and
    /// nothing is owed.
    pub(super) fn settle(&mut self) {
        let settled = !self.open()
            && self.pipeline.is_empty()
            && !self.pipeline.unsynced
            && self.answering.is_none();
        if settled {
            self.snapshot = None;
            self.permits.clear();
        }
    }

    /// Passes the request at the front of the client's buffer through the gate of
    /// a move under way, and makes the snapshot follow vshards it touches that
    /// moved. `Err(why)`: the transaction cannot follow (backends were removed or
    /// reordered since it began); the caller refuses the front message.
    pub(super) async fn admit(&mut self) -> Result<(), String> {
        let gate = self.app.gate.clone();
        let stale = |s: &Session| {
            s.snapshot
                .as_ref()
                .is_some_and(|t| t.map.version != s.app.topology.load().map.version)
        };
        if self.pipeline.skip_until_sync || !(gate.active() || stale(self)) {
            return Ok(());
        }
        let snapshot = self.take_snapshot();
        let touch = self.front_touch(&snapshot.map);
        if touch.is_empty() {
            return Ok(());
        }
        // The gate first: once admitted, the map this statement sees cannot switch
        // the vshard away before the statement ends.
        if gate.active() {
            gate.admit(&touch, &mut self.permits).await;
        }
        let current = self.app.topology.load_full();
        if current.map.version == snapshot.map.version
            || !moved(&snapshot.map, &current.map, &touch)
        {
            return Ok(());
        }
        if self.open() && !extends(&snapshot, &current) {
            return Err(format!(
                "the shard map changed during this transaction (version {} to {}) in a way \
                 it cannot follow: backends were removed or reordered; roll back and retry",
                snapshot.map.version, current.map.version
            ));
        }
        tracing::debug!(
            from = snapshot.map.version,
            to = current.map.version,
            "transaction follows moved vshards"
        );
        self.snapshot = Some(current);
        Ok(())
    }

    /// What the request at the front of the buffer touches: its Query, or the Binds
    /// of its extended batch up to Sync.
    fn front_touch(&self, map: &ShardMap) -> Touch {
        let buf = &self.conn.rbuf[..];
        let mut out = Touch::default();
        let mut unnamed: Option<&[u8]> = None;
        let mut at = 0;
        for (info, payload) in frames_of(buf).take(limits::SHARED_BATCH_MESSAGES_MAX) {
            let frame = &buf[at..at + info.len];
            at += info.len;
            let touched = match info.tag {
                b'Q' => payload
                    .strip_suffix(b"\0")
                    .and_then(|sql| std::str::from_utf8(sql).ok())
                    .and_then(|sql| self.analyze(sql, map))
                    .map(|analyzed| touch(&analyzed, &[], map)),
                b'P' => {
                    unnamed = Some(frame);
                    None
                }
                b'B' => self.with_bound(payload, unnamed, map, |analyzed, params| {
                    touch(analyzed, params, map)
                }),
                _ => None,
            };
            if let Some(t) = touched {
                out.vshards.extend(t.vshards);
                out.everywhere |= t.everywhere;
                out.write |= t.write;
            }
            if matches!(info.tag, b'Q' | b'S') {
                break;
            }
        }
        out.vshards.sort_unstable();
        out.vshards.dedup();
        out
    }
}

/// Whether a statement touching `touch` runs elsewhere under `new` than under `old`.
fn moved(old: &ShardMap, new: &ShardMap, touch: &Touch) -> bool {
    // Rows anywhere: any change of backends or assignment matters.
    touch.everywhere
        || touch
            .vshards
            .iter()
            .any(|&v| old.owner_name(v) != new.owner_name(v))
}

/// Whether `new` keeps every backend of `old` at the same index with the same pool,
/// so the ids a transaction holds servers by mean the same under both.
fn extends(old: &Topology, new: &Topology) -> bool {
    old.pools.len() <= new.pools.len()
        && old
            .pools
            .iter()
            .zip(&new.pools)
            .all(|(a, b)| Arc::ptr_eq(a, b))
}
