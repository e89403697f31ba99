//! A transaction that spans backends (routing by key only). The session keeps one
//! server attached, as always, and parks the transaction's other servers, each idle
//! inside the transaction. At a request boundary a statement for another backend
//! switches servers; one that needs several runs on each (`fanout.rs`); COMMIT
//! commits them all with two-phase commit, ROLLBACK rolls them all back.
//!
//! What holds on one backend only is refused once the transaction spans several:
//! savepoints, COMMIT/ROLLBACK AND CHAIN, settings changed inside the transaction,
//! and transaction control mixed with other statements in one Query.

use bytes::{Bytes, BytesMut};

use super::check::Attached;
use super::servers::{error_reply, release, rollback_all};
use super::Session;
use crate::backend::pool::Guard;
use crate::error::ClientError;
use crate::frontend::pipeline::Expect;
use crate::protocol::messages;
use crate::router::{BackendId, ShardMap};

/// A Bind the proxy answers itself, with the Describe and Execute of its portal.
#[derive(Clone)]
pub(super) enum Answering {
    /// BEGIN, deferred: its Query form, sent to the transaction's first backend.
    Begin(Bytes),
    /// COMMIT (`true`) or ROLLBACK of a transaction spanning backends.
    End(bool),
}

impl Session {
    /// Carries out what `check_attached` found (`action`) for `frame`. `Ok(true)`:
    /// the message goes on to the attached server; `Err`: it is refused, why.
    pub(super) async fn span(
        &mut self,
        action: Attached,
        tag: u8,
        frame: &Bytes,
        map: &ShardMap,
    ) -> Result<bool, String> {
        match action {
            Attached::Switch(backend) => {
                // A transaction in which nothing ran yet moves instead.
                if let Some(moved) = self.move_transaction(tag, frame, map).await {
                    return Ok(moved);
                }
                self.switch_to(backend).await.map_err(|e| e.to_string())?;
                Ok(true)
            }
            Attached::Spread(decision) => {
                self.spread_query(decision, frame).await;
                Ok(false)
            }
            Attached::SpreadBatch(decision) => {
                self.spread_batch(&decision, frame).await?;
                Ok(false)
            }
            Attached::End(commit) if tag == b'Q' => {
                let mut reply = self.end_spanning(commit).await;
                messages::ready_for_query(&mut reply, b'I');
                self.pipeline.push(Expect::Synthetic(reply.freeze()));
                Ok(false)
            }
            Attached::End(commit) => {
                self.answer_bind(Answering::End(commit));
                Ok(false)
            }
            Attached::DeferParse => Ok(!self.defer_parse(frame)),
            Attached::Fits | Attached::Hold | Attached::Release | Attached::Mismatch(_) => Ok(true),
        }
    }

    pub(super) fn spanning(&self) -> bool {
        !self.parked.is_empty()
    }

    /// The transaction's server on `backend`: the attached one (detached now), a
    /// parked one, or a new one that has run the transaction's BEGIN.
    async fn join(&mut self, backend: BackendId) -> Result<Guard, ClientError> {
        if self.backend == Some(backend) {
            if let Some(server) = self.server.take() {
                self.backend = None;
                self.info.detach();
                return Ok(server);
            }
        }
        if let Some(at) = self.parked.iter().position(|(b, _)| *b == backend) {
            return Ok(self.parked.swap_remove(at).1);
        }
        let pool = self.topology().pool(backend).clone();
        let begin = match (&self.begin, &self.deferred_begin) {
            (Some(begin), _) | (None, Some(begin)) => begin.clone(),
            (None, None) => {
                let mut query = BytesMut::new();
                messages::query(&mut query, "BEGIN");
                query.freeze()
            }
        };
        self.checkout_begun(&pool, &begin).await
    }

    /// Makes `server` (on `backend`) the attached one.
    fn attach_joined(&mut self, backend: BackendId, server: Guard) {
        self.info.attach(&server.pool().backend, &server.cancel);
        self.server = Some(server);
        self.backend = Some(backend);
        // It may lack the client's unnamed statement: sent again before its use.
        self.unnamed_here = false;
        self.touched = true;
        if let Some(begin) = self.deferred_begin.take() {
            self.begin = Some(begin);
        }
    }

    /// At a request boundary inside a transaction: the attached server is parked
    /// and `backend`'s becomes the attached one. On failure nothing changed.
    pub(super) async fn switch_to(&mut self, backend: BackendId) -> Result<(), ClientError> {
        let server = self.join(backend).await?;
        if let (Some(current), Some(at)) = (self.server.take(), self.backend.take()) {
            self.parked.push((at, current));
        }
        self.attach_joined(backend, server);
        Ok(())
    }

    /// The servers of the transaction on `backends`, in that order (joined as
    /// needed). On failure, those already held are parked again.
    pub(super) async fn join_all(
        &mut self,
        backends: &[BackendId],
    ) -> Result<Vec<(BackendId, Guard)>, ClientError> {
        let mut held = Vec::with_capacity(backends.len());
        for &backend in backends {
            match self.join(backend).await {
                Ok(server) => held.push((backend, server)),
                Err(e) => {
                    self.park_all(held, None);
                    return Err(e);
                }
            }
        }
        Ok(held)
    }

    /// Puts servers back into the transaction after a statement ran on them: the
    /// one at `attach` (the failed one, so the transaction fails there), else the
    /// previously attached one, else the first, is attached; the rest are parked.
    pub(super) fn park_all(&mut self, servers: Vec<(BackendId, Guard)>, attach: Option<usize>) {
        let mut attach = attach;
        if attach.is_none() && self.server.is_none() {
            attach = (!servers.is_empty()).then_some(0);
        }
        for (i, (backend, server)) in servers.into_iter().enumerate() {
            if Some(i) == attach {
                if let (Some(current), Some(at)) = (self.server.take(), self.backend.take()) {
                    self.parked.push((at, current));
                }
                self.attach_joined(backend, server);
            } else {
                self.parked.push((backend, server));
            }
        }
    }

    /// Ends a transaction spanning backends: commits (two-phase) or rolls back on
    /// every server, releases them, and returns the reply up to (without)
    /// ReadyForQuery: CommandComplete, or an error.
    pub(super) async fn end_spanning(&mut self, commit: bool) -> BytesMut {
        // A failed transaction's COMMIT rolls back, as in PostgreSQL.
        let commit = commit && self.pipeline.tx_status != b'E';
        let mut servers: Vec<(BackendId, Guard)> = std::mem::take(&mut self.parked);
        if let (Some(current), Some(at)) = (self.server.take(), self.backend.take()) {
            servers.push((at, current));
        }
        servers.sort_unstable_by_key(|(b, _)| *b);
        self.leave_transaction();
        let outcome = if commit {
            self.commit_all(&mut servers).await
        } else {
            rollback_all(&mut servers).await;
            Ok(())
        };
        release(&mut servers);
        match outcome {
            Ok(()) => {
                let mut reply = BytesMut::new();
                messages::command_complete(&mut reply, if commit { "COMMIT" } else { "ROLLBACK" });
                reply
            }
            Err(e) => error_reply(e),
        }
    }

    /// The session is out of its transaction (its servers already taken).
    fn leave_transaction(&mut self) {
        self.info.detach();
        self.begin = None;
        self.deferred_begin = None;
        self.touched = false;
        self.pinned = None;
        self.pipeline.tx_status = b'I';
    }

    /// A message of the Bind the proxy answers itself (`answering`): `true` when it
    /// was answered here.
    pub(super) async fn answer_own(&mut self, tag: u8, frame: &[u8]) -> bool {
        let Some(answering) = self.answering.clone() else {
            return false;
        };
        match tag {
            b'D' => {
                let mut reply = BytesMut::new();
                if messages::target(&frame[5..]).is_some_and(|(kind, _)| kind == b'S') {
                    // ParameterDescription: no parameters.
                    let at = messages::begin(&mut reply, b't');
                    reply.extend_from_slice(&0i16.to_be_bytes());
                    messages::finish(&mut reply, at);
                }
                messages::empty(&mut reply, b'n');
                self.pipeline.push(Expect::Synthetic(reply.freeze()));
                true
            }
            b'E' => {
                self.answering = None;
                let reply = match answering {
                    Answering::Begin(begin) => {
                        self.deferred_begin = Some(begin);
                        self.pipeline.tx_status = b'T';
                        let mut reply = BytesMut::new();
                        messages::command_complete(&mut reply, "BEGIN");
                        reply
                    }
                    Answering::End(commit) => self.end_spanning(commit).await,
                };
                let failed = reply.first() == Some(&b'E');
                self.pipeline.push(Expect::Synthetic(reply.freeze()));
                self.pipeline.skip_until_sync |= failed;
                true
            }
            b'H' => true,
            _ => {
                // Anything else: the portal is no longer the one answered here.
                self.answering = None;
                false
            }
        }
    }

    /// Starts answering a Bind here.
    pub(super) fn answer_bind(&mut self, answering: Answering) {
        self.answering = Some(answering);
        self.pipeline
            .push(Expect::Synthetic(Bytes::from_static(BIND_COMPLETE)));
        self.pipeline.unsynced = true;
    }

    /// The transaction is over on the attached server (it said ReadyForQuery 'I')
    /// while others were parked: the statement that ended it was not one the proxy
    /// coordinates, so the parked servers roll back.
    pub(super) fn drop_parked(&mut self) {
        if self.parked.is_empty() {
            return;
        }
        tracing::warn!(
            servers = self.parked.len(),
            "transaction ended on one backend only; rolling back the others"
        );
        // Not idle: discarded, so PostgreSQL rolls them back.
        self.parked.clear();
    }

    /// A statement that needed several backends failed before running anywhere: the
    /// transaction fails, on the attached server too (see `raise.rs`).
    pub(super) fn fail_transaction(&mut self, e: ClientError) {
        if self.server.is_some() {
            self.refuse_in_transaction(b'Q', e.to_string());
        } else {
            self.refuse_deferred(b'Q', e);
        }
    }

    /// A server of the transaction was lost: every other one rolls back (discarded),
    /// and the session is out of the transaction, as after a lost server.
    pub(super) fn abandon_transaction(&mut self) {
        self.parked.clear();
        self.server = None;
        self.backend = None;
        self.leave_transaction();
    }

    /// The client left, or the attached server was lost: parked servers roll back.
    pub(super) async fn rollback_parked(&mut self) {
        for (_, mut server) in std::mem::take(&mut self.parked) {
            let rollback = tokio::time::timeout(
                crate::limits::SERVER_CLEANUP_TIMEOUT,
                server.execute("ROLLBACK"),
            );
            server.idle = matches!(rollback.await, Ok(Ok(())));
            server.broken |= !server.idle;
        }
    }
}

const BIND_COMPLETE: &[u8] = b"2\0\0\0\x04";
