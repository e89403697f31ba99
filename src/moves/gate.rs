//! The gate a vshard move closes on the statements of its vshard, for a moment.
//!
//! Sessions are admitted before a statement is routed (`Gate::admit`): a write of
//! the moving vshard takes a writer permit, a statement on every vshard (a keyless
//! read or write, DDL, COPY) takes a spanning permit, and each permit is kept until
//! the session's transaction ends. The mover holds writes while it copies the last
//! changes and switches the map, waiting first for the writer permits already out
//! to come back; it holds spanning statements while the vshard's rows exist on both
//! backends. Held statements wait (they are never failed) and every other vshard,
//! and reads by key, keep flowing. A session that holds a permit is never held by
//! that move: the mover is waiting for it.
//!
//! Requests that began before the move could not see it: each session publishes,
//! while a request of its runs, the gate state it began under (`enter`, `leave`);
//! the mover waits for requests begun under an older state (`routing_before`)
//! before it installs its capture triggers, and again after the switch before it
//! deletes the source's rows.
//!
//! Architecture invariant: when no move runs, a session pays two atomic stores and
//! a load per request here.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use tokio::sync::Notify;

use crate::router::touch::Touch;

/// A session with no request running.
pub const IDLE: u64 = u64::MAX;
/// A session starting a request, its state not published yet.
const ENTERING: u64 = u64::MAX - 1;

#[derive(Default)]
pub struct Gate {
    /// Even: no move; odd: a move runs. Raised at each start, switch and end.
    epoch: AtomicU64,
    state: Mutex<Option<Moving>>,
    /// Woken on every change: held statements, and the mover waiting for permits.
    changed: Notify,
    next_id: AtomicU64,
}

/// The move under way.
struct Moving {
    id: u64,
    vshard: u32,
    hold_writes: bool,
    hold_spanning: bool,
    writers: usize,
    spanning: usize,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind {
    Writer,
    Spanning,
}

/// A statement's admission past a move; returned to the gate on drop.
pub struct Permit {
    gate: Arc<Gate>,
    id: u64,
    kind: Kind,
}

impl Drop for Permit {
    fn drop(&mut self) {
        let mut state = self.gate.lock();
        if let Some(moving) = state.as_mut().filter(|m| m.id == self.id) {
            match self.kind {
                Kind::Writer => moving.writers -= 1,
                Kind::Spanning => moving.spanning -= 1,
            }
        }
        drop(state);
        self.gate.changed.notify_waiters();
    }
}

/// Permits still out when the mover stopped waiting for them.
#[derive(Debug, thiserror::Error)]
#[error("{0} statements of vshard {1} still running after {2:?}")]
pub struct Busy(pub usize, pub u32, pub Duration);

impl Gate {
    fn lock(&self) -> MutexGuard<'_, Option<Moving>> {
        // A poisoned lock still holds consistent counts (no code panics holding it).
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Whether a move is under way (then sessions call `admit`).
    pub fn active(&self) -> bool {
        self.epoch.load(Ordering::SeqCst) % 2 == 1
    }

    /// The gate's epoch now.
    pub fn epoch(&self) -> u64 {
        self.epoch.load(Ordering::SeqCst)
    }

    /// A session begins a request: publishes (in `routing`) the epoch it routes
    /// under, and returns it. Stored before the epoch is read, so a mover that raises
    /// the epoch and then reads `routing` cannot miss a request that saw the old one.
    pub fn enter(&self, routing: &AtomicU64) -> u64 {
        routing.store(ENTERING, Ordering::SeqCst);
        let epoch = self.epoch.load(Ordering::SeqCst);
        routing.store(epoch, Ordering::SeqCst);
        epoch
    }

    /// The session's request is over (nothing routed by it is still running).
    pub fn leave(routing: &AtomicU64) {
        routing.store(IDLE, Ordering::SeqCst);
    }

    /// Whether a session publishing `routing` runs a request begun before `epoch`.
    pub fn routing_before(routing: &AtomicU64, epoch: u64) -> bool {
        match routing.load(Ordering::SeqCst) {
            IDLE => false,
            ENTERING => true,
            seen => seen < epoch,
        }
    }

    /// The vshard being moved, if any.
    pub fn moving(&self) -> Option<u32> {
        self.lock().as_ref().map(|m| m.vshard)
    }

    /// Admits a statement that touches `touch`: adds the permits it needs to
    /// `permits` (kept until the transaction ends), waiting while the move holds
    /// such statements. Cancel safe: a permit is added only when granted.
    pub async fn admit(self: &Arc<Self>, touch: &Touch, permits: &mut Vec<Permit>) {
        loop {
            // Registered before the check, so a change in between is not missed.
            let changed = self.changed.notified();
            match self.try_admit(touch, permits) {
                true => return,
                false => changed.await,
            }
        }
    }

    /// `true`: admitted (permits added as needed); `false`: held, wait for a change.
    fn try_admit(self: &Arc<Self>, touch: &Touch, permits: &mut Vec<Permit>) -> bool {
        let mut state = self.lock();
        let Some(moving) = state.as_mut() else {
            return true;
        };
        if !touch.covers(moving.vshard) {
            return true;
        }
        let id = moving.id;
        let has = |kind| permits.iter().any(|p| p.id == id && p.kind == kind);
        let need_writer = touch.write && !has(Kind::Writer);
        let need_spanning = touch.everywhere && !has(Kind::Spanning);
        if (need_writer && moving.hold_writes) || (need_spanning && moving.hold_spanning) {
            return false;
        }
        let grant = |kind| Permit {
            gate: self.clone(),
            id,
            kind,
        };
        if need_writer {
            moving.writers += 1;
            permits.push(grant(Kind::Writer));
        }
        if need_spanning {
            moving.spanning += 1;
            permits.push(grant(Kind::Spanning));
        }
        true
    }

    /// Starts gating `vshard` for a move (one at a time: `None` while another runs).
    pub fn start(self: &Arc<Self>, vshard: u32) -> Option<MoveGate> {
        let mut state = self.lock();
        if state.is_some() {
            return None;
        }
        let id = self.next_id.fetch_add(1, Ordering::Relaxed);
        *state = Some(Moving {
            id,
            vshard,
            hold_writes: false,
            hold_spanning: false,
            writers: 0,
            spanning: 0,
        });
        self.epoch.fetch_add(1, Ordering::SeqCst);
        Some(MoveGate { gate: self.clone() })
    }

    fn set(&self, f: impl FnOnce(&mut Moving)) {
        if let Some(moving) = self.lock().as_mut() {
            f(moving);
        }
        self.changed.notify_waiters();
    }
}

/// The mover's side of the gate; opening it all on drop.
pub struct MoveGate {
    gate: Arc<Gate>,
}

impl MoveGate {
    /// Raises the epoch (after the switch: requests begun later see the new map).
    pub fn bump(&self) -> u64 {
        self.gate.epoch.fetch_add(2, Ordering::SeqCst) + 2
    }

    /// Holds new writes of the vshard and waits up to `wait` for those already
    /// admitted to end. On `Err` nothing is held.
    pub async fn hold_writes(&self, wait: Duration) -> Result<(), Busy> {
        self.gate.set(|m| m.hold_writes = true);
        let result = self.drain(wait, |m| m.writers).await;
        if result.is_err() {
            self.release_writes();
        }
        result
    }

    /// The same for statements on every vshard.
    pub async fn hold_spanning(&self, wait: Duration) -> Result<(), Busy> {
        self.gate.set(|m| m.hold_spanning = true);
        let result = self.drain(wait, |m| m.spanning).await;
        if result.is_err() {
            self.release_spanning();
        }
        result
    }

    pub fn release_writes(&self) {
        self.gate.set(|m| m.hold_writes = false);
    }

    pub fn release_spanning(&self) {
        self.gate.set(|m| m.hold_spanning = false);
    }

    async fn drain(&self, wait: Duration, count: fn(&Moving) -> usize) -> Result<(), Busy> {
        let deadline = tokio::time::Instant::now() + wait;
        loop {
            let changed = self.gate.changed.notified();
            let (left, vshard) = match self.gate.lock().as_ref() {
                Some(m) => (count(m), m.vshard),
                None => return Ok(()),
            };
            if left == 0 {
                return Ok(());
            }
            if tokio::time::timeout_at(deadline, changed).await.is_err() {
                return Err(Busy(left, vshard, wait));
            }
        }
    }
}

impl Drop for MoveGate {
    fn drop(&mut self) {
        *self.gate.lock() = None;
        self.gate.epoch.fetch_add(1, Ordering::SeqCst);
        self.gate.changed.notify_waiters();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn write(vshard: u32) -> Touch {
        Touch {
            vshards: vec![vshard],
            everywhere: false,
            write: true,
        }
    }

    fn read(vshard: u32) -> Touch {
        Touch {
            write: false,
            ..write(vshard)
        }
    }

    fn everywhere() -> Touch {
        Touch {
            vshards: vec![],
            everywhere: true,
            write: false,
        }
    }

    #[tokio::test]
    async fn writes_of_the_moving_vshard_wait_for_the_hold() {
        let gate = Arc::new(Gate::default());
        let mover = gate.start(7).unwrap();
        assert!(gate.start(8).is_none(), "one move at a time");
        assert!(gate.active());
        let mut early = Vec::new();
        gate.admit(&write(7), &mut early).await;
        assert_eq!(early.len(), 1);
        // Held: the mover waits for the writer admitted before it.
        let waiting = {
            let gate = gate.clone();
            tokio::spawn(async move {
                let mut permits = Vec::new();
                gate.admit(&write(7), &mut permits).await;
                permits.len()
            })
        };
        let busy = mover.hold_writes(Duration::from_millis(20)).await;
        assert!(matches!(busy, Err(Busy(1, 7, _))), "{busy:?}");
        // Not held after a failed hold: the waiting writer got in.
        assert_eq!(waiting.await.unwrap(), 1);
        drop(early);

        let holder = Arc::new(Gate::default());
        let mover = holder.start(7).unwrap();
        mover.hold_writes(Duration::from_millis(20)).await.unwrap();
        let mut permits = Vec::new();
        // Other vshards, reads and sessions with a permit pass.
        holder.admit(&write(8), &mut permits).await;
        holder.admit(&read(7), &mut permits).await;
        assert!(permits.is_empty());
        let held = {
            let holder = holder.clone();
            tokio::spawn(async move {
                let mut permits = Vec::new();
                holder.admit(&write(7), &mut permits).await;
            })
        };
        tokio::task::yield_now().await;
        assert!(!held.is_finished());
        mover.release_writes();
        tokio::time::timeout(Duration::from_secs(5), held)
            .await
            .expect("released")
            .unwrap();
    }

    #[test]
    fn requests_begun_before_a_move_are_seen_by_it() {
        let gate = Arc::new(Gate::default());
        let routing = AtomicU64::new(IDLE);
        assert!(!Gate::routing_before(&routing, gate.epoch()));
        let before = gate.enter(&routing);
        assert_eq!(before % 2, 0, "no move");
        let mover = gate.start(1).unwrap();
        let start = gate.epoch();
        assert!(
            Gate::routing_before(&routing, start),
            "begun before the move"
        );
        Gate::leave(&routing);
        assert!(!Gate::routing_before(&routing, start));
        gate.enter(&routing);
        assert!(
            !Gate::routing_before(&routing, start),
            "begun after: admitted"
        );
        let switched = mover.bump();
        assert!(
            Gate::routing_before(&routing, switched),
            "begun before the switch"
        );
        assert!(gate.active());
        drop(mover);
        assert!(!gate.active());
    }

    #[tokio::test]
    async fn a_session_holding_a_permit_is_not_held() {
        let gate = Arc::new(Gate::default());
        let mover = gate.start(3).unwrap();
        let mut permits = Vec::new();
        gate.admit(&write(3), &mut permits).await;
        let hold = {
            let gate = gate.clone();
            tokio::spawn(async move {
                let mover = mover;
                let held = mover.hold_writes(Duration::from_secs(5)).await;
                drop(gate);
                held.is_ok()
            })
        };
        tokio::task::yield_now().await;
        // Writes again in its transaction: admitted at once, no second permit.
        tokio::time::timeout(Duration::from_secs(1), gate.admit(&write(3), &mut permits))
            .await
            .expect("not held");
        assert_eq!(permits.len(), 1);
        drop(permits);
        assert!(
            hold.await.unwrap(),
            "the hold drains once the permit is back"
        );
    }

    #[tokio::test]
    async fn spanning_statements_wait_for_their_own_hold() {
        let gate = Arc::new(Gate::default());
        let mover = gate.start(5).unwrap();
        mover.hold_writes(Duration::from_millis(10)).await.unwrap();
        let mut permits = Vec::new();
        gate.admit(&everywhere(), &mut permits).await;
        assert_eq!(permits.len(), 1, "a keyless read passes a write hold");
        let busy = mover.hold_spanning(Duration::from_millis(10)).await;
        assert!(busy.is_err());
        drop(permits);
        mover
            .hold_spanning(Duration::from_millis(10))
            .await
            .unwrap();
        drop(mover);
        assert!(!gate.active());
        let mut permits = Vec::new();
        gate.admit(&everywhere(), &mut permits).await;
        assert!(permits.is_empty(), "no move, no permit");
    }
}
