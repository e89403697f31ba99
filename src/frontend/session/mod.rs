//! One client's session after login: reads client messages, attaches a server
//! connection at the start of a transaction (transaction pooling) and returns it at
//! ReadyForQuery 'I', and forwards replies as whole frames without decoding rows.

mod attach;
mod batch;
mod check;
mod copy;
mod deferred;
mod extended;
mod fanout;
mod follow;
mod gather;
mod raise;
mod replies;
mod route;
mod servers;
mod several;
mod shared;
mod span;
mod split;

use std::sync::Arc;
use std::time::Instant;

use bytes::{Bytes, BytesMut};
use tokio::io::AsyncReadExt;

use super::clients::ClientInfo;
use super::conn::{ClientConn, ConnError};
use super::params::{self, ClientParams, ParamChange};
use super::pipeline::{Expect, Pipeline, Req};
use super::statements::Statements;
use crate::app::App;
use crate::backend::pool::Guard;
use crate::backend::Topology;
use crate::error::ClientError;
use crate::limits;
use crate::moves::gate::Permit;
use crate::protocol::messages;
use crate::protocol::next_frame;
use crate::router::BackendId;
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
    /// The client's last unnamed Parse, and whether the attached server has it.
    unnamed: Option<Unnamed>,
    unnamed_here: bool,
    request_started: Option<Instant>,
    /// A server lost while the client sat in a transaction; reported at its next request.
    lost: Option<String>,
    /// The backend of the attached server (its index in the map).
    backend: Option<BackendId>,
    /// A BEGIN already answered, to be sent with the transaction's first statement
    /// once its backend is known (routing by key only).
    deferred_begin: Option<Bytes>,
    /// The BEGIN that opened the current transaction, when routing deferred it.
    begin: Option<Bytes>,
    /// A statement (not just Parse/Describe) ran in the current transaction.
    touched: bool,
    /// A statement refused inside a transaction, in an extended batch: at its Sync
    /// the server runs a statement raising this, so its transaction fails too.
    raise_at_sync: Option<String>,
    /// The transaction's other servers when it spans backends (`span.rs`).
    parked: Vec<(BackendId, Guard)>,
    /// A Bind the proxy answers itself, with its portal's Describe and Execute.
    answering: Option<span::Answering>,
    /// The current extended batch so far is only Parses kept by the proxy: nothing
    /// of it went to the server yet.
    batch_deferred: bool,
    /// What keeps the current transaction on its backend (a savepoint, a SET).
    pinned: Option<&'static str>,
    /// The topology the current transaction routes with (`follow.rs`).
    snapshot: Option<Arc<Topology>>,
    /// Admissions past a vshard move's gate, kept until the transaction ends.
    permits: Vec<Permit>,
    /// A request is running (published to the move gate: `follow.rs`).
    in_request: bool,
    /// The gate epoch the last Bind was admitted under.
    bound_epoch: u64,
}

/// A client's unnamed statement: its Parse message as sent, and what it changes.
struct Unnamed {
    parse: Bytes,
    changes: Vec<ParamChange>,
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
            unnamed: None,
            unnamed_here: false,
            request_started: None,
            lost: None,
            backend: None,
            deferred_begin: None,
            begin: None,
            touched: false,
            raise_at_sync: None,
            parked: Vec::new(),
            answering: None,
            batch_deferred: false,
            pinned: None,
            snapshot: None,
            permits: Vec::new(),
            in_request: false,
            bound_epoch: 0,
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
            if self.server.as_ref().is_some_and(|s| !s.rbuf.is_empty()) {
                // Replies read while writing.
                self.handle_server_input().await?;
            }
            self.conn.flush().await?;
            self.maybe_release();
            self.settle();
            self.end_request();
            let settled = self.server.is_none() || self.pipeline.is_empty();
            if settled && matches!(next_frame(&self.conn.rbuf), Ok(Some(_))) {
                // Input held back until earlier requests were answered.
                continue;
            }
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
            self.settle();
            self.end_request();
            if !matches!(next_frame(&self.conn.rbuf), Ok(Some(_))) {
                // Nothing whole to handle (a malformed frame is reported below).
                if next_frame(&self.conn.rbuf).is_ok() {
                    return Ok(true);
                }
            }
            self.begin_request();
            if let Err(why) = self.admit().await {
                if self.refuse_front(why) {
                    continue;
                }
            }
            if self.try_shared().await? {
                continue;
            }
            let info = match next_frame(&self.conn.rbuf) {
                Ok(Some(info)) => info,
                Ok(None) => return Ok(true),
                Err(e) => return self.fatal(ClientError::Protocol(e.to_string())).await,
            };
            if info.tag == b'X' {
                return Ok(false);
            }
            if self.answering.is_some() {
                let frame = self.conn.rbuf[..info.len].to_vec();
                if self.answer_own(info.tag, &frame).await {
                    let _ = self.conn.rbuf.split_to(info.len);
                    continue;
                }
            }
            let topology = self.take_snapshot();
            let map = &topology.map;
            let routing = map.backends.len() > 1;
            let mut mismatch = None;
            let mut span = None;
            if routing && self.server.is_some() && matches!(info.tag, b'Q' | b'B' | b'P') {
                match self.check_attached(info.tag, info.len, map) {
                    check::Attached::Fits => {}
                    // Where it goes depends on how the requests before it end.
                    check::Attached::Hold => return Ok(true),
                    check::Attached::Release => self.release(),
                    check::Attached::Mismatch(why) => mismatch = Some(why),
                    other => span = Some(other),
                }
            }
            let frame = self.conn.rbuf.split_to(info.len).freeze();
            if let Some(action) = span {
                match self.span(action, info.tag, &frame, map).await {
                    Ok(true) => {}
                    Ok(false) => continue,
                    Err(why) => mismatch = Some(why),
                }
            }
            let detached = self.server.is_none() && !self.pipeline.skip_until_sync;
            if detached && info.tag == b'P' {
                match self.parse_without_server(&frame) {
                    Ok(true) => continue,
                    Ok(false) => {}
                    Err(e) => return self.fatal(e).await,
                }
                if routing && self.defer_parse(&frame) {
                    continue;
                }
            }
            let needs_server = matches!(info.tag, b'Q' | b'P' | b'B' | b'D' | b'E' | b'F');
            if needs_server && detached {
                if let Some(backend) = self.lost.take() {
                    self.refuse(info.tag, ClientError::ServerLost(backend));
                    continue;
                }
                if !routing {
                    if let Err(e) = self.attach(map.default_backend).await {
                        self.refuse(info.tag, e);
                        continue;
                    }
                } else if !self.attach_routed(info.tag, &frame, map).await {
                    continue;
                }
            } else if let Some(why) = mismatch {
                match self.move_transaction(info.tag, &frame, map).await {
                    Some(true) => {}
                    Some(false) => continue,
                    None => {
                        self.refuse_in_transaction(info.tag, why);
                        continue;
                    }
                }
            }
            if matches!(info.tag, b'Q' | b'B' | b'E' | b'F') {
                self.touched = true;
            }
            if let Err(e) = self.on_client_message(info.tag, &frame) {
                return self.fatal(e).await;
            }
            if self.swbuf.len() >= limits::BUFFER_BYTES_FLUSH {
                self.write_server().await;
            }
        }
    }

    /// Refuses the Query or Bind at the front of the buffer with `why` (the way a
    /// statement that cannot run in this transaction is). `false`: the front is
    /// another message, handled as usual.
    fn refuse_front(&mut self, why: String) -> bool {
        let Ok(Some(info)) = next_frame(&self.conn.rbuf) else {
            return false;
        };
        if !matches!(info.tag, b'Q' | b'B') {
            return false;
        }
        let _ = self.conn.rbuf.split_to(info.len);
        if self.server.is_some() {
            self.refuse_in_transaction(info.tag, why);
        } else if self.deferred_begin.is_some() {
            self.refuse_deferred(info.tag, ClientError::Unsupported(why));
        } else {
            self.refuse(info.tag, ClientError::Unsupported(why));
        }
        true
    }

    async fn fatal(&mut self, e: ClientError) -> Result<bool, ConnError> {
        Stats::client_error(e.kind());
        e.write_fatal(&mut self.conn.wbuf);
        self.conn.flush().await?;
        Ok(false)
    }

    /// Answers a message that needed a server when none could be had, after any
    /// reply the proxy already owes. Query and FunctionCall end with ReadyForQuery;
    /// an extended batch is skipped up to its Sync.
    fn refuse(&mut self, tag: u8, e: ClientError) {
        if matches!(tag, b'Q' | b'F') {
            Stats::client_error(e.kind());
            let mut buf = BytesMut::new();
            e.write(&mut buf);
            messages::ready_for_query(&mut buf, b'I');
            self.pipeline.push(Expect::Synthetic(buf.freeze()));
        } else {
            self.synthetic_error(e);
        }
    }

    fn on_client_message(&mut self, tag: u8, frame: &Bytes) -> Result<(), ClientError> {
        tracing::trace!(tag = %(tag as char), len = frame.len(), "client message");
        if self.pipeline.skip_until_sync && tag != b'S' {
            return Ok(());
        }
        let payload = &frame[5..];
        match tag {
            b'Q' => {
                let changes = self.param_changes(payload);
                self.track_params(changes);
                self.app.stats.queries_simple.increment(1);
                self.count_pool_query();
                self.forward(frame, Req::Query);
            }
            b'P' => self.on_parse(frame)?,
            b'B' => self.on_bind(payload)?,
            b'D' => self.on_describe(frame)?,
            b'E' => {
                self.app.stats.queries_extended.increment(1);
                self.count_pool_query();
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

    fn count_pool_query(&self) {
        if let Some(server) = &self.server {
            let queries = &server.pool().stats.queries;
            queries.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        }
    }

    fn forward(&mut self, frame: &[u8], req: Req) {
        self.swbuf.extend_from_slice(frame);
        self.push(req);
    }

    fn push(&mut self, req: Req) {
        self.batch_deferred = false;
        if !matches!(req, Req::Query | Req::FunctionCall | Req::Sync) {
            self.pipeline.unsynced = true;
        }
        self.pipeline.push(Expect::Forward(req));
        self.request_started.get_or_insert_with(Instant::now);
    }

    fn on_sync(&mut self, frame: &[u8]) {
        self.pipeline.skip_until_sync = false;
        self.batch_deferred = false;
        let failed = std::mem::take(&mut self.pipeline.batch_failed);
        let raise = self.raise_at_sync.take().filter(|_| !failed);
        if let (Some(why), true) = (raise, self.server.is_some()) {
            // Before the Sync, messages that make the server raise the refusal, so its
            // transaction fails too. If the batch failed already, the server skips
            // them like the rest and the Sync still answers.
            let (parse, bind, execute) = raise::raise_messages(&why);
            self.swbuf.extend_from_slice(&parse);
            self.pipeline.push(Expect::InjectedParse(None));
            self.swbuf.extend_from_slice(&bind);
            self.push(Req::Bind);
            self.swbuf.extend_from_slice(&execute);
            self.push(Req::Execute);
            self.unnamed_here = false;
        }
        if self.server.is_some() {
            self.forward(frame, Req::Sync);
            self.pipeline.unsynced = false;
        } else {
            self.pipeline.unsynced = false;
            let mut buf = BytesMut::new();
            messages::ready_for_query(&mut buf, self.pipeline.tx_status);
            self.pipeline.push(Expect::Synthetic(buf.freeze()));
        }
    }

    /// The session-parameter changes `sql` makes (usually none, found cheaply).
    fn param_changes(&self, sql: &[u8]) -> Vec<ParamChange> {
        if !params::may_change(sql) {
            return Vec::new();
        }
        match std::str::from_utf8(sql.strip_suffix(b"\0").unwrap_or(sql)) {
            Ok(sql) => params::changes(sql),
            Err(_) => Vec::new(),
        }
    }

    /// Notes what a statement about to run changes in the session, so the client's
    /// parameters follow it. A change the proxy cannot replay makes the server dirty:
    /// it gets `RESET ALL` before anyone else uses it.
    fn track_params(&mut self, changes: impl IntoIterator<Item = ParamChange>) {
        for change in changes {
            if change == ParamChange::Untracked {
                if let Some(server) = self.server.as_mut() {
                    server.params_fingerprint = DIRTY;
                }
                continue;
            }
            self.pending.push(change);
        }
    }
}

/// A fingerprint no client has: the server's settings are unknown.
const DIRTY: u64 = u64::MAX;
const PARSE_COMPLETE: &[u8] = b"1\0\0\0\x04";
const CLOSE_COMPLETE: &[u8] = b"3\0\0\0\x04";
