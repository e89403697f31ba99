//! The server side of a session: replies forwarded to the client, ReadyForQuery
//! bookkeeping, a lost server, and cleanup when the client leaves.

use bytes::Buf;
use tokio::io::Interest;

use super::Session;
use crate::error::ClientError;
use crate::frontend::conn::ConnError;
use crate::limits;
use crate::protocol::messages;
use crate::protocol::next_frame;

impl Session {
    pub(super) async fn handle_server_input(&mut self) -> Result<(), ConnError> {
        loop {
            let Some(guard) = self.server.as_mut() else {
                return Ok(());
            };
            let server = &mut **guard;
            let info = match next_frame(&server.rbuf) {
                Ok(Some(info)) => info,
                Ok(None) => return Ok(()),
                Err(e) => {
                    self.server_lost(Some(e.to_string()));
                    return Ok(());
                }
            };
            self.pipeline.flush_synthetic(&mut self.conn.wbuf);
            let frame = &server.rbuf[..info.len];
            // An error nobody asked for (a FATAL before the server goes away) is not
            // passed on: the client hears of the loss at its next request instead.
            let unsolicited = self.pipeline.is_empty() && info.tag == b'E';
            if info.tag == b'E' && is_fatal(&frame[5..]) {
                // The server is going away; its reply is the loss of the connection.
                self.server_lost(Some("server sent FATAL".into()));
                return Ok(());
            }
            let reply = self.pipeline.on_server(frame, &mut server.prepared);
            if reply.forward && !unsolicited {
                self.conn.wbuf.extend_from_slice(frame);
            }
            if info.tag == b'C' {
                let tag = &frame[5..];
                if tag.starts_with(b"DISCARD ALL") || tag.starts_with(b"DEALLOCATE ALL") {
                    // The server dropped every prepared statement, ours included.
                    server.prepared.clear();
                }
                if !self.pending.is_empty() && tag.starts_with(b"ROLLBACK") {
                    self.pending_failed = true;
                }
            }
            if info.tag == b'S' {
                // A setting changed, maybe by a function the proxy cannot follow:
                // the server gets the client's settings anew before its next use.
                server.params_fingerprint = super::DIRTY;
            }
            if reply.error && !self.pending.is_empty() {
                self.pending_failed = true;
            }
            server.rbuf.advance(info.len);
            if let Some(status) = reply.ready {
                self.on_ready(status);
            }
            for id in std::mem::take(&mut self.pipeline.unparsed) {
                self.statements.forget(id);
            }
            if let Some(id) = reply.parsed {
                self.app.known_statements.insert(id);
            }
            if self.conn.wbuf.len() >= limits::BUFFER_BYTES_FLUSH {
                self.conn.flush().await?;
            }
        }
    }

    pub(super) fn on_ready(&mut self, status: u8) {
        if status == b'I' {
            self.drop_parked();
            self.pinned = None;
        }
        if self.pipeline.is_empty() {
            if let Some(started) = self.request_started.take() {
                self.app
                    .stats
                    .query_seconds
                    .record(started.elapsed().as_secs_f64());
            }
        }
        // Changes are settled when the last request carrying them is answered and no
        // transaction is open (a rollback undoes SET, as in PostgreSQL).
        if status != b'I' || self.pending.is_empty() || self.pipeline.pending_ready() > 0 {
            return;
        }
        let Some(server) = self.server.as_mut() else {
            return;
        };
        if self.pending_failed {
            // Which of the changes took effect is unknown: keep the client's settings
            // as they were and reset the server before its next use.
            server.params_fingerprint = super::DIRTY;
        } else {
            let dirty = server.params_fingerprint == super::DIRTY;
            for change in self.pending.drain(..) {
                server.broken |= change == super::ParamChange::Unresettable;
                self.params.apply(&change);
            }
            if !dirty {
                server.params_fingerprint = self.params.fingerprint();
            }
        }
        self.pending.clear();
        self.pending_failed = false;
    }

    pub(super) async fn write_server(&mut self) {
        if self.swbuf.is_empty() {
            return;
        }
        let Some(guard) = self.server.as_mut() else {
            self.swbuf.clear();
            return;
        };
        let server = &mut **guard;
        // Usually the whole batch fits in the socket buffer at once.
        let mut written = match server.stream.try_write(&self.swbuf) {
            Ok(n) => n,
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => 0,
            Err(e) => return self.write_failed(e),
        };
        // Otherwise keep reading while writing: PostgreSQL stops reading while its
        // own output is blocked, so a proxy that only wrote could deadlock with it
        // (a large COPY whose rows raise notices, a pipeline of large results).
        while written < self.swbuf.len() {
            let room = server.rbuf.len() < limits::SERVER_READ_AHEAD_BYTES_MAX;
            let interest = if room {
                Interest::WRITABLE | Interest::READABLE
            } else {
                Interest::WRITABLE
            };
            let ready = match server.stream.ready(interest).await {
                Ok(ready) => ready,
                Err(e) => return self.write_failed(e),
            };
            if ready.is_writable() {
                match server.stream.try_write(&self.swbuf[written..]) {
                    Ok(0) => return self.write_failed(std::io::ErrorKind::WriteZero.into()),
                    Ok(n) => written += n,
                    Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {}
                    Err(e) => return self.write_failed(e),
                }
            }
            if room && (ready.is_readable() || ready.is_read_closed()) {
                match server.stream.try_read_buf(&mut server.rbuf) {
                    Ok(0) => return self.write_failed(std::io::ErrorKind::UnexpectedEof.into()),
                    Ok(_) => {}
                    Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {}
                    Err(e) => return self.write_failed(e),
                }
            }
        }
        self.swbuf.clear();
    }

    fn write_failed(&mut self, e: std::io::Error) {
        self.swbuf.clear();
        self.server_lost(Some(e.to_string()));
    }

    /// The server connection failed: discard it, tell the client, and answer every
    /// request still waiting so the client's protocol state stays consistent.
    pub(super) fn server_lost(&mut self, reason: Option<String>) {
        let Some(mut server) = self.server.take() else {
            return;
        };
        self.backend = None;
        server.broken = true;
        // The rest of a transaction spanning backends goes too (discarded, so
        // PostgreSQL rolls it back).
        self.parked.clear();
        self.pinned = None;
        let backend = server.pool().backend.to_string();
        tracing::warn!(%backend, reason = reason.as_deref().unwrap_or("closed"), "server connection lost");
        metrics::counter!("pgshard_backend_errors_total", "backend" => backend.clone(), "kind" => "lost").increment(1);
        drop(server);
        self.info.detach();
        let waiting = self.pipeline.pending_ready();
        if waiting == 0 && self.pipeline.is_empty() {
            // Idle in a transaction: nothing to answer now.
            self.lost = Some(backend);
        } else {
            ClientError::ServerLost(backend).write(&mut self.conn.wbuf);
            for _ in 0..waiting {
                messages::ready_for_query(&mut self.conn.wbuf, b'I');
            }
        }
        self.pipeline.reset();
        self.pending.clear();
        self.pending_failed = false;
        self.request_started = None;
    }

    /// The client is gone: a server left mid-transaction is rolled back (or, if busy
    /// or unresponsive, cancelled and discarded) so no transaction stays open.
    pub(super) async fn cleanup(&mut self) {
        self.info.detach();
        self.rollback_parked().await;
        let Some(mut server) = self.server.take() else {
            return;
        };
        if self.pipeline.is_idle() {
            server.idle = true;
            return;
        }
        if self.pipeline.is_empty() && !self.pipeline.unsynced {
            let rollback =
                tokio::time::timeout(limits::SERVER_CLEANUP_TIMEOUT, server.execute("ROLLBACK"));
            if let Ok(Ok(())) = rollback.await {
                server.idle = true;
                return;
            }
        } else {
            let key = server.cancel.clone();
            tokio::spawn(async move {
                let _ = crate::backend::server::cancel(&key).await;
            });
        }
        server.broken = true;
    }
}

/// FATAL or PANIC: the server closes the connection after this error.
fn is_fatal(payload: &[u8]) -> bool {
    messages::parse_error_fields(payload)
        .is_some_and(|f| f.severity == "FATAL" || f.severity == "PANIC")
}
