//! Shared server connections: self-contained requests of many clients (an autocommit
//! statement, or an extended batch up to its Sync) are pipelined on a few server
//! connections, each driven by its own task. PostgreSQL then reads several requests
//! per wakeup and the proxy writes them in one syscall; replies come back in order
//! and are cut at each request's ReadyForQuery.
//!
//! Invariants: only requests that leave the server idle (status 'I') and change no
//! session state are submitted (the session checks, see `frontend::shareable`); a
//! ReadyForQuery with another status, a protocol error or a lost socket ends the
//! connection, and every request still queued on it sees its reply channel close.

use std::collections::{HashSet, VecDeque};
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering::Relaxed};
use std::sync::{Arc, Mutex};
use std::task::Poll;
use std::time::{Duration, Instant};

use bytes::{Bytes, BytesMut};
use tokio::io::Interest;
use tokio::sync::{mpsc, OwnedSemaphorePermit};

use super::server::{CancelKey, ServerConn};
use crate::limits;
use crate::protocol::next_frame;

/// No request is running (the value of `MuxConn::head`).
const NONE_RUNNING: u64 = u64::MAX;

/// A shared server connection, as the sessions see it.
pub struct MuxConn {
    pub backend: Arc<str>,
    /// The session parameters the connection carries (see `ClientParams`).
    pub fingerprint: u64,
    pub cancel: CancelKey,
    state: Mutex<State>,
    /// Sequence number of the request the server is running now.
    head: AtomicU64,
    /// When the running request started, in microseconds since `epoch`.
    head_since_us: AtomicU64,
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
    replies: mpsc::Sender<Bytes>,
}

/// A submitted request: its replies arrive on `replies` as whole frames, the last
/// chunk ending with ReadyForQuery. A channel that closes first means the server
/// connection was lost.
pub struct Ticket {
    pub conn: Arc<MuxConn>,
    pub seq: u64,
    pub replies: mpsc::Receiver<Bytes>,
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
            head: AtomicU64::new(NONE_RUNNING),
            head_since_us: AtomicU64::new(0),
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
        self.alive.load(Relaxed)
    }

    pub fn inflight(&self) -> usize {
        self.inflight.load(Relaxed)
    }

    /// Whether a new request may join: the connection is alive, not too deep, and
    /// not stuck behind a request that has run for long (which would hold up
    /// everything queued after it).
    pub fn accepts(&self, depth: usize) -> bool {
        let inflight = self.inflight();
        if !self.is_alive() || inflight >= depth {
            return false;
        }
        inflight == 0 || self.running_for() < limits::MUX_STALL
    }

    fn running_for(&self) -> Duration {
        let since = self.head_since_us.load(Relaxed);
        let now = self.epoch.elapsed().as_micros() as u64;
        Duration::from_micros(now.saturating_sub(since))
    }

    /// True while the request `seq` is the one the server runs (for CancelRequest:
    /// a cancel must not hit another client's request).
    pub fn is_running(&self, seq: u64) -> bool {
        self.head.load(Relaxed) == seq
    }

    /// Queues one request. `build` writes its bytes, given the statements the
    /// connection has (it adds the ones it prepares); it runs under the lock that
    /// orders requests, so a statement is prepared before any request that uses it.
    /// `None` when the connection is gone (nothing was sent).
    pub fn submit(
        self: &Arc<Self>,
        build: impl FnOnce(&mut HashSet<u64>, &mut BytesMut),
    ) -> Option<Ticket> {
        let mut state = self.state.lock().ok()?;
        if !self.is_alive() {
            return None;
        }
        let mut bytes = BytesMut::new();
        build(&mut state.prepared, &mut bytes);
        let (replies_tx, replies) = mpsc::channel(limits::MUX_REPLY_CHUNKS);
        let seq = state.next_seq;
        let request = Request {
            bytes: bytes.freeze(),
            seq,
            replies: replies_tx,
        };
        // Counted before the driver can finish it.
        self.inflight.fetch_add(1, Relaxed);
        let sent = state.tx.as_ref().map(|tx| tx.send(request).is_ok());
        if sent != Some(true) {
            self.inflight.fetch_sub(1, Relaxed);
            return None;
        }
        state.next_seq += 1;
        Some(Ticket {
            conn: self.clone(),
            seq,
            replies,
        })
    }

    /// Takes no more requests; the connection ends when those queued are answered.
    pub fn close(&self) {
        self.alive.store(false, Relaxed);
        if let Ok(mut state) = self.state.lock() {
            state.tx = None;
        }
    }

    /// Prepared statements it holds, counting those being prepared.
    pub fn statement_count(&self) -> usize {
        self.state.lock().map(|s| s.prepared.len()).unwrap_or(0)
    }

    /// A statement whose Parse failed here is no longer prepared.
    pub fn forget(&self, ids: impl IntoIterator<Item = u64>) {
        if let Ok(mut state) = self.state.lock() {
            for id in ids {
                state.prepared.remove(&id);
            }
        }
    }

    fn started(&self, seq: u64) {
        let now = self.epoch.elapsed().as_micros() as u64;
        self.head_since_us.store(now, Relaxed);
        self.head.store(seq, Relaxed);
    }
}

struct Pending {
    seq: u64,
    replies: mpsc::Sender<Bytes>,
}

/// The task that owns a shared server connection.
struct Driver {
    conn: Arc<MuxConn>,
    server: ServerConn,
    rx: mpsc::UnboundedReceiver<Request>,
    queue: VecDeque<Pending>,
    /// Request bytes not yet written.
    out: BytesMut,
    /// The connection was closed: no requests will come.
    closing: bool,
    _permit: OwnedSemaphorePermit,
}

impl Driver {
    async fn run(mut self) {
        let reason = self.serve().await;
        self.conn.alive.store(false, Relaxed);
        self.conn.head.store(NONE_RUNNING, Relaxed);
        if let Some(reason) = reason {
            tracing::warn!(backend = %self.conn.backend, %reason, "shared server connection lost");
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
            replies: request.replies,
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
        self.dispatch().await
    }

    /// Hands whole reply frames to the requests they answer.
    async fn dispatch(&mut self) -> Result<(), String> {
        let mut end = 0;
        loop {
            let info = match next_frame(&self.server.rbuf[end..]) {
                Ok(Some(info)) => info,
                Ok(None) => break,
                Err(e) => return Err(e.to_string()),
            };
            let tag = info.tag;
            let status = self.server.rbuf.get(end + 5).copied();
            end += info.len;
            if self.queue.is_empty() {
                // Nobody asked: a notice, or the FATAL before the server goes away.
                let _ = self.server.rbuf.split_to(end);
                end = 0;
                continue;
            }
            if tag != b'Z' {
                continue;
            }
            let chunk = self.server.rbuf.split_to(end).freeze();
            end = 0;
            if let Some(done) = self.queue.pop_front() {
                self.conn.inflight.fetch_sub(1, Relaxed);
                // A session that went away no longer needs its replies.
                let _ = done.replies.send(chunk).await;
            }
            if let Some(next) = self.queue.front() {
                self.conn.started(next.seq);
            } else {
                self.conn.head.store(NONE_RUNNING, Relaxed);
            }
            if status != Some(b'I') {
                // A transaction stayed open; requests queued behind would run in it.
                return Err("a shared request left a transaction open".into());
            }
        }
        // A long reply goes out in parts, so a large result is not held here whole.
        if end >= limits::BUFFER_BYTES_FLUSH {
            let chunk = self.server.rbuf.split_to(end).freeze();
            if let Some(head) = self.queue.front() {
                let _ = head.replies.send(chunk).await;
            }
        }
        Ok(())
    }
}
