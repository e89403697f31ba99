//! Several server connections held at once outside the client's transaction
//! (a statement on several backends, a COPY): checked out in backend order, each in
//! a transaction of its own when the work must be atomic, then committed together
//! with two-phase commit, or rolled back, and released.

use bytes::BytesMut;

use super::Session;
use crate::backend::pool::Guard;
use crate::backend::server::ServerConn;
use crate::backend::twophase::TwoPhaseError;
use crate::error::ClientError;
use crate::protocol::messages;
use crate::router::BackendId;
use crate::stats::Stats;

pub(super) type Held = Vec<(BackendId, Guard)>;

impl Session {
    /// Servers on `backends`, checked out in that order (backend order, so two
    /// clients doing this cannot deadlock on pools).
    pub(super) async fn checkout_all(
        &mut self,
        backends: &[BackendId],
    ) -> Result<Held, ClientError> {
        let topology = self.topology();
        let mut servers = Vec::with_capacity(backends.len());
        for &backend in backends {
            servers.push((backend, self.checkout(topology.pool(backend)).await?));
        }
        Ok(servers)
    }

    /// Servers on `backends`, each in a transaction of its own, checked out and
    /// begun in backend order. A pooled connection found dead at its BEGIN is
    /// replaced, as for any transaction's first server (`checkout_begun`).
    pub(super) async fn begin_all(&mut self, backends: &[BackendId]) -> Result<Held, ClientError> {
        let topology = self.topology();
        let mut begin = BytesMut::new();
        messages::query(&mut begin, "BEGIN");
        let begin = begin.freeze();
        let mut servers = Vec::with_capacity(backends.len());
        for &backend in backends {
            let server = self.checkout_begun(topology.pool(backend), &begin).await?;
            servers.push((backend, server));
        }
        Ok(servers)
    }

    /// Commits servers that each ran their part in their own transaction, with
    /// two-phase commit (the decision logged on the default backend's participant
    /// when there is one).
    pub(super) async fn commit_all(
        &self,
        servers: &mut [(BackendId, Guard)],
    ) -> Result<(), ClientError> {
        let default = self.topology().map.default_backend;
        let log = servers.iter().position(|(b, _)| *b == default);
        let mut conns: Vec<&mut ServerConn> = servers.iter_mut().map(|(_, g)| &mut **g).collect();
        commit_outcome(self.app.coordinator.commit(&mut conns, log).await)
    }
}

/// Rolls back each server's transaction; one that fails to is discarded.
pub(super) async fn rollback_all(servers: &mut [(BackendId, Guard)]) {
    for (_, server) in servers.iter_mut() {
        if server.execute("ROLLBACK").await.is_err() {
            server.broken = true;
        }
    }
}

/// Servers that answered everything go back to their pools (when dropped).
pub(super) fn release(servers: &mut [(BackendId, Guard)]) {
    for (_, server) in servers.iter_mut() {
        server.idle = !server.broken;
    }
}

/// `e` as the client's ErrorResponse (counted), without ReadyForQuery.
pub(super) fn error_reply(e: ClientError) -> BytesMut {
    Stats::client_error(e.kind());
    let mut reply = BytesMut::new();
    e.write(&mut reply);
    reply
}

/// What the client hears of a two-phase commit's result.
fn commit_outcome(result: Result<(), TwoPhaseError>) -> Result<(), ClientError> {
    match result {
        // Decided: the commit completes (the rest by recovery).
        Ok(()) | Err(TwoPhaseError::Unfinished { .. }) => Ok(()),
        // The decision may or may not have been written.
        Err(TwoPhaseError::Log(e)) => Err(ClientError::CommitUnknown(e.to_string())),
        Err(e) => Err(ClientError::RolledBack(e.to_string())),
    }
}
