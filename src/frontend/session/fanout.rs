//! An autocommit simple Query that runs on every backend: DDL, writes to reference
//! tables, keyless writes to sharded tables (atomically, with two-phase commit), and
//! maintenance that PostgreSQL refuses inside a transaction (one backend after
//! another; a failure part-way leaves the earlier backends done, as running the
//! statement by hand on each would).
//!
//! The client gets one reply: the first backend's, with row counts summed over the
//! backends; or the first error.

use std::sync::Arc;

use bytes::{Bytes, BytesMut};

use super::servers::{error_reply, release, rollback_all};
use super::Session;
use crate::backend::pool::Guard;
use crate::backend::server::ServerConn;
use crate::error::ClientError;
use crate::frontend::combine::combine;
use crate::frontend::pipeline::Expect;
use crate::frontend::statements::{self, Statement};
use crate::protocol::messages;
use crate::protocol::next_frame;
use crate::router::decide::{Decision, Merge};
use crate::router::sql::merge::{Bound, Combine};
use crate::router::BackendId;

impl Session {
    /// Runs `query` (a whole Query message) on every backend; `atomic`: inside one
    /// distributed transaction.
    pub(super) async fn run_everywhere(&mut self, query: &Bytes, atomic: bool) {
        let request = Request {
            bytes: query.clone(),
            statement: None,
        };
        let backends = self.topology().pools.len();
        let parts = (0..backends).map(|b| (b, request.clone())).collect();
        self.answer(parts, atomic, Merged::Rows).await;
    }

    /// A keyless read (a whole Query message) on every backend, outside any
    /// transaction, its replies merged as `merge` says.
    pub(super) async fn run_gather(&mut self, query: &Bytes, merge: Merge) {
        let Some((parts, merged)) = self.gather_parts(query, merge) else {
            let e = ClientError::Unsupported(
                "pgshard could not rewrite this read's LIMIT/OFFSET for every backend".into(),
            );
            return self.reply_error(e);
        };
        self.answer(parts, false, merged).await;
    }

    /// A keyless read for every backend: as sent, or with its OFFSET taken off and its
    /// LIMIT raised to cover it (the proxy cuts the merged rows).
    fn gather_parts(
        &self,
        query: &Bytes,
        merge: Merge,
    ) -> Option<(Vec<(BackendId, Request)>, Merged)> {
        let backends = self.topology().pools.len();
        let (bytes, merged) = match merge {
            Merge::Combine(combine) => {
                let bytes = match crate::router::split::scatter_limit(query_text(query)?, &combine)?
                {
                    Some(sql) => {
                        let mut out = BytesMut::new();
                        messages::query(&mut out, &sql);
                        out.freeze()
                    }
                    None => query.clone(),
                };
                (bytes, Merged::Combine(combine))
            }
            _ => (query.clone(), Merged::Rows),
        };
        let request = Request {
            bytes,
            statement: None,
        };
        Some((
            (0..backends).map(|b| (b, request.clone())).collect(),
            merged,
        ))
    }

    /// Runs one Query per backend, atomically.
    pub(super) async fn run_parts(&mut self, parts: Vec<(BackendId, Bytes)>) {
        let parts = parts
            .into_iter()
            .map(|(b, bytes)| {
                let request = Request {
                    bytes,
                    statement: None,
                };
                (b, request)
            })
            .collect();
        self.answer(parts, true, Merged::Rows).await;
    }

    /// An extended batch (its Bind is `bind`, the rest up to Sync still buffered)
    /// that runs on every backend atomically. `false`: the batch is not whole or
    /// not plain (nothing was taken); the caller refuses it.
    pub(super) async fn run_batch_everywhere(&mut self, bind: &Bytes) -> bool {
        let Some(request) = self.batch_request(bind) else {
            return false;
        };
        let backends = self.topology().pools.len();
        let parts = (0..backends).map(|b| (b, request.clone())).collect();
        self.answer(parts, true, Merged::Rows).await;
        // The batch's Sync was taken with it.
        self.pipeline.unsynced = false;
        self.pipeline.skip_until_sync = false;
        true
    }

    /// The whole batch for every server: the statement's Parse (the client's
    /// unnamed one, or its named one under the global name), the Bind, then the
    /// buffered Describe/Execute messages up to Sync, which are taken.
    fn batch_request(&mut self, bind: &Bytes) -> Option<Request> {
        let (portal, name, rest_at) = messages::bind_names(&bind[5..])?;
        let mut bytes = BytesMut::new();
        let statement = if name.is_empty() {
            bytes.extend_from_slice(&self.unnamed.as_ref()?.parse);
            None
        } else {
            let statement = self.statements.get(name)?.clone();
            statements::rewrite_bind(
                &mut bytes,
                portal,
                &statement.global_name,
                &bind[5 + rest_at..],
            );
            Some(statement)
        };
        if statement.is_none() {
            bytes.extend_from_slice(bind);
        }
        let mut at = 0;
        loop {
            let info = next_frame(&self.conn.rbuf[at..]).ok()??;
            let frame = &self.conn.rbuf[at..at + info.len];
            match (info.tag, messages::target(&frame[5..])) {
                // A Describe of the client's named statement, under its global name.
                (b'D', Some((b'S', name))) if !name.is_empty() => {
                    let statement = self.statements.get(name)?;
                    statements::rewrite_describe(&mut bytes, &statement.global_name);
                }
                (b'D' | b'E' | b'S', _) => bytes.extend_from_slice(frame),
                _ => return None,
            }
            at += info.len;
            if info.tag == b'S' {
                break;
            }
        }
        let _ = self.conn.rbuf.split_to(at);
        Some(Request {
            bytes: bytes.freeze(),
            statement,
        })
    }

    async fn answer(&mut self, parts: Vec<(BackendId, Request)>, atomic: bool, merged: Merged) {
        let mut reply = match self.fan_out(&parts, atomic, merged).await {
            Ok(reply) => reply,
            Err(e) => error_reply(e),
        };
        messages::ready_for_query(&mut reply, b'I');
        self.pipeline.push(Expect::Synthetic(reply.freeze()));
    }

    /// Runs each part's request on its backend outside any transaction of the
    /// client's (parts in backend order, so two clients doing this cannot deadlock
    /// on pools). The reply, without ReadyForQuery.
    async fn fan_out(
        &mut self,
        parts: &[(BackendId, Request)],
        atomic: bool,
        merged: Merged,
    ) -> Result<BytesMut, ClientError> {
        let backends: Vec<BackendId> = parts.iter().map(|(b, _)| *b).collect();
        let mut servers = if atomic {
            self.begin_all(&backends).await?
        } else {
            self.checkout_all(&backends).await?
        };
        let replies = match run_on(&mut servers, parts).await {
            Ok(replies) => replies,
            Err(Failure::Lost(e)) => return Err(e),
            Err(Failure::Failed { error, .. }) => {
                if atomic {
                    rollback_all(&mut servers).await;
                }
                release(&mut servers);
                return Ok(BytesMut::from(&error[..]));
            }
        };
        if atomic {
            self.commit_all(&mut servers).await?;
        }
        release(&mut servers);
        reply_of(&replies, merged)
    }

    /// A simple Query that needs several backends (`decision`), inside the client's
    /// transaction.
    pub(super) async fn spread_query(&mut self, decision: Decision, query: &Bytes) {
        let request = |bytes: Bytes| Request {
            bytes,
            statement: None,
        };
        let every = |query: &Bytes| {
            let backends = self.topology().pools.len();
            (0..backends).map(|b| (b, request(query.clone()))).collect()
        };
        let (parts, merged) = match decision {
            Decision::All => (every(query), Merged::Rows),
            Decision::Scatter(merge @ (Merge::Concat | Merge::Combine(_))) => {
                match self.gather_parts(query, merge) {
                    Some(parts) => parts,
                    None => {
                        let why = "pgshard could not rewrite this read's LIMIT/OFFSET";
                        return self.fail_transaction(ClientError::Unsupported(why.into()));
                    }
                }
            }
            Decision::Many { backends, .. } => {
                let parts = backends.into_iter().map(|b| (b, request(query.clone())));
                (parts.collect(), Merged::Rows)
            }
            Decision::Split(split) => match super::route::split_query(query, &split) {
                Some(parts) => {
                    let parts = parts.into_iter().map(|(b, q)| (b, request(q)));
                    (parts.collect(), Merged::Rows)
                }
                None => {
                    let why = "a multi-row INSERT split across backends needs its values \
                               written out";
                    return self.fail_transaction(ClientError::Unsupported(why.into()));
                }
            },
            Decision::CopyIn(copy) => return self.copy_in(copy, query).await,
            Decision::CopyOut { header } => return self.copy_out(query, header).await,
            other => {
                let why = format!("pgshard cannot run this statement here ({other:?})");
                return self.fail_transaction(ClientError::Unsupported(why));
            }
        };
        self.spread(parts, merged).await;
    }

    /// Runs each part's request on its backend inside the client's transaction,
    /// which takes in the backends it lacked (`span.rs`).
    pub(super) async fn spread(&mut self, parts: Vec<(BackendId, Request)>, merged: Merged) {
        let backends: Vec<BackendId> = parts.iter().map(|(b, _)| *b).collect();
        let mut servers = match self.join_all(&backends).await {
            Ok(servers) => servers,
            Err(e) => return self.fail_transaction(e),
        };
        let result = run_on(&mut servers, &parts).await;
        let mut reply = match result {
            Ok(replies) => {
                self.park_all(servers, None);
                match reply_of(&replies, merged) {
                    Ok(reply) => reply,
                    // The statement ran; only its answer could not be merged.
                    Err(e) => return self.fail_transaction(e),
                }
            }
            Err(Failure::Failed { at, error }) => {
                // The failed server is attached, so the transaction fails there too.
                self.park_all(servers, Some(at));
                self.pipeline.tx_status = b'E';
                BytesMut::from(&error[..])
            }
            Err(Failure::Lost(e)) => {
                drop(servers);
                // Out of the transaction: the reply ends with status 'I'.
                self.abandon_transaction();
                error_reply(e)
            }
        };
        messages::ready_for_query(&mut reply, self.pipeline.tx_status);
        self.pipeline.push(Expect::Synthetic(reply.freeze()));
    }
}

/// Why running parts stopped.
enum Failure {
    /// A server answered part `at` with this ErrorResponse; later parts did not run.
    Failed { at: usize, error: Bytes },
    /// A server connection failed.
    Lost(ClientError),
}

fn lost(server: &Guard) -> ClientError {
    ClientError::ServerLost(server.pool().backend.to_string())
}

/// Runs `parts[i]` on `servers[i]`, one after another, up to the first error.
async fn run_on(
    servers: &mut [(BackendId, Guard)],
    parts: &[(BackendId, Request)],
) -> Result<Vec<Vec<Bytes>>, Failure> {
    let mut replies = Vec::with_capacity(servers.len());
    for (at, ((_, server), (_, request))) in servers.iter_mut().zip(parts).enumerate() {
        let (bytes, added_parse) = request.for_server(server);
        let mut frames = match server.exchange(&bytes).await {
            Ok(frames) => frames,
            Err(_) => {
                server.broken = true;
                return Err(Failure::Lost(lost(server)));
            }
        };
        if added_parse && frames.first().and_then(|f| f.first()) == Some(&b'1') {
            // The client's own Parse was answered long ago.
            frames.remove(0);
        }
        if let Some(error) = frames.iter().find(|f| f.first() == Some(&b'E')) {
            return Err(Failure::Failed {
                at,
                error: error.clone(),
            });
        }
        replies.push(frames);
    }
    Ok(replies)
}

/// The client's reply (without ReadyForQuery) from every backend's.
fn reply_of(replies: &[Vec<Bytes>], merged: Merged) -> Result<BytesMut, ClientError> {
    match merged {
        Merged::Rows => Ok(merge(replies)),
        Merged::Combine(spec) => {
            let bound = |b: &Option<Bound>| match b {
                Some(Bound::Value(n)) => Ok(Some(*n)),
                None => Ok(None),
                Some(Bound::Source(_)) => Err(ClientError::Unsupported(
                    "pgshard could not read this LIMIT/OFFSET".into(),
                )),
            };
            let (limit, offset) = (bound(&spec.limit)?, bound(&spec.offset)?.unwrap_or(0));
            combine(replies, &spec, limit, offset).map_err(|why| {
                ClientError::Unsupported(format!("pgshard cannot merge this read: {why}"))
            })
        }
    }
}

/// How the replies combine.
#[derive(Clone, PartialEq, Eq)]
pub(super) enum Merged {
    /// Every backend's rows, row counts summed.
    Rows,
    /// Rows combined: grouped, aggregated, ordered, limited.
    Combine(Box<Combine>),
}

/// What a server runs.
#[derive(Clone)]
pub(super) struct Request {
    pub(super) bytes: Bytes,
    /// The client's named statement the batch binds, prepared where missing.
    pub(super) statement: Option<Arc<Statement>>,
}

impl Request {
    /// The bytes for `server`, and whether they start with a Parse whose reply the
    /// client must not see (the unnamed statement's, sent every time, or a named
    /// statement's the server lacked).
    fn for_server(&self, server: &mut ServerConn) -> (Bytes, bool) {
        let Some(statement) = &self.statement else {
            let unnamed = self.bytes.first() == Some(&b'P');
            return (self.bytes.clone(), unnamed);
        };
        if !server.prepared.insert(statement.id) {
            return (self.bytes.clone(), false);
        }
        let mut bytes = BytesMut::from(&statement.parse[..]);
        bytes.extend_from_slice(&self.bytes);
        (bytes.freeze(), true)
    }
}

/// The SQL of a Query message.
fn query_text(query: &[u8]) -> Option<&str> {
    std::str::from_utf8(query.get(5..)?.strip_suffix(b"\0")?).ok()
}

/// One reply for the client: per statement, the first backend's description, the
/// rows of every backend, and the row counts summed.
fn merge(replies: &[Vec<Bytes>]) -> BytesMut {
    let mut out = BytesMut::new();
    let segments: Vec<Vec<&[Bytes]>> = replies.iter().map(|r| segments(r)).collect();
    let count = segments.first().map_or(0, Vec::len);
    for i in 0..count {
        let parts: Vec<&[Bytes]> = segments.iter().filter_map(|s| s.get(i).copied()).collect();
        let Some(first) = parts.first() else {
            continue;
        };
        // Description and notices: the first backend's.
        for frame in first
            .iter()
            .filter(|f| !matches!(f.first(), Some(b'D' | b'C')))
        {
            out.extend_from_slice(frame);
        }
        for part in &parts {
            for frame in part.iter().filter(|f| f.first() == Some(&b'D')) {
                out.extend_from_slice(frame);
            }
        }
        let tags: Vec<&[u8]> = parts
            .iter()
            .filter_map(|p| p.iter().find(|f| f.first() == Some(&b'C')))
            .map(|f| command_tag(f))
            .collect();
        if !tags.is_empty() {
            messages::command_complete(&mut out, &sum_tags(&tags));
        }
    }
    out
}

/// A reply cut after each CommandComplete (and EmptyQueryResponse), without its
/// ReadyForQuery.
fn segments(reply: &[Bytes]) -> Vec<&[Bytes]> {
    let mut out = Vec::new();
    let mut start = 0;
    for (i, frame) in reply.iter().enumerate() {
        match frame.first() {
            Some(b'C' | b'I') => {
                out.push(&reply[start..=i]);
                start = i + 1;
            }
            Some(b'Z') => {
                if start < i {
                    out.push(&reply[start..i]);
                }
                break;
            }
            _ => {}
        }
    }
    out
}

fn command_tag(frame: &[u8]) -> &[u8] {
    let payload = frame.get(5..).unwrap_or_default();
    payload.strip_suffix(b"\0").unwrap_or(payload)
}

/// `UPDATE 3` + `UPDATE 4` -> `UPDATE 7` (`INSERT 0 n` keeps its 0); tags without a
/// count stay as the first one.
pub(super) fn sum_tags(tags: &[&[u8]]) -> String {
    let first = String::from_utf8_lossy(tags.first().copied().unwrap_or_default()).into_owned();
    let Some((head, _)) = first.rsplit_once(' ') else {
        return first;
    };
    let mut total: u64 = 0;
    for tag in tags {
        let text = String::from_utf8_lossy(tag);
        match text.rsplit_once(' ').map(|(h, n)| (h, n.parse::<u64>())) {
            Some((h, Ok(n))) if h == head => total += n,
            _ => return first,
        }
    }
    format!("{head} {total}")
}

#[cfg(test)]
mod tests {
    use super::sum_tags;

    #[test]
    fn row_counts_add_up() {
        assert_eq!(sum_tags(&[b"UPDATE 3", b"UPDATE 4"]), "UPDATE 7");
        assert_eq!(sum_tags(&[b"INSERT 0 1", b"INSERT 0 2"]), "INSERT 0 3");
        assert_eq!(
            sum_tags(&[b"CREATE TABLE", b"CREATE TABLE"]),
            "CREATE TABLE"
        );
        assert_eq!(sum_tags(&[b"DELETE 1"]), "DELETE 1");
    }
}
