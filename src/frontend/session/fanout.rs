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
use super::several::read_on;
use super::Session;
use crate::backend::pool::Guard;
use crate::backend::server::ServerConn;
use crate::error::ClientError;
use crate::frontend::pipeline::Expect;
use crate::frontend::statements::Statement;
use crate::protocol::messages;
use crate::router::decide::{Decision, Merge};
use crate::router::sql::merge::Combine;
use crate::router::BackendId;

impl Session {
    /// Runs `query` (a whole Query message) on every backend; `atomic`: inside one
    /// distributed transaction.
    pub(super) async fn run_everywhere(&mut self, query: &Bytes, atomic: bool) {
        let request = Request::plain(query.clone());
        let backends = self.topology().pools.len();
        let parts = (0..backends).map(|b| (b, request.clone())).collect();
        self.answer(parts, atomic, Merged::Rows).await;
    }

    /// A read (a whole Query message) on `backends`, outside any transaction, its
    /// replies merged as `merge` says.
    pub(super) async fn run_gather(
        &mut self,
        query: &Bytes,
        merge: Merge,
        backends: Vec<BackendId>,
    ) {
        let Some((parts, merged)) = gather_parts(query, merge, backends) else {
            return self.reply_error(ClientError::Unsupported(NOT_REWRITTEN.into()));
        };
        self.answer(parts, false, merged).await;
    }

    /// Runs one Query per backend, atomically.
    pub(super) async fn run_parts(&mut self, parts: Vec<(BackendId, Bytes)>) {
        let parts = parts
            .into_iter()
            .map(|(b, bytes)| (b, Request::plain(bytes)))
            .collect();
        self.answer(parts, true, Merged::Rows).await;
    }

    pub(super) async fn answer(
        &mut self,
        parts: Vec<(BackendId, Request)>,
        atomic: bool,
        merged: Merged,
    ) {
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
            Err(Failure::Lost(e) | Failure::Refused(e)) => return Err(e),
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
        // A merged read may ask a backend to order values (its own transaction).
        let reply = super::gather::merged_reply(&mut servers, &replies, merged).await;
        release(&mut servers);
        match reply {
            Ok(reply) => Ok(reply),
            Err(Failure::Lost(e) | Failure::Refused(e)) => Err(e),
            Err(Failure::Failed { error, .. }) => Ok(BytesMut::from(&error[..])),
        }
    }

    /// A simple Query that needs several backends (`decision`), inside the client's
    /// transaction.
    pub(super) async fn spread_query(&mut self, decision: Decision, query: &Bytes) {
        let request = Request::plain;
        let every = |query: &Bytes| {
            let backends = self.topology().pools.len();
            (0..backends).map(|b| (b, request(query.clone()))).collect()
        };
        let read = read_on(&decision, &self.topology().map);
        if let Some((backends, merge)) = read {
            let Some((parts, merged)) = gather_parts(query, merge, backends) else {
                return self.fail_transaction(ClientError::Unsupported(NOT_REWRITTEN.into()));
            };
            return self.spread(parts, merged).await;
        }
        let (parts, merged) = match decision {
            Decision::All => (every(query), Merged::Rows),
            Decision::Many { backends } => {
                let parts = backends.into_iter().map(|b| (b, request(query.clone())));
                (parts.collect(), Merged::Rows)
            }
            Decision::Split(split) => match super::several::split_query(query, &split) {
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
        let result = match run_on(&mut servers, &parts).await {
            Ok(replies) => super::gather::merged_reply(&mut servers, &replies, merged).await,
            Err(e) => Err(e),
        };
        let mut reply = match result {
            Ok(reply) => {
                self.park_all(servers, None);
                reply
            }
            Err(Failure::Refused(e)) => {
                // The statement ran; only its answer could not be merged.
                self.park_all(servers, None);
                return self.fail_transaction(e);
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

/// A read for `backends`: as sent, or rewritten for the merge (`router::scatter`).
fn gather_parts(
    query: &Bytes,
    merge: Merge,
    backends: Vec<BackendId>,
) -> Option<(Vec<(BackendId, Request)>, Merged)> {
    let (bytes, merged) = match merge {
        Merge::Combine(combine) => {
            let bytes = match crate::router::scatter::scatter_sql(query_text(query)?, &combine)? {
                Some(scatter) => {
                    let mut out = BytesMut::new();
                    messages::query(&mut out, &scatter.sql);
                    out.freeze()
                }
                None => query.clone(),
            };
            (bytes, Merged::Combine(combine))
        }
        _ => (query.clone(), Merged::Rows),
    };
    let request = Request::plain(bytes);
    Some((
        backends.into_iter().map(|b| (b, request.clone())).collect(),
        merged,
    ))
}

const NOT_REWRITTEN: &str = "pgshard could not rewrite this read for the backends";

/// Why running parts stopped.
pub(super) enum Failure {
    /// A server answered part `at` with this ErrorResponse; later parts did not run.
    Failed { at: usize, error: Bytes },
    /// A server connection failed.
    Lost(ClientError),
    /// The statement ran, but its answer cannot be merged.
    Refused(ClientError),
}

pub(super) fn lost(server: &Guard) -> ClientError {
    ClientError::ServerLost(server.pool().backend.to_string())
}

/// Runs `parts[i]` on `servers[i]`, one after another, up to the first error.
async fn run_on(
    servers: &mut [(BackendId, Guard)],
    parts: &[(BackendId, Request)],
) -> Result<Vec<Vec<Bytes>>, Failure> {
    let mut replies = Vec::with_capacity(servers.len());
    for (at, ((_, server), (_, request))) in servers.iter_mut().zip(parts).enumerate() {
        let (bytes, hidden, claimed) = request.for_server(server);
        let mut frames = match server.exchange(&bytes).await {
            Ok(frames) => frames,
            Err(_) => {
                server.broken = true;
                return Err(Failure::Lost(lost(server)));
            }
        };
        // The client's own Parses were answered long ago; the proxy's are its own.
        let parsed = frames
            .iter()
            .take(hidden)
            .take_while(|f| f.first() == Some(&b'1'))
            .count();
        frames.drain(..parsed);
        if let Some(error) = frames.iter().find(|f| f.first() == Some(&b'E')) {
            // Statements whose Parse the error stopped are not on this server.
            for id in claimed.iter().skip(parsed) {
                server.prepared.remove(id);
            }
            return Err(Failure::Failed {
                at,
                error: error.clone(),
            });
        }
        replies.push(frames);
    }
    Ok(replies)
}

/// How the replies combine.
#[derive(Clone)]
pub(super) enum Merged {
    /// Every backend's rows, row counts summed.
    Rows,
    /// Rows combined: grouped, aggregated, ordered, limited.
    Combine(Box<Combine>),
    /// An extended-protocol read (`batch.rs`): its messages answered in order,
    /// rows concatenated or combined.
    Batch(Box<super::batch::ReadBatch>),
}

/// What a server runs.
#[derive(Clone)]
pub(super) struct Request {
    pub(super) bytes: Bytes,
    /// Parses at the start of `bytes` whose replies the client must not see (the
    /// client's unnamed statement, sent again).
    pub(super) hidden: usize,
    /// Statements prepared first where the server lacks them (the client's named
    /// one, a rewritten one); their replies are hidden too.
    pub(super) statements: Vec<Arc<Statement>>,
}

impl Request {
    pub(super) fn plain(bytes: Bytes) -> Request {
        Request {
            bytes,
            hidden: 0,
            statements: Vec::new(),
        }
    }

    /// The bytes for `server`, how many Parses at their start have replies the
    /// client must not see, and the statements claimed as prepared there now (in
    /// the order of their Parses).
    fn for_server(&self, server: &mut ServerConn) -> (Bytes, usize, Vec<u64>) {
        let mut claimed = Vec::new();
        let mut bytes = BytesMut::new();
        for statement in &self.statements {
            if server.prepared.insert(statement.id) {
                bytes.extend_from_slice(&statement.parse);
                claimed.push(statement.id);
            }
        }
        if bytes.is_empty() {
            return (self.bytes.clone(), self.hidden, claimed);
        }
        bytes.extend_from_slice(&self.bytes);
        (bytes.freeze(), claimed.len() + self.hidden, claimed)
    }
}

/// The SQL of a Query message.
pub(super) fn query_text(query: &[u8]) -> Option<&str> {
    std::str::from_utf8(query.get(5..)?.strip_suffix(b"\0")?).ok()
}

/// One reply for the client: per statement, the first backend's description, the
/// rows of every backend, and the row counts summed.
pub(super) fn merge(replies: &[Vec<Bytes>]) -> BytesMut {
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
