//! The task that owns a shared server connection: writes the requests sessions
//! submit, in order, and cuts the server's replies at each request's
//! ReadyForQuery (the invariants are in `mod.rs`).

use std::collections::VecDeque;
use std::sync::atomic::{AtomicUsize, Ordering::SeqCst};
use std::sync::Arc;
use std::task::Poll;

use bytes::BytesMut;
use tokio::io::Interest;
use tokio::sync::{mpsc, OwnedSemaphorePermit};

use super::{MuxConn, Reply, Request, NONE, SHARED_COMMANDS};
use crate::backend::server::ServerConn;
use crate::limits;
use crate::protocol::{messages, next_frame};

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

/// Starts the task that owns `server` for `conn`, taking requests from `rx`.
pub(super) fn spawn(
    conn: Arc<MuxConn>,
    server: ServerConn,
    rx: mpsc::UnboundedReceiver<Request>,
    permit: OwnedSemaphorePermit,
) {
    let driver = Driver {
        conn,
        server,
        rx,
        queue: VecDeque::new(),
        out: BytesMut::new(),
        closing: false,
        _permit: permit,
    };
    tokio::spawn(driver.run());
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
