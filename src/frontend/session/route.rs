//! Routing a session's transactions by key, when the shard map has more than one
//! backend (with one, everything goes to it and none of this runs).
//!
//! A transaction runs on the backend its first routed statement names: a Query's
//! key, or a Bind's key with its statement's plan. `BEGIN` is answered at once and
//! sent to the backend with the transaction's first statement. Later statements are
//! checked against the attached server (`check.rs`) and may take the transaction to
//! more backends (`span.rs`). A statement that cannot run is refused the way
//! PostgreSQL refuses a failing statement: the server runs a statement that raises
//! the error, so the server's transaction fails with it and COMMIT then rolls back.
//! Statements on several backends run in `fanout.rs` and `copy.rs`.

use std::sync::Arc;

use bytes::{Bytes, BytesMut};

use super::raise::raise_query;
use super::several::{needs_several, read_on, split_query, spreads, spreads_batch};
use super::Session;
use crate::error::ClientError;
use crate::frontend::pipeline::Expect;
use crate::frontend::statements::Statement;
use crate::limits;
use crate::protocol::messages;
use crate::router::decide::{decide, CopyInto, Decision, Merge, Param};
use crate::router::sql::Analyzed;
use crate::router::{BackendId, ShardMap};

/// The setting that routes a session's statements by a key of the client's choice
/// (`SET pgshard.key = 42`; `RESET pgshard.key` ends it).
const SESSION_KEY: &str = "pgshard.key";

/// Where the first message of a transaction goes.
pub(super) enum Target {
    Backend(BackendId),
    /// Answer BEGIN now; attach at the transaction's first statement.
    DeferBegin,
    /// The same for an extended-protocol BEGIN: the Bind, then its Execute.
    DeferBeginBind,
    /// Every backend, atomically (autocommit DDL, keyless writes).
    Everywhere,
    /// Every backend, one after another, outside a transaction.
    Maintenance,
    /// Some backends, each its own Query, atomically (split INSERT, keyed writes on
    /// several backends).
    Fanout(Vec<(BackendId, Bytes)>),
    /// A read on these backends (every one, or those of its keys), replies merged.
    Gather(Vec<BackendId>, Merge),
    /// The same as an extended-protocol batch.
    GatherBatch(Vec<BackendId>, Merge),
    /// An extended-protocol write on these backends, atomically.
    FanoutBatch(Vec<BackendId>),
    /// An extended-protocol INSERT whose rows belong on several backends, split.
    SplitBatch(Vec<(BackendId, Vec<usize>)>),
    /// An extended-protocol batch on several backends inside the client's
    /// (deferred) transaction.
    SpreadBatch(Decision),
    /// Several backends inside the client's (deferred) transaction.
    Spread(Decision),
    /// COPY FROM STDIN split by key, in its own distributed transaction.
    CopyIn(CopyInto),
    /// COPY TO STDOUT from every backend (`header`: each writes one).
    CopyOut(bool),
    Refuse(ClientError),
}

impl Session {
    /// A Parse with no server attached is kept and answered here; it is sent to
    /// the backend its Bind's key chooses (`ensure_unnamed`, `ensure_prepared`).
    pub(super) fn defer_parse(&mut self, frame: &Bytes) -> bool {
        let Some((name, query, types)) = messages::parse_message(&frame[5..]) else {
            return false;
        };
        let changes = self.param_changes(query);
        if name.is_empty() {
            self.unnamed = Some(super::Unnamed {
                parse: frame.clone(),
                changes,
            });
            self.unnamed_here = false;
        } else {
            // Duplicates and the limit are the usual path's to report.
            if self.statements.contains(name)
                || self.statements.len() >= limits::CLIENT_PREPARED_MAX
            {
                return false;
            }
            let statement = Statement::new(query, types, changes);
            self.statements.insert(name, Arc::new(statement));
        }
        self.pipeline
            .push(Expect::Synthetic(Bytes::from_static(super::PARSE_COMPLETE)));
        self.pipeline.unsynced = true;
        self.batch_deferred = true;
        true
    }

    /// Attaches the server `frame`'s transaction belongs on, or answers `frame` here
    /// (deferred BEGIN, a statement run on every backend, a refusal). `true`: the
    /// message goes on to the attached server.
    pub(super) async fn attach_routed(&mut self, tag: u8, frame: &Bytes, map: &ShardMap) -> bool {
        let deferred = self.deferred_begin.is_some();
        if deferred && tag == b'Q' && self.end_deferred(&frame[5..]) {
            return false;
        }
        if deferred && self.pipeline.tx_status == b'E' {
            self.refuse_deferred(tag, ClientError::TransactionAborted);
            return false;
        }
        let error = match self.route_first(tag, frame, map) {
            Target::Backend(id) => match self.attach(id).await {
                Ok(()) => return true,
                Err(e) => e,
            },
            Target::DeferBegin => {
                self.defer_begin(frame.clone());
                return false;
            }
            Target::DeferBeginBind => {
                let begin = self.bound_sql(&frame[5..], None).map(|sql| {
                    let mut query = BytesMut::new();
                    messages::query(&mut query, sql);
                    query.freeze()
                });
                if let Some(begin) = begin {
                    self.answer_bind(super::span::Answering::Begin(begin));
                    return false;
                }
                match self.attach(map.default_backend).await {
                    Ok(()) => return true,
                    Err(e) => e,
                }
            }
            Target::Spread(decision) => {
                self.spread_query(decision, frame).await;
                return false;
            }
            Target::CopyIn(copy) => {
                self.copy_in(copy, frame).await;
                return false;
            }
            Target::CopyOut(header) => {
                self.copy_out(frame, header).await;
                return false;
            }
            Target::Everywhere if tag == b'Q' => {
                self.run_everywhere(frame, true).await;
                return false;
            }
            Target::Everywhere => {
                let every = (0..self.topology().pools.len()).collect();
                match self.run_batch_on(frame, every).await {
                    Ok(()) => return false,
                    Err(why) => ClientError::Unsupported(why),
                }
            }
            Target::FanoutBatch(backends) => match self.run_batch_on(frame, backends).await {
                Ok(()) => return false,
                Err(why) => ClientError::Unsupported(why),
            },
            Target::SplitBatch(split) => match self.run_split_batch(frame, &split).await {
                Ok(()) => return false,
                Err(why) => ClientError::Unsupported(why),
            },
            Target::GatherBatch(backends, merge) => {
                match self.run_gather_batch(frame, &merge, backends).await {
                    Ok(()) => return false,
                    Err(why) => ClientError::Unsupported(why),
                }
            }
            Target::SpreadBatch(decision) => match self.spread_batch(&decision, frame).await {
                Ok(()) => return false,
                Err(why) => ClientError::Unsupported(why),
            },
            Target::Maintenance => {
                self.run_everywhere(frame, false).await;
                return false;
            }
            Target::Fanout(parts) => {
                self.run_parts(parts).await;
                return false;
            }
            Target::Gather(backends, merge) => {
                self.run_gather(frame, merge, backends).await;
                return false;
            }
            Target::Refuse(e) => e,
        };
        if self.deferred_begin.is_some() {
            self.refuse_deferred(tag, error);
        } else {
            self.refuse(tag, error);
        }
        false
    }

    /// A transaction in which only Parse/Describe ran so far (a driver preparing its
    /// statement) moves to the backend its first real statement needs: the first
    /// server rolls back and goes back to its pool, BEGIN goes to the new one, and
    /// statements are prepared there as on any other. `None`: it cannot move (the
    /// caller refuses the statement); `Some(false)`: moving failed and the client
    /// was answered; `Some(true)`: moved.
    pub(super) async fn move_transaction(
        &mut self,
        tag: u8,
        frame: &[u8],
        map: &ShardMap,
    ) -> Option<bool> {
        let settled = self.pipeline.is_empty() && !self.pipeline.unsynced;
        let (Some(begin), false, true) = (self.begin.clone(), self.touched, settled) else {
            return None;
        };
        let Some(Decision::One(target)) = self.decision(tag, frame, map) else {
            return None;
        };
        let mut server = self.server.take()?;
        self.backend = None;
        self.info.detach();
        match server.execute("ROLLBACK").await {
            Ok(()) => server.idle = true,
            Err(_) => server.broken = true,
        }
        drop(server);
        self.deferred_begin = Some(begin);
        match self.attach(target).await {
            Ok(()) => Some(true),
            Err(e) => {
                // The client was told BEGIN succeeded; the transaction is now failed.
                self.deferred_begin = self.begin.take();
                self.refuse_deferred(tag, e);
                Some(false)
            }
        }
    }

    /// Refuses a statement inside the attached server's transaction, failing that
    /// transaction on the server too (see `raise.rs`).
    pub(super) fn refuse_in_transaction(&mut self, tag: u8, why: String) {
        if tag == b'Q' {
            self.swbuf.extend_from_slice(&raise_query(&why));
            self.push(crate::frontend::pipeline::Req::Query);
        } else {
            self.raise_at_sync = Some(why);
            self.pipeline.skip_until_sync = true;
        }
    }

    /// The routing decision for a Query, or a Bind with its statement's plan.
    /// `None` for other messages, and for statements the lexer cannot read (they go
    /// to the default backend, which reports the error).
    pub(super) fn decision(&self, tag: u8, frame: &[u8], map: &ShardMap) -> Option<Decision> {
        let payload = frame.get(5..)?;
        match tag {
            b'Q' => {
                let sql = std::str::from_utf8(payload.strip_suffix(b"\0")?).ok()?;
                let analyzed = self.analyze(sql, map)?;
                Some(decide(&analyzed, &[], map))
            }
            b'B' => self.bind_decision(payload, None, map),
            _ => None,
        }
    }

    /// The statement's analysis, with the session's `SET pgshard.key` as its key
    /// unless the statement names one in a comment.
    pub(super) fn analyze(&self, sql: &str, map: &ShardMap) -> Option<Analyzed> {
        let mut analyzed = self.app.plans.analyze(sql, map).ok()?;
        if analyzed.key_hint.is_none() {
            analyzed.key_hint = self.session_key();
        }
        Some(analyzed)
    }

    /// The session's `SET pgshard.key`, unquoted.
    fn session_key(&self) -> Option<String> {
        self.params.get(SESSION_KEY).map(|v| {
            let v = v.trim();
            v.strip_prefix('\'')
                .and_then(|v| v.strip_suffix('\''))
                .unwrap_or(v)
                .replace("''", "'")
        })
    }

    /// A Bind's decision (`payload` without the header). Its statement is the
    /// client's named one, or the unnamed one: `unnamed` (a Parse message not yet
    /// recorded) or else the last one recorded.
    pub(super) fn bind_decision(
        &self,
        payload: &[u8],
        unnamed: Option<&[u8]>,
        map: &ShardMap,
    ) -> Option<Decision> {
        self.with_bound(payload, unnamed, map, |analyzed, params| {
            decide(analyzed, params, map)
        })
    }

    /// `f` of a Bind's analyzed statement and its parameters (see `bind_decision`).
    /// A named statement's analysis is kept with it; the unnamed one's is looked up
    /// in the plan cache at each Bind (its Parse may come again with any text).
    pub(super) fn with_bound<T>(
        &self,
        payload: &[u8],
        unnamed: Option<&[u8]>,
        map: &ShardMap,
        f: impl FnOnce(&Analyzed, &[Param]) -> T,
    ) -> Option<T> {
        let (_, name, rest_at) = messages::bind_names(payload)?;
        let params: Vec<Param> = messages::bind_params(payload, rest_at)?
            .into_iter()
            .map(|(format, value)| Param { format, value })
            .collect();
        if name.is_empty() {
            let analyzed = self.analyze(self.bound_sql(payload, unnamed)?, map)?;
            return Some(f(&analyzed, &params));
        }
        let statement = self.statements.get(name)?;
        statement.with_analysis(map, &self.app.plans, |analyzed| {
            match self.session_key().filter(|_| analyzed.key_hint.is_none()) {
                Some(key) => {
                    let mut analyzed = analyzed.clone();
                    analyzed.key_hint = Some(key);
                    f(&analyzed, &params)
                }
                None => f(analyzed, &params),
            }
        })
    }

    /// Where the transaction that `frame` starts runs.
    pub(super) fn route_first(&self, tag: u8, frame: &[u8], map: &ShardMap) -> Target {
        let default = Target::Backend(map.default_backend);
        let in_transaction = self.deferred_begin.is_some();
        let autocommit = tag == b'Q' && !in_transaction;
        let decision = self.decision(tag, frame, map);
        if let Some(kind) = decision.as_ref().and_then(unrouted_kind) {
            metrics::counter!("pgshard_unrouted_statements_total", "kind" => kind).increment(1);
        }
        let Some(decision) = decision else {
            return default;
        };
        match decision {
            Decision::Any
            | Decision::Default
            | Decision::Session
            | Decision::End { .. }
            | Decision::Savepoint => default,
            Decision::One(backend) => Target::Backend(backend),
            Decision::Begin if autocommit => Target::DeferBegin,
            Decision::Begin if tag == b'B' && !in_transaction => Target::DeferBeginBind,
            Decision::Begin => default,
            Decision::Error(why) => Target::Refuse(ClientError::Unsupported(why)),
            d if in_transaction && tag == b'Q' && spreads(&d) => Target::Spread(d),
            d if in_transaction && tag == b'B' && spreads_batch(&d) => Target::SpreadBatch(d),
            Decision::All if !in_transaction => Target::Everywhere,
            Decision::CopyIn(copy) if autocommit => Target::CopyIn(copy),
            Decision::CopyOut { header } if autocommit => Target::CopyOut(header),
            Decision::Maintenance if autocommit => Target::Maintenance,
            Decision::Many { backends } if autocommit => {
                let query = Bytes::copy_from_slice(frame);
                Target::Fanout(backends.into_iter().map(|b| (b, query.clone())).collect())
            }
            Decision::Many { backends } if tag == b'B' => Target::FanoutBatch(backends),
            Decision::Split(split) if tag == b'B' => Target::SplitBatch(split),
            d if matches!(tag, b'Q' | b'B') && read_on(&d, map).is_some() => {
                let Some((backends, merge)) = read_on(&d, map) else {
                    return default;
                };
                match tag {
                    b'Q' => Target::Gather(backends, merge),
                    _ => Target::GatherBatch(backends, merge),
                }
            }
            Decision::Split(split) if autocommit => match split_query(frame, &split) {
                Some(parts) => Target::Fanout(parts),
                None => Target::Refuse(ClientError::Unsupported(needs_several(&Decision::Split(
                    split,
                )))),
            },
            other => Target::Refuse(ClientError::Unsupported(needs_several(&other))),
        }
    }

    /// The SQL text of the statement a Bind (`payload`, without the header) runs:
    /// the client's named one, or the unnamed one: `unnamed` (a Parse message not
    /// yet recorded) or else the last one recorded.
    pub(super) fn bound_sql<'a>(
        &'a self,
        payload: &[u8],
        unnamed: Option<&'a [u8]>,
    ) -> Option<&'a str> {
        let (_, name, _) = messages::bind_names(payload)?;
        let parse: &[u8] = match (name.is_empty(), unnamed) {
            (true, Some(parse)) => parse,
            (true, None) => &self.unnamed.as_ref()?.parse,
            (false, _) => &self.statements.get(name)?.parse,
        };
        let (_, query, _) = messages::parse_message(parse.get(5..)?)?;
        std::str::from_utf8(query).ok()
    }
}

/// For statements on sharded tables that are not routed by one key: what happens to
/// them (the `kind` label of `pgshard_unrouted_statements_total`).
fn unrouted_kind(decision: &Decision) -> Option<&'static str> {
    match decision {
        Decision::All | Decision::Maintenance => Some("all_backends"),
        Decision::Scatter(_)
        | Decision::Gather { .. }
        | Decision::Many { .. }
        | Decision::Split(_) => Some("several_backends"),
        Decision::CopyIn(_) | Decision::CopyOut { .. } => Some("copy"),
        Decision::Error(_) => Some("refused"),
        _ => None,
    }
}
