//! Requests served on a shared server connection (see `backend::mux`). A client with
//! no server connection of its own and no open transaction that sends a
//! self-contained request (an autocommit statement, or an extended batch up to its
//! Sync) has it pipelined with other clients' requests on one of a few shared
//! connections, when one can take it. Anything else takes the usual path.

use std::collections::HashSet;
use std::sync::atomic::Ordering::Relaxed;
use std::time::Instant;

use bytes::BytesMut;
use tokio::io::AsyncReadExt;

use super::{Session, Unnamed};
use crate::backend::mux::Ticket;
use crate::config::PoolMode;
use crate::error::ClientError;
use crate::frontend::conn::ConnError;
use crate::frontend::shareable::self_contained;
use crate::frontend::statements::{self, Statement, Statements};
use crate::limits;
use crate::protocol::{messages, next_frame, FrameInfo};
use crate::router::decide::Decision;
use crate::router::{BackendId, ShardMap};
use crate::stats::Stats;

/// A self-contained request at the front of the client's buffer.
struct Batch {
    len: usize,
    /// Where the batch's unnamed Parse sits, if it has one.
    unnamed: Option<(usize, usize)>,
}

impl Session {
    /// `Ok(true)`: the request at the front of the client's buffer was answered on a
    /// shared connection. `Ok(false)`: nothing was taken from the buffer.
    pub(super) async fn try_shared(&mut self) -> Result<bool, ConnError> {
        // Held (in the session) until the request is answered: a vshard move waits
        // for requests routed by an older map.
        let topology = self.take_snapshot();
        let config = &self.app.config;
        let depth = config.pipeline_depth;
        if config.pipeline_connections == Some(0)
            || config.pool_mode != PoolMode::Transaction
            || !self.may_share()
        {
            return Ok(false);
        }
        let Some(batch) = self.shareable_batch() else {
            return Ok(false);
        };
        let max;
        let pool = {
            let map = &topology.map;
            max = config.shared_per_backend(map.backends.len());
            let id = if map.backends.len() > 1 {
                match self.shared_backend(&batch, map) {
                    Some(id) => id,
                    None => return Ok(false),
                }
            } else {
                map.default_backend
            };
            topology.pool(id).clone()
        };
        let params = &self.params;
        let shared = pool.shared(params.fingerprint(), max, depth, || params.sync_sql());
        let Some(conn) = shared else {
            return Ok(false);
        };
        let frames = &self.conn.rbuf[..batch.len];
        let statements = &self.statements;
        let submitted = conn.submit(depth, |prepared, out| {
            build(frames, statements, prepared, out)
        });
        let Some(ticket) = submitted else {
            return Ok(false);
        };
        let frames = self.conn.rbuf.split_to(batch.len).freeze();
        if let Some((from, to)) = batch.unnamed {
            self.unnamed = Some(Unnamed {
                parse: frames.slice(from..to),
                changes: Vec::new(),
            });
            self.unnamed_here = false;
        }
        let queries = self.count_queries(&frames);
        self.app.stats.shared_requests.increment(1);
        pool.stats.queries.fetch_add(queries, Relaxed);
        pool.stats.shared_requests.fetch_add(1, Relaxed);
        let started = Instant::now();
        self.pipeline.flush_synthetic(&mut self.conn.wbuf);
        self.info.attach_shared(&ticket.conn, ticket.seq);
        let result = self.forward_shared(ticket).await;
        self.info.detach();
        self.app
            .stats
            .query_seconds
            .record(started.elapsed().as_secs_f64());
        pool.stats.transactions.fetch_add(1, Relaxed);
        result.map(|()| true)
    }

    /// No server of its own, nothing owed by one, no transaction or batch open, and
    /// the client's settings known to have taken effect.
    fn may_share(&self) -> bool {
        self.server.is_none()
            && self.lost.is_none()
            && self.pending.is_empty()
            && !self.pipeline.skip_until_sync
            && !self.pipeline.unsynced
            && self.pipeline.tx_status == b'I'
    }

    /// A whole self-contained request at the front of the client's buffer: one
    /// Query, or Parse (unnamed) / Bind / Describe / Execute messages up to a Sync,
    /// each statement self-contained and changing no setting.
    fn shareable_batch(&self) -> Option<Batch> {
        let buf = &self.conn.rbuf[..];
        let first = next_frame(buf).ok()??;
        if first.tag == b'Q' {
            let sql = &buf[5..first.len];
            let ok = self_contained(sql) && self.param_changes(sql).is_empty();
            return ok.then_some(Batch {
                len: first.len,
                unnamed: None,
            });
        }
        let mut at = 0;
        let mut unnamed = None;
        let mut executes = false;
        for _ in 0..limits::SHARED_BATCH_MESSAGES_MAX {
            let info = next_frame(&buf[at..]).ok()??;
            let payload = &buf[at + 5..at + info.len];
            match info.tag {
                b'P' => {
                    let (name, query, _) = messages::parse_message(payload)?;
                    let ok = name.is_empty()
                        && self_contained(query)
                        && self.param_changes(query).is_empty();
                    if !ok {
                        return None;
                    }
                    unnamed = Some((at, at + info.len));
                }
                b'B' => {
                    let (_, name, _) = messages::bind_names(payload)?;
                    if !self.shareable_statement(name, unnamed.is_some()) {
                        return None;
                    }
                }
                b'D' => match messages::target(payload)? {
                    (b'S', name) if self.shareable_statement(name, unnamed.is_some()) => {}
                    (b'P', _) => {}
                    _ => return None,
                },
                b'E' => executes = true,
                b'S' if executes => {
                    return Some(Batch {
                        len: at + info.len,
                        unnamed,
                    })
                }
                _ => return None,
            }
            at += info.len;
        }
        None
    }

    /// With routing by key, the backend a self-contained request belongs on; `None`
    /// when it is not one backend's (it then takes the usual path). Each Bind is
    /// decided with the Parse before it; all must agree.
    fn shared_backend(&self, batch: &Batch, map: &ShardMap) -> Option<BackendId> {
        let frames = &self.conn.rbuf[..batch.len];
        let mut target = None;
        let mut unnamed: Option<&[u8]> = None;
        let mut at = 0;
        for (info, payload) in frames_of(frames) {
            let frame = &frames[at..at + info.len];
            at += info.len;
            let decision = match info.tag {
                b'Q' => self.decision(b'Q', frame, map),
                b'P' => {
                    unnamed = Some(frame);
                    continue;
                }
                b'B' => self.bind_decision(payload, unnamed, map),
                _ => continue,
            };
            let backend = match decision {
                None | Some(Decision::Any) => continue,
                Some(Decision::Default) => map.default_backend,
                Some(Decision::One(id)) => id,
                _ => return None,
            };
            if *target.get_or_insert(backend) != backend {
                return None;
            }
        }
        Some(target.unwrap_or(map.default_backend))
    }

    /// The unnamed statement only when the batch parses it itself.
    fn shareable_statement(&self, name: &[u8], unnamed_in_batch: bool) -> bool {
        if name.is_empty() {
            return unnamed_in_batch;
        }
        self.statements.get(name).is_some_and(|s| s.shareable)
    }

    /// Counts the batch's queries in the metrics; returns how many there were.
    fn count_queries(&self, frames: &[u8]) -> u64 {
        let mut at = 0;
        let mut queries = 0;
        while let Ok(Some(info)) = next_frame(&frames[at..]) {
            match info.tag {
                b'Q' => self.app.stats.queries_simple.increment(1),
                b'E' => self.app.stats.queries_extended.increment(1),
                _ => {}
            }
            queries += u64::from(matches!(info.tag, b'Q' | b'E'));
            at += info.len;
        }
        queries
    }

    /// Passes the request's replies to the client.
    async fn forward_shared(&mut self, mut ticket: Ticket) -> Result<(), ConnError> {
        loop {
            let room = self.conn.rbuf.len() < limits::BUFFER_BYTES_FLUSH;
            let chunk = tokio::select! {
                chunk = ticket.next() => chunk,
                // Whatever the client sends meanwhile waits in the buffer; if it
                // leaves, its request is cancelled so it holds up no one.
                r = self.conn.stream.read_buf(&mut self.conn.rbuf), if room => {
                    if matches!(r, Ok(n) if n > 0) {
                        continue;
                    }
                    ticket.cancel();
                    return Err(ConnError::Closed);
                }
            };
            let Some(reply) = chunk else {
                // The connection was lost before the request's ReadyForQuery.
                let e = ClientError::ServerLost(ticket.conn.backend.to_string());
                Stats::client_error(e.kind());
                e.write(&mut self.conn.wbuf);
                messages::ready_for_query(&mut self.conn.wbuf, b'I');
                return Ok(());
            };
            self.conn.wbuf.extend_from_slice(&reply.bytes);
            if reply.last {
                return Ok(());
            }
            if self.conn.wbuf.len() >= limits::BUFFER_BYTES_FLUSH {
                self.conn.flush().await?;
            }
        }
    }
}

/// Writes the batch for a shared connection: first a Parse for each named statement
/// the connection lacks, then the batch with statement names made global. Returns
/// the ids of those Parses, in order.
fn build(
    frames: &[u8],
    statements: &Statements,
    prepared: &mut HashSet<u64>,
    out: &mut BytesMut,
) -> Vec<u64> {
    let mut injected = Vec::new();
    for (info, payload) in frames_of(frames) {
        if let Some(statement) = named_statement(info.tag, payload, statements) {
            if prepared.insert(statement.id) {
                out.extend_from_slice(&statement.parse);
                injected.push(statement.id);
            }
        }
    }
    let mut at = 0;
    for (info, payload) in frames_of(frames) {
        let frame = &frames[at..at + info.len];
        at += info.len;
        let Some(statement) = named_statement(info.tag, payload, statements) else {
            out.extend_from_slice(frame);
            continue;
        };
        match messages::bind_names(payload) {
            Some((portal, _, rest_at)) if info.tag == b'B' => {
                statements::rewrite_bind(out, portal, &statement.global_name, &payload[rest_at..])
            }
            _ => statements::rewrite_describe(out, &statement.global_name),
        }
    }
    injected
}

/// Each whole message in `frames`, with its payload.
pub(super) fn frames_of(frames: &[u8]) -> impl Iterator<Item = (FrameInfo, &[u8])> {
    let mut at = 0;
    std::iter::from_fn(move || {
        let info = next_frame(&frames[at..]).ok()??;
        let payload = &frames[at + 5..at + info.len];
        at += info.len;
        Some((info, payload))
    })
}

/// The client's named statement a Bind or Describe (of a statement) refers to.
fn named_statement<'a>(
    tag: u8,
    payload: &[u8],
    statements: &'a Statements,
) -> Option<&'a std::sync::Arc<Statement>> {
    let name = match tag {
        b'B' => messages::bind_names(payload).map(|(_, name, _)| name),
        b'D' => messages::target(payload).and_then(|(kind, name)| (kind == b'S').then_some(name)),
        _ => None,
    }?;
    if name.is_empty() {
        return None;
    }
    statements.get(name)
}
