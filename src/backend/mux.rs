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

use std::collections::{HashSet, VecDeque};
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering::SeqCst};
use std::sync::{Arc, Mutex};
use std::task::Poll;
use std::time::{Duration, Instant};

use bytes::{Bytes, BytesMut};
use tokio::io::Interest;
use tokio::sync::{mpsc, OwnedSemaphorePermit};

use super::server::{self, CancelKey, ServerConn};
use crate::limits;
use crate::protocol::{messages, next_frame};

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
        let driver = Driver {
            conn: conn.clone(),
            server,
            rx,
            queue: VecDeque::new(),
            out: BytesMut::new(),
            closing: false,
            _permit: permit,
        };
        tokio::spawn(driver.run());
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

struct Pending {
    seq: u64,
    /// Added Parses not yet answered.
    injected: VecDeque<u64>,
    replies: mpsc::UnboundedSender<Reply>,
    buffered: Arc<AtomicUsize>,
    /// Its replies showed a change of session state.
    changed_session: bool,
}

/// The task that owns a shared server connection.
struct Driver {
    conn: Arc<MuxConn>,
    server: ServerConn,
    rx: mpsc::UnboundedReceiver<Request>,
    queue: VecDeque<Pending>,
    /// Request bytes not yet written.
    out: BytesMut,
    /// No more requests will come.
    closing: bool,
    _permit: OwnedSemaphorePermit,
}

impl Driver {
    async fn run(mut self) {
        let reason = self.serve().await;
        self.conn.alive.store(false, SeqCst);
        self.conn.head.store(NONE, SeqCst);
        if let Some(reason) = reason {
            tracing::warn!(backend = %self.conn.backend, %reason, "shared server connection ended");
            metrics::counter!("pgshard_backend_errors_total", "backend" => self.conn.backend.to_string(), "kind" => "lost")
                .increment(1);
        }
        // Dropping the queue closes every waiting session's reply channel.
    }

    /// Runs until the connection ends; `Some(reason)` when that was a failure.
    async fn serve(&mut self) -> Option<String> {
        loop {
            if self.closing && self.queue.is_empty() && self.out.is_empty() {
                return None;
            }
            let interest = if self.out.is_empty() {
                Interest::READABLE
            } else {
                Interest::READABLE | Interest::WRITABLE
            };
            let room = self.out.len() < limits::BUFFER_BYTES_FLUSH;
            tokio::select! {
                request = self.rx.recv(), if room && !self.closing => {
                    let Some(request) = request else {
                        self.closing = true;
                        continue;
                    };
                    self.take(request);
                    while let Ok(request) = self.rx.try_recv() {
                        self.take(request);
                    }
                    if let Err(e) = self.write() {
                        return Some(e);
                    }
                }
                ready = self.server.stream.ready(interest) => {
                    let ready = match ready {
                        Ok(ready) => ready,
                        Err(e) => return Some(e.to_string()),
                    };
                    if ready.is_writable() {
                        if let Err(e) = self.write() {
                            return Some(e);
                        }
                    }
                    if ready.is_readable() || ready.is_read_closed() {
                        if let Err(e) = self.read().await {
                            return Some(e);
                        }
                    }
                }
            }
        }
    }

    fn take(&mut self, request: Request) {
        if self.queue.is_empty() {
            self.conn.started(request.seq);
        }
        self.out.extend_from_slice(&request.bytes);
        self.queue.push_back(Pending {
            seq: request.seq,
            injected: request.injected.into(),
            replies: request.replies,
            buffered: request.buffered,
            changed_session: false,
        });
    }

    fn write(&mut self) -> Result<(), String> {
        while !self.out.is_empty() {
            match self.server.stream.try_write(&self.out) {
                Ok(0) => return Err("server closed the connection".into()),
                Ok(n) => {
                    let _ = self.out.split_to(n);
                }
                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => return Ok(()),
                Err(e) => return Err(e.to_string()),
            }
        }
        Ok(())
    }

    async fn read(&mut self) -> Result<(), String> {
        // Through `poll_read`, which (unlike `try_read`) also forgets the readiness
        // after a short read, saving the next read's EAGAIN.
        let stream = &mut self.server.stream;
        let rbuf = &mut self.server.rbuf;
        let read = std::future::poll_fn(|cx| {
            match tokio_util::io::poll_read_buf(std::pin::Pin::new(&mut *stream), cx, rbuf) {
                Poll::Pending => Poll::Ready(Err(std::io::ErrorKind::WouldBlock.into())),
                ready => ready,
            }
        });
        match read.await {
            Ok(0) => return Err("server closed the connection".into()),
            Ok(_) => {}
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => return Ok(()),
            Err(e) => return Err(e.to_string()),
        }
        self.dispatch()
    }

    /// Hands whole reply frames to the requests they answer. Frames from `0..end`
    /// of the read buffer belong to the request at the front of the queue.
    fn dispatch(&mut self) -> Result<(), String> {
        let mut end = 0;
        loop {
            let info = match next_frame(&self.server.rbuf[end..]) {
                Ok(Some(info)) => info,
                Ok(None) => break,
                Err(e) => return Err(e.to_string()),
            };
            let frame = &self.server.rbuf[end..end + info.len];
            let Some(head) = self.queue.front_mut() else {
                // Nobody asked: a notice, or the FATAL before the server goes away.
                let _ = self.server.rbuf.split_to(end + info.len);
                end = 0;
                continue;
            };
            match info.tag {
                b'1' if !head.injected.is_empty() => {
                    // The ParseComplete of a Parse the proxy added: not the client's.
                    head.injected.pop_front();
                    self.pass(end, false);
                    let _ = self.server.rbuf.split_to(info.len);
                    end = 0;
                    continue;
                }
                b'E' if !head.injected.is_empty() => {
                    // The server skips the rest of the request, those Parses too.
                    self.conn.forget(head.injected.drain(..));
                }
                b'C' => {
                    let tag = &frame[5..];
                    head.changed_session |= !SHARED_COMMANDS.iter().any(|c| tag.starts_with(c));
                }
                b'S' => head.changed_session = true,
                b'G' | b'H' | b'W' => {
                    self.pass(end + info.len, false);
                    return Err("a shared request started COPY".into());
                }
                _ => {}
            }
            end += info.len;
            if info.tag != b'Z' {
                continue;
            }
            let status = frame.get(5).copied();
            if status != Some(b'I') {
                // A transaction stayed open: whatever ran after it would run inside
                // it. Ending the connection rolls it all back.
                self.pass(end - info.len, false);
                let _ = self.server.rbuf.split_to(info.len);
                self.answer_open_transaction();
                return Err("a shared request left a transaction open".into());
            }
            if head.changed_session && self.conn.is_alive() {
                // Retired before its client hears back, so no request of that
                // client's can come after it here.
                tracing::warn!(backend = %self.conn.backend, "a shared request changed the session; retiring the connection");
                self.conn.close();
            }
            self.pass(end, true);
            end = 0;
            self.queue.pop_front();
            self.conn.finished();
            match self.queue.front() {
                Some(next) => self.conn.started(next.seq),
                None => {
                    self.conn.since_us.store(self.conn.now_us(), SeqCst);
                    self.conn.head.store(NONE, SeqCst);
                }
            }
        }
        // A long reply goes out in parts, so a large result is not held here whole.
        if end >= limits::BUFFER_BYTES_FLUSH {
            self.pass(end, false);
        }
        self.check_buffered();
        Ok(())
    }

    /// Sends `rbuf[..end]` to the request at the front of the queue; `last` when it
    /// ends with that request's ReadyForQuery.
    fn pass(&mut self, end: usize, last: bool) {
        if end == 0 && !last {
            return;
        }
        let bytes = self.server.rbuf.split_to(end).freeze();
        if let Some(head) = self.queue.front() {
            head.buffered.fetch_add(bytes.len(), SeqCst);
            // A session that went away no longer needs its replies.
            let _ = head.replies.send(Reply { bytes, last });
        }
    }

    /// The front request's client gets an error and ReadyForQuery 'I' in place of
    /// the ReadyForQuery that said a transaction was open.
    fn answer_open_transaction(&mut self) {
        let mut out = BytesMut::new();
        crate::error::ClientError::SharedTransaction.write(&mut out);
        messages::ready_for_query(&mut out, b'I');
        if let Some(head) = self.queue.pop_front() {
            self.conn.finished();
            let _ = head.replies.send(Reply {
                bytes: out.freeze(),
                last: true,
            });
        }
    }

    /// A client that does not read its replies must not make the proxy hold an
    /// unbounded result: past the limit its request is cancelled.
    fn check_buffered(&self) {
        if let Some(head) = self.queue.front() {
            if head.buffered.load(SeqCst) > limits::MUX_REPLY_BYTES_MAX {
                self.conn.cancel_request(head.seq);
            }
        }
    }
}
