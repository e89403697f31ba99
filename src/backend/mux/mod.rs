//! Shared server connections: self-contained requests of many clients (an autocommit
//! statement, or an extended batch up to its Sync) are pipelined on a few server
//! connections, each driven by its own task. PostgreSQL then reads several requests
//! per wakeup and the proxy writes them in one syscall; replies come back in order
//! and are cut at each request's ReadyForQuery.
//!
//! Invariants:
//! - Only requests the session judged self-contained are submitted (see
//!   `frontend::shareable`). The driver checks the replies as well: a command other
//!   than SELECT/INSERT/UPDATE/DELETE, a ParameterStatus or COPY means the session
//!   state may have changed, and the connection takes no more requests and closes once
//!   those already sent are answered. A ReadyForQuery other than 'I' (a transaction
//!   left open) ends the connection at once, so the server rolls back what ran in it,
//!   and that request's client gets an error in place of the 'T'.
//! - The Parses the proxy adds for statements the connection lacks come first in
//!   their request, so no error of the client's can make the server skip them; the
//!   driver drops their ParseComplete and, if one fails, forgets the statements.
//! - A cancel reaches the server only while the request it is meant for runs there.

mod driver;

use std::collections::HashSet;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering::SeqCst};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::{Bytes, BytesMut};
use tokio::sync::{mpsc, OwnedSemaphorePermit};

use super::server::{self, CancelKey, ServerConn};
use crate::limits;

/// No request (the value of `head` and `cancel_wanted` when there is none).
const NONE: u64 = u64::MAX;
/// Commands a shared request may run (CommandComplete tags).
const SHARED_COMMANDS: [&[u8]; 4] = [b"SELECT", b"INSERT", b"UPDATE", b"DELETE"];

/// A shared server connection, as the sessions see it.
pub struct MuxConn {
    pub backend: Arc<str>,
    /// The session parameters the connection carries (see `ClientParams`).
    pub fingerprint: u64,
    cancel: CancelKey,
    state: Mutex<State>,
    /// Sequence number of the request the server runs now.
    head: AtomicU64,
    /// A request whose client asked to cancel it before it ran.
    cancel_wanted: AtomicU64,
    /// When the running request started, or (with none) when the last one ended, in
    /// microseconds since `epoch`.
    since_us: AtomicU64,
    epoch: Instant,
    inflight: AtomicUsize,
    alive: AtomicBool,
}

struct State {
    /// Global statement ids prepared (or being prepared) on this connection.
    prepared: HashSet<u64>,
    next_seq: u64,
    /// `None` once closed: the driver finishes what is queued, then ends.
    tx: Option<mpsc::UnboundedSender<Request>>,
}

struct Request {
    bytes: Bytes,
    seq: u64,
    /// Statements whose Parse the proxy put at the start of `bytes`, in order.
    injected: Vec<u64>,
    replies: mpsc::UnboundedSender<Reply>,
    buffered: Arc<AtomicUsize>,
}

/// Part of a request's replies: whole frames; `last` when it ends with the request's
/// ReadyForQuery.
pub struct Reply {
    pub bytes: Bytes,
    pub last: bool,
}

/// A submitted request. Its replies arrive through `next`; `None` before the last
/// one means the connection was lost.
pub struct Ticket {
    pub conn: Arc<MuxConn>,
    pub seq: u64,
    replies: mpsc::UnboundedReceiver<Reply>,
    /// Reply bytes received by the driver and not yet taken by `next`.
    buffered: Arc<AtomicUsize>,
}

impl Ticket {
    pub async fn next(&mut self) -> Option<Reply> {
        let reply = self.replies.recv().await?;
        self.buffered.fetch_sub(reply.bytes.len(), SeqCst);
        Some(reply)
    }

    /// Cancels the request: now if the server runs it, else when it starts.
    pub fn cancel(&self) {
        self.conn.cancel_request(self.seq);
    }
}

impl MuxConn {
    /// Starts the task that drives `server`; `permit` is its place in the pool.
    pub fn start(
        server: ServerConn,
        backend: Arc<str>,
        fingerprint: u64,
        permit: OwnedSemaphorePermit,
    ) -> Arc<MuxConn> {
        let (tx, rx) = mpsc::unbounded_channel();
        let conn = Arc::new(MuxConn {
            backend,
            fingerprint,
            cancel: server.cancel.clone(),
            state: Mutex::new(State {
                prepared: server.prepared.clone(),
                next_seq: 0,
                tx: Some(tx),
            }),
            head: AtomicU64::new(NONE),
            cancel_wanted: AtomicU64::new(NONE),
            since_us: AtomicU64::new(0),
            epoch: Instant::now(),
            inflight: AtomicUsize::new(0),
            alive: AtomicBool::new(true),
        });
        driver::spawn(conn.clone(), server, rx, permit);
        conn
    }

    pub fn is_alive(&self) -> bool {
        self.alive.load(SeqCst)
    }

    pub fn inflight(&self) -> usize {
        self.inflight.load(SeqCst)
    }

    /// Whether a new request may join: the connection is alive, not too deep, and
    /// not stuck behind a request that has run for long (which would hold up
    /// everything queued after it).
    pub fn accepts(&self, depth: usize) -> bool {
        let inflight = self.inflight();
        if !self.is_alive() || inflight >= depth {
            return false;
        }
        inflight == 0 || self.elapsed() < limits::MUX_STALL
    }

    /// With requests in flight, how long the current one has run; without, how long
    /// the connection has been idle.
    pub fn elapsed(&self) -> Duration {
        let since = self.since_us.load(SeqCst);
        Duration::from_micros(self.now_us().saturating_sub(since))
    }

    fn now_us(&self) -> u64 {
        self.epoch.elapsed().as_micros() as u64
    }

    /// True while the server runs request `seq`.
    pub fn is_running(&self, seq: u64) -> bool {
        self.head.load(SeqCst) == seq
    }

    /// Queues one request, unless `depth` requests are in flight already or the
    /// connection is closed (`None`: nothing was sent). `build` writes its bytes,
    /// given the statements the connection has (it adds those it prepares), and
    /// returns the ids of the Parses it put first. It runs under the lock that
    /// orders requests, so a statement is prepared before any request that uses it.
    pub fn submit(
        self: &Arc<Self>,
        depth: usize,
        build: impl FnOnce(&mut HashSet<u64>, &mut BytesMut) -> Vec<u64>,
    ) -> Option<Ticket> {
        let mut state = self.state.lock().ok()?;
        let tx = state.tx.clone().filter(|_| self.is_alive())?;
        let was = self
            .inflight
            .fetch_update(SeqCst, SeqCst, |n| (n < depth).then_some(n + 1))
            .ok()?;
        if was == 0 {
            // The stall check must not measure the idle time before this request.
            self.since_us.store(self.now_us(), SeqCst);
        }
        let mut bytes = BytesMut::new();
        let injected = build(&mut state.prepared, &mut bytes);
        let (replies_tx, replies) = mpsc::unbounded_channel();
        let buffered = Arc::new(AtomicUsize::new(0));
        let seq = state.next_seq;
        let request = Request {
            bytes: bytes.freeze(),
            seq,
            injected,
            replies: replies_tx,
            buffered: buffered.clone(),
        };
        if let Err(mpsc::error::SendError(request)) = tx.send(request) {
            self.inflight.fetch_sub(1, SeqCst);
            for id in request.injected {
                state.prepared.remove(&id);
            }
            return None;
        }
        state.next_seq += 1;
        if state.prepared.len() > limits::SERVER_PREPARED_MAX {
            // Too many statements: retired once what is queued is answered, as the
            // pool discards such a connection of its own (`give_back`).
            self.alive.store(false, SeqCst);
            state.tx = None;
        }
        Some(Ticket {
            conn: self.clone(),
            seq,
            replies,
            buffered,
        })
    }

    /// Takes no more requests; the connection ends when those queued are answered.
    pub fn close(&self) {
        self.alive.store(false, SeqCst);
        if let Ok(mut state) = self.state.lock() {
            state.tx = None;
        }
    }

    fn forget(&self, ids: impl IntoIterator<Item = u64>) {
        if let Ok(mut state) = self.state.lock() {
            for id in ids {
                state.prepared.remove(&id);
            }
        }
    }

    /// Cancels request `seq` if the server runs it now, or else as soon as it starts.
    pub fn cancel_request(&self, seq: u64) {
        self.cancel_wanted.store(seq, SeqCst);
        if self.is_running(seq) {
            self.send_cancel(seq);
        }
    }

    /// Whoever takes the wish first (the client's cancel, or the driver starting the
    /// request) sends the one CancelRequest.
    fn send_cancel(&self, seq: u64) {
        let taken = self
            .cancel_wanted
            .compare_exchange(seq, NONE, SeqCst, SeqCst)
            .is_ok();
        if taken && self.is_running(seq) {
            let key = self.cancel.clone();
            tokio::spawn(async move {
                let _ = server::cancel(&key).await;
            });
        }
    }

    fn started(&self, seq: u64) {
        self.since_us.store(self.now_us(), SeqCst);
        self.head.store(seq, SeqCst);
        if self.cancel_wanted.load(SeqCst) == seq {
            self.send_cancel(seq);
        }
    }

    fn finished(&self) {
        self.inflight.fetch_sub(1, SeqCst);
    }
}
