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
use crate::moves::gate::Gate;
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

    /// A request begins: the gate epoch it routes under is published (`moves::gate`).
    pub(super) fn begin_request(&mut self) {
        if !self.in_request {
            self.app.gate.enter(&self.info.routing);
            self.in_request = true;
        }
    }

    /// Once nothing routed by the current request is owed, it is over.
    pub(super) fn end_request(&mut self) {
        let quiet = self.pipeline.is_empty() && !self.pipeline.unsynced && self.answering.is_none();
        if self.in_request && quiet {
            Gate::leave(&self.info.routing);
            self.in_request = false;
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
        let epoch = gate.epoch();
        let front = self.front_touch(&snapshot.map, epoch);
        if front.bound {
            self.bound_epoch = epoch;
        }
        let touch = front.touch;
        if touch.is_empty() {
            return Ok(());
        }
        // The gate first: once admitted, the map this statement sees cannot switch
        // the vshard away before the statement ends.
        if gate.active() {
            self.pass_gate(&gate, &touch).await;
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

    /// Waits at the gate while it holds what `touch` needs. Meanwhile the session
    /// publishes no request unless replies are still owed to it: the mover, which
    /// waits for requests begun before its switch, must not wait for one it holds.
    async fn pass_gate(&mut self, gate: &Arc<Gate>, touch: &Touch) {
        let quiet = self.pipeline.is_empty() && !self.pipeline.unsynced;
        if quiet {
            Gate::leave(&self.info.routing);
        }
        gate.admit(touch, &mut self.permits).await;
        if quiet {
            gate.enter(&self.info.routing);
        }
    }

    /// What the request at the front of the buffer touches: its Query, or the Binds
    /// of its extended batch up to Sync. An Execute of a portal bound under another
    /// gate epoch (bound before a move began) may write anything.
    fn front_touch(&self, map: &ShardMap, epoch: u64) -> Front {
        let buf = &self.conn.rbuf[..];
        let mut front = Front::default();
        let out = &mut front.touch;
        let mut unnamed: Option<&[u8]> = None;
        let mut at = 0;
        for (info, payload) in frames_of(buf).take(limits::SHARED_BATCH_MESSAGES_MAX) {
            let frame = &buf[at..at + info.len];
            at += info.len;
            let touched = match info.tag {
                b'Q' => payload
                    .strip_suffix(b"\0")
                    .and_then(|sql| std::str::from_utf8(sql).ok())
                    .and_then(|sql| self.analyze(sql, map).map(|a| (a, locks_rows(sql))))
                    .map(|(analyzed, locks)| with_locks(touch(&analyzed, &[], map), locks)),
                b'P' => {
                    // Only the unnamed statement is bound by an unnamed reference.
                    if payload.first() == Some(&0) {
                        unnamed = Some(frame);
                    }
                    None
                }
                b'B' => {
                    front.bound = true;
                    let locks = self.bound_sql(payload, unnamed).is_some_and(locks_rows);
                    self.with_bound(payload, unnamed, map, |analyzed, params| {
                        with_locks(touch(analyzed, params, map), locks)
                    })
                }
                b'E' if !front.bound && self.bound_epoch != epoch => Some(Touch {
                    vshards: Vec::new(),
                    everywhere: true,
                    write: true,
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
        front
    }
}

/// What a request touches, and whether it binds a portal.
#[derive(Default)]
struct Front {
    touch: Touch,
    bound: bool,
}

/// A read that locks rows (`FOR UPDATE`, `FOR SHARE` ...) holds them like a write.
fn locks_rows(sql: &str) -> bool {
    let lower = sql.to_ascii_lowercase();
    [
        "for update",
        "for share",
        "for no key update",
        "for key share",
    ]
    .iter()
    .any(|clause| lower.contains(clause))
}

fn with_locks(mut touch: Touch, locks: bool) -> Touch {
    touch.write |= locks;
    touch
}

/// Whether a statement touching `touch` runs elsewhere under `new` than under `old`.
fn moved(old: &ShardMap, new: &ShardMap, touch: &Touch) -> bool {
    let owner_changed = |v: &u32| old.owner_name(*v) != new.owner_name(*v);
    if !touch.everywhere {
        return touch.vshards.iter().any(owner_changed);
    }
    // Rows anywhere: a vshard that changed backend, or a backend added or removed
    // (a reordered list or a new DSN alone changes nothing for it).
    names(old) != names(new) || (0..new.vshards()).any(|v| owner_changed(&v))
}

fn names(map: &ShardMap) -> Vec<&str> {
    let mut names: Vec<&str> = map.backends.iter().map(|b| b.name.as_str()).collect();
    names.sort_unstable();
    names
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
