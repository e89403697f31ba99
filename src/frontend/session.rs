//! One client's session after login: reads client messages, attaches a server
//! connection at the start of a transaction (transaction pooling) and returns it at
//! ReadyForQuery 'I', and forwards replies as whole frames without decoding rows.

use std::sync::Arc;
use std::time::Instant;

use bytes::{Buf, Bytes, BytesMut};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use super::clients::ClientInfo;
use super::conn::{ClientConn, ConnError};
use super::params::{self, ClientParams, ParamChange};
use super::pipeline::{Expect, Pipeline, Req};
use super::statements::{self, Statement, Statements};
use crate::app::App;
use crate::backend::pool::{Guard, PoolError};
use crate::config::PoolMode;
use crate::error::ClientError;
use crate::limits;
use crate::protocol::messages;
use crate::protocol::next_frame;
use crate::router::{self, Route};
use crate::stats::Stats;

pub struct Session {
    app: Arc<App>,
    conn: ClientConn,
    info: Arc<ClientInfo>,
    server: Option<Guard>,
    /// Bytes for the server, not yet written.
    swbuf: BytesMut,
    pipeline: Pipeline,
    statements: Statements,
    params: ClientParams,
    /// Parameter changes sent but not yet known to have taken effect.
    pending: Vec<ParamChange>,
    pending_failed: bool,
    request_started: Option<Instant>,
    /// A server lost while the client sat in a transaction; reported at its next request.
    lost: Option<String>,
}

enum Event {
    Client(std::io::Result<usize>),
    Server(std::io::Result<usize>),
    Shutdown,
}

impl Session {
    pub fn new(
        app: Arc<App>,
        conn: ClientConn,
        info: Arc<ClientInfo>,
        params: ClientParams,
    ) -> Session {
        Session {
            app,
            conn,
            info,
            server: None,
            swbuf: BytesMut::with_capacity(limits::BUFFER_BYTES_INITIAL),
            pipeline: Pipeline::default(),
            statements: Statements::default(),
            params,
            pending: Vec::new(),
            pending_failed: false,
            request_started: None,
            lost: None,
        }
    }

    /// Serves the client until it leaves; cleans up its server connection either way.
    pub async fn run(mut self) -> Result<(), ConnError> {
        let result = self.serve().await;
        self.cleanup().await;
        match result {
            Err(ConnError::Closed) => Ok(()),
            other => other,
        }
    }

    async fn serve(&mut self) -> Result<(), ConnError> {
        loop {
            if !self.handle_client_input().await? {
                return Ok(());
            }
            self.pipeline.flush_synthetic(&mut self.conn.wbuf);
            self.write_server().await;
            self.conn.flush().await?;
            self.maybe_release();
            match self.wait().await {
                Event::Client(Ok(0)) => return Err(ConnError::Closed),
                Event::Client(r) => {
                    r?;
                }
                Event::Server(Ok(n)) if n > 0 => self.handle_server_input().await?,
                Event::Server(r) => self.server_lost(r.err().map(|e| e.to_string())),
                Event::Shutdown => {
                    ClientError::ShuttingDown.write_fatal(&mut self.conn.wbuf);
                    self.conn.flush().await?;
                    return Ok(());
                }
            }
        }
    }

    /// Waits for bytes from the client or the server. Cancel safe (reads only).
    async fn wait(&mut self) -> Event {
        let conn = &mut self.conn;
        let shutdown = self.app.shutdown.cancelled();
        match self.server.as_mut() {
            Some(server) => {
                let server = &mut **server;
                tokio::select! {
                    r = server.stream.read_buf(&mut server.rbuf) => Event::Server(r),
                    r = conn.stream.read_buf(&mut conn.rbuf) => Event::Client(r),
                }
            }
            None => tokio::select! {
                r = conn.stream.read_buf(&mut conn.rbuf) => Event::Client(r),
                _ = shutdown => Event::Shutdown,
            },
        }
    }

    /// Handles every whole client message buffered. `Ok(false)`: the client said
    /// Terminate.
    async fn handle_client_input(&mut self) -> Result<bool, ConnError> {
        loop {
            let info = match next_frame(&self.conn.rbuf) {
                Ok(Some(info)) => info,
                Ok(None) => return Ok(true),
                Err(e) => return self.fatal(ClientError::Protocol(e.to_string())).await,
            };
            if info.tag == b'X' {
                return Ok(false);
            }
            let frame = self.conn.rbuf.split_to(info.len).freeze();
            let detached = self.server.is_none() && !self.pipeline.skip_until_sync;
            if detached && info.tag == b'P' {
                match self.parse_without_server(&frame) {
                    Ok(true) => continue,
                    Ok(false) => {}
                    Err(e) => return self.fatal(e).await,
                }
            }
            let needs_server = matches!(info.tag, b'Q' | b'P' | b'B' | b'D' | b'E' | b'F');
            if needs_server && detached {
                let attached = match self.lost.take() {
                    Some(backend) => Err(ClientError::ServerLost(backend)),
                    None => self.attach(&frame).await,
                };
                if let Err(e) = attached {
                    self.refuse(info.tag, e);
                    continue;
                }
            }
            if let Err(e) = self.on_client_message(info.tag, &frame) {
                return self.fatal(e).await;
            }
            if self.swbuf.len() >= limits::BUFFER_BYTES_FLUSH {
                self.write_server().await;
            }
        }
    }

    async fn fatal(&mut self, e: ClientError) -> Result<bool, ConnError> {
        Stats::client_error(e.kind());
        e.write_fatal(&mut self.conn.wbuf);
        self.conn.flush().await?;
        Ok(false)
    }

    /// Answers a message that needed a server when none could be had.
    fn refuse(&mut self, tag: u8, e: ClientError) {
        Stats::client_error(e.kind());
        e.write(&mut self.conn.wbuf);
        if tag == b'Q' {
            messages::ready_for_query(&mut self.conn.wbuf, b'I');
        } else {
            self.pipeline.skip_until_sync = true;
        }
    }

    async fn attach(&mut self, first: &[u8]) -> Result<(), ClientError> {
        let topology = self.app.topology.load();
        let Route::Backend(id) = router::route(&topology.map, first);
        let pool = topology.pool(id).clone();
        let mut server = pool.checkout().await.map_err(|e| match e {
            PoolError::Timeout(_) => ClientError::PoolTimeout(pool.backend.clone()),
            PoolError::Server(_) => ClientError::ServerUnavailable(pool.backend.clone()),
        })?;
        server.idle = false;
        if server.params_fingerprint != self.params.fingerprint() {
            messages::query(&mut self.swbuf, &self.params.sync_sql());
            self.pipeline.push(Expect::Internal);
            server.params_fingerprint = self.params.fingerprint();
        }
        self.pipeline.tx_status = b'I';
        self.info.attach(&pool.backend, &server.cancel);
        self.server = Some(server);
        Ok(())
    }

    fn maybe_release(&mut self) {
        if self.app.config.pool_mode == PoolMode::Session {
            return;
        }
        let Some(server) = &self.server else { return };
        if self.pipeline.is_idle() && server.rbuf.is_empty() && self.swbuf.is_empty() {
            self.release();
        }
    }

    fn release(&mut self) {
        if let Some(mut server) = self.server.take() {
            server.idle = true;
            server
                .pool()
                .stats
                .transactions
                .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        }
        self.info.detach();
    }

    fn on_client_message(&mut self, tag: u8, frame: &Bytes) -> Result<(), ClientError> {
        tracing::trace!(tag = %(tag as char), len = frame.len(), "client message");
        if self.pipeline.skip_until_sync && tag != b'S' {
            return Ok(());
        }
        let payload = &frame[5..];
        match tag {
            b'Q' => {
                self.track_params(payload);
                self.app.stats.queries_simple.increment(1);
                self.forward(frame, Req::Query);
            }
            b'P' => self.on_parse(frame)?,
            b'B' => self.on_bind(payload)?,
            b'D' => self.on_describe(frame)?,
            b'E' => {
                self.app.stats.queries_extended.increment(1);
                self.forward(frame, Req::Execute);
            }
            b'C' => self.on_close(frame)?,
            b'S' => self.on_sync(frame),
            b'F' => self.forward(frame, Req::FunctionCall),
            b'H' | b'd' | b'c' | b'f' => {
                // Flush and COPY data only mean something with a server attached;
                // PostgreSQL ignores stray COPY messages too.
                if self.server.is_some() {
                    self.swbuf.extend_from_slice(frame);
                }
            }
            other => {
                let msg = format!("invalid frontend message type {}", other as char);
                return Err(ClientError::Protocol(msg));
            }
        }
        Ok(())
    }

    fn forward(&mut self, frame: &[u8], req: Req) {
        self.swbuf.extend_from_slice(frame);
        self.push(req);
    }

    fn push(&mut self, req: Req) {
        if !matches!(req, Req::Query | Req::FunctionCall | Req::Sync) {
            self.pipeline.unsynced = true;
        }
        self.pipeline.push(Expect::Forward(req));
        self.request_started.get_or_insert_with(Instant::now);
    }

    /// A reply the proxy makes up, after an error the proxy found itself; the rest of
    /// the batch is skipped up to Sync, as PostgreSQL would.
    fn synthetic_error(&mut self, e: ClientError) {
        Stats::client_error(e.kind());
        let mut buf = BytesMut::new();
        e.write(&mut buf);
        self.pipeline.push(Expect::Synthetic(buf.freeze()));
        self.pipeline.skip_until_sync = true;
    }

    fn on_parse(&mut self, frame: &[u8]) -> Result<(), ClientError> {
        let malformed = || ClientError::Protocol("malformed Parse message".into());
        let (name, query, types) = messages::parse_message(&frame[5..]).ok_or_else(malformed)?;
        self.track_params(query);
        if name.is_empty() {
            self.forward(frame, Req::Parse(None));
            return Ok(());
        }
        let name_text = String::from_utf8_lossy(name).into_owned();
        if self.statements.contains(name) {
            self.synthetic_error(ClientError::DuplicateStatement(name_text));
            return Ok(());
        }
        if self.statements.len() >= limits::CLIENT_PREPARED_MAX {
            self.synthetic_error(ClientError::TooMany(
                "prepared statements on one connection",
            ));
            return Ok(());
        }
        let statement = Arc::new(Statement::new(query, types));
        self.statements.insert(name, statement.clone());
        let Some(server) = self.server.as_mut() else {
            return Ok(());
        };
        if server.prepared.insert(statement.id) {
            self.swbuf.extend_from_slice(&statement.parse);
            self.push(Req::Parse(Some(statement.id)));
        } else {
            self.pipeline
                .push(Expect::Synthetic(Bytes::from_static(PARSE_COMPLETE)));
            self.pipeline.unsynced = true;
        }
        Ok(())
    }

    /// A named Parse of a statement some server has already accepted is answered by
    /// the proxy, and the statement is prepared where it is first used. Without this a
    /// client that prepares synchronously outside a transaction (pgbench -M prepared
    /// runs PQprepare on a thread shared with other connections) could wait for a pool
    /// that its own other connections hold, until the checkout timeout.
    fn parse_without_server(&mut self, frame: &[u8]) -> Result<bool, ClientError> {
        let malformed = || ClientError::Protocol("malformed Parse message".into());
        let (name, query, types) = messages::parse_message(&frame[5..]).ok_or_else(malformed)?;
        if name.is_empty()
            || self.statements.contains(name)
            || self.statements.len() >= limits::CLIENT_PREPARED_MAX
        {
            return Ok(false);
        }
        let statement = Statement::new(query, types);
        if !self.app.known_statements.contains(statement.id) {
            return Ok(false);
        }
        self.track_params(query);
        self.statements.insert(name, Arc::new(statement));
        self.pipeline
            .push(Expect::Synthetic(Bytes::from_static(PARSE_COMPLETE)));
        Ok(true)
    }

    /// Makes sure the server has `statement`, injecting a Parse when it does not.
    fn ensure_prepared(&mut self, statement: &Statement) {
        let Some(server) = self.server.as_mut() else {
            return;
        };
        if server.prepared.insert(statement.id) {
            self.swbuf.extend_from_slice(&statement.parse);
            self.pipeline.push(Expect::InjectedParse(statement.id));
        }
    }

    fn on_bind(&mut self, payload: &[u8]) -> Result<(), ClientError> {
        let malformed = || ClientError::Protocol("malformed Bind message".into());
        let (portal, name, rest_at) = messages::bind_names(payload).ok_or_else(malformed)?;
        if name.is_empty() {
            let at = messages::begin(&mut self.swbuf, b'B');
            self.swbuf.extend_from_slice(payload);
            messages::finish(&mut self.swbuf, at);
            self.push(Req::Bind);
            return Ok(());
        }
        let Some(statement) = self.statements.get(name).cloned() else {
            let name = String::from_utf8_lossy(name).into_owned();
            self.synthetic_error(ClientError::UnknownStatement(name));
            return Ok(());
        };
        self.ensure_prepared(&statement);
        statements::rewrite_bind(
            &mut self.swbuf,
            portal,
            &statement.global_name,
            &payload[rest_at..],
        );
        self.push(Req::Bind);
        Ok(())
    }

    fn on_describe(&mut self, frame: &[u8]) -> Result<(), ClientError> {
        let malformed = || ClientError::Protocol("malformed Describe message".into());
        match messages::target(&frame[5..]).ok_or_else(malformed)? {
            (b'S', name) if !name.is_empty() => {
                let Some(statement) = self.statements.get(name).cloned() else {
                    let name = String::from_utf8_lossy(name).into_owned();
                    self.synthetic_error(ClientError::UnknownStatement(name));
                    return Ok(());
                };
                self.ensure_prepared(&statement);
                statements::rewrite_describe(&mut self.swbuf, &statement.global_name);
                self.push(Req::Describe);
            }
            _ => self.forward(frame, Req::Describe),
        }
        Ok(())
    }

    fn on_close(&mut self, frame: &[u8]) -> Result<(), ClientError> {
        let malformed = || ClientError::Protocol("malformed Close message".into());
        match messages::target(&frame[5..]).ok_or_else(malformed)? {
            (b'S', name) if !name.is_empty() => {
                // The server keeps the statement for other clients; only this
                // client's name goes away.
                self.statements.remove(name);
                self.pipeline
                    .push(Expect::Synthetic(Bytes::from_static(CLOSE_COMPLETE)));
            }
            _ if self.server.is_some() => self.forward(frame, Req::Close),
            // Without a server there is no portal or unnamed statement to close.
            _ => self
                .pipeline
                .push(Expect::Synthetic(Bytes::from_static(CLOSE_COMPLETE))),
        }
        Ok(())
    }

    fn on_sync(&mut self, frame: &[u8]) {
        self.pipeline.skip_until_sync = false;
        if self.server.is_some() {
            self.forward(frame, Req::Sync);
            self.pipeline.unsynced = false;
        } else {
            self.pipeline.unsynced = false;
            let mut buf = BytesMut::new();
            messages::ready_for_query(&mut buf, b'I');
            self.pipeline.push(Expect::Synthetic(buf.freeze()));
        }
    }

    /// Notes SET/RESET/DISCARD so the session's parameters follow the client.
    fn track_params(&mut self, sql: &[u8]) {
        if !params::may_change(sql) {
            return;
        }
        let Ok(sql) = std::str::from_utf8(sql.strip_suffix(b"\0").unwrap_or(sql)) else {
            return;
        };
        for change in params::changes(sql) {
            if matches!(change, ParamChange::DiscardAll | ParamChange::DeallocateAll) {
                if let Some(server) = self.server.as_mut() {
                    server.prepared.clear();
                }
            }
            self.pending.push(change);
        }
    }

    async fn handle_server_input(&mut self) -> Result<(), ConnError> {
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
            tracing::trace!(tag = %(info.tag as char), ?reply, "server message");
            if reply.forward && !unsolicited {
                self.conn.wbuf.extend_from_slice(frame);
            }
            if !self.pending.is_empty() {
                self.pending_failed |=
                    reply.error || (info.tag == b'C' && frame[5..].starts_with(b"ROLLBACK"));
            }
            if reply.internal_error {
                tracing::warn!("restoring a client's session parameters failed; will retry");
                server.params_fingerprint = u64::MAX;
            }
            server.rbuf.advance(info.len);
            if let Some(status) = reply.ready {
                self.on_ready(status);
            }
            if let Some(id) = reply.failed_statement {
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

    fn on_ready(&mut self, status: u8) {
        if self.pipeline.is_empty() {
            if let Some(started) = self.request_started.take() {
                self.app
                    .stats
                    .query_seconds
                    .record(started.elapsed().as_secs_f64());
            }
        }
        if status != b'I' || self.pending.is_empty() {
            return;
        }
        if !self.pending_failed {
            for change in self.pending.drain(..) {
                self.params.apply(&change);
            }
            if let Some(server) = self.server.as_mut() {
                server.params_fingerprint = self.params.fingerprint();
            }
        }
        self.pending.clear();
        self.pending_failed = false;
    }

    async fn write_server(&mut self) {
        if self.swbuf.is_empty() {
            return;
        }
        let Some(server) = self.server.as_mut() else {
            self.swbuf.clear();
            return;
        };
        let result = server.stream.write_all(&self.swbuf).await;
        self.swbuf.clear();
        if let Err(e) = result {
            self.server_lost(Some(e.to_string()));
        }
    }

    /// The server connection failed: discard it, tell the client, and answer every
    /// request still waiting so the client's protocol state stays consistent.
    fn server_lost(&mut self, reason: Option<String>) {
        let Some(mut server) = self.server.take() else {
            return;
        };
        server.broken = true;
        let backend = server.pool().backend.clone();
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
    async fn cleanup(&mut self) {
        self.info.detach();
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

const PARSE_COMPLETE: &[u8] = b"1\0\0\0\x04";
const CLOSE_COMPLETE: &[u8] = b"3\0\0\0\x04";
