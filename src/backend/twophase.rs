//! Two-phase commit across backends, with the decision logged in PostgreSQL.
//!
//! A transaction that wrote on several backends commits in three steps:
//! 1. `prepare`: `PREPARE TRANSACTION` on every participant (any failure rolls
//!    everything back), each under the gid plus its place among the participants
//!    (`participant_gid`): prepared transaction ids are unique per cluster, and two
//!    backends may be databases of one cluster;
//! 2. `decide`: the gid is inserted into the log table on the log backend (the map's
//!    default backend), an autocommit insert, durable once it returns: from here on
//!    the transaction is committed;
//! 3. `finish`: `COMMIT PREPARED gid` on every participant, then the log row goes.
//!
//! `recover` (at start and periodically) resolves what a crash or a lost connection
//! left behind: a prepared transaction with pgshard's gid prefix is committed if its
//! gid is in the log, and rolled back if not (presumed abort) once it is old enough
//! that no live coordinator can still be deciding it.

use std::collections::HashSet;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use super::pool::{Pool, PoolError};
use super::server::{ServerConn, ServerError};

/// Every gid pgshard makes starts with this.
pub const GID_PREFIX: &str = "pgshard_";
/// The decision log, on the log backend, in a schema of its own so that it stays
/// out of users' `\d`.
pub const LOG_TABLE: &str = "pgshard.two_phase_log";

#[derive(Debug, thiserror::Error)]
pub enum TwoPhaseError {
    #[error("backend {backend}: {source}")]
    Participant { backend: usize, source: ServerError },
    #[error("writing the commit decision: {0}")]
    Log(ServerError),
    #[error("the commit decision could not be written ({0}); rolled back")]
    NotDecided(String),
    /// Committed (the decision is logged), but this participant has not heard yet;
    /// recovery completes it.
    #[error("committed; backend {backend} completes it later: {source}")]
    Unfinished { backend: usize, source: ServerError },
    #[error(transparent)]
    Pool(#[from] PoolError),
}

/// What one recovery pass did.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Recovered {
    pub committed: usize,
    pub rolled_back: usize,
}

pub struct Coordinator {
    /// Where the decision log lives.
    log: Arc<Pool>,
    /// Undecided transactions younger than this are left alone by recovery.
    abort_after: Duration,
    /// Gids this process is committing right now (recovery must not touch them).
    inflight: Mutex<HashSet<String>>,
}

impl Coordinator {
    pub fn new(log: Arc<Pool>, abort_after: Duration) -> Coordinator {
        Coordinator {
            log,
            abort_after,
            inflight: Mutex::new(HashSet::new()),
        }
    }

    /// A new global transaction id.
    pub fn new_gid() -> String {
        format!("{GID_PREFIX}{:032x}", rand::random::<u128>())
    }

    /// The id participant `i` prepares `gid` under.
    pub fn participant_gid(gid: &str, i: usize) -> String {
        format!("{gid}_{i}")
    }

    /// The global transaction id (the one in the log) of a prepared transaction's id:
    /// `participant_gid` undone. An id without a participant suffix is its own.
    pub fn decision_gid(prepared: &str) -> &str {
        match prepared.rsplit_once('_') {
            Some((gid, i))
                if gid.len() == GID_PREFIX.len() + 32
                    && !i.is_empty()
                    && i.bytes().all(|b| b.is_ascii_digit()) =>
            {
                gid
            }
            _ => prepared,
        }
    }

    /// Commits the transactions open on `participants` (each inside BEGIN, its
    /// work done) as one. On error nothing is committed unless the decision was
    /// logged, in which case the commit completes (now or by recovery). `log`:
    /// the participant on the log backend, whose connection (free once prepared)
    /// writes the decision, so the caller holding it cannot starve the pool.
    pub async fn commit(
        &self,
        participants: &mut [&mut ServerConn],
        log: Option<usize>,
    ) -> Result<(), TwoPhaseError> {
        let gid = Coordinator::new_gid();
        self.track(&gid, true);
        let result = self.commit_as(&gid, participants, log).await;
        self.track(&gid, false);
        result
    }

    async fn commit_as(
        &self,
        gid: &str,
        participants: &mut [&mut ServerConn],
        log: Option<usize>,
    ) -> Result<(), TwoPhaseError> {
        self.prepare(gid, participants).await?;
        let decided = match log.and_then(|i| participants.get_mut(i)) {
            Some(conn) => decide_on(conn, gid).await,
            None => self.decide(gid).await,
        };
        match decided {
            Ok(()) => {}
            // The server refused the insert: not decided, so roll back now.
            Err(TwoPhaseError::Log(ServerError::Server(fields))) => {
                rollback_prepared(gid, participants).await;
                return Err(TwoPhaseError::NotDecided(fields.message));
            }
            // Whether the insert took effect is unknown: recovery commits if the
            // decision is in the log and rolls back if not.
            Err(e) => return Err(e),
        }
        self.finish_on(gid, participants, log).await
    }

    /// Step 1. On failure every participant is rolled back.
    pub async fn prepare(
        &self,
        gid: &str,
        participants: &mut [&mut ServerConn],
    ) -> Result<(), TwoPhaseError> {
        for i in 0..participants.len() {
            let sql = format!(
                "PREPARE TRANSACTION '{}'",
                Coordinator::participant_gid(gid, i)
            );
            // In a failed transaction PREPARE rolls back and says so only in its tag.
            let prepared = match participants[i].simple(&sql).await {
                Ok(reply) if reply.tag == "PREPARE TRANSACTION" => Ok(()),
                Ok(reply) => Err(ServerError::Protocol(format!(
                    "PREPARE TRANSACTION answered \"{}\" (the transaction had failed)",
                    reply.tag
                ))),
                Err(e) => Err(e),
            };
            if let Err(source) = prepared {
                // A failed PREPARE has already rolled that participant back.
                rollback_prepared(gid, &mut participants[..i]).await;
                for p in participants[i + 1..].iter_mut() {
                    let _ = p.execute("ROLLBACK").await;
                }
                return Err(TwoPhaseError::Participant { backend: i, source });
            }
        }
        Ok(())
    }

    /// Step 2: the commit decision, durable when this returns.
    pub async fn decide(&self, gid: &str) -> Result<(), TwoPhaseError> {
        let mut log = self.log.checkout().await?;
        decide_on(&mut log, gid).await
    }

    /// Step 3. A participant that cannot be reached now is committed by recovery
    /// (its prepared transaction survives the lost connection); the log row stays
    /// until every participant has committed.
    pub async fn finish(
        &self,
        gid: &str,
        participants: &mut [&mut ServerConn],
    ) -> Result<(), TwoPhaseError> {
        self.finish_on(gid, participants, None).await
    }

    async fn finish_on(
        &self,
        gid: &str,
        participants: &mut [&mut ServerConn],
        log: Option<usize>,
    ) -> Result<(), TwoPhaseError> {
        let mut failure = None;
        for (i, p) in participants.iter_mut().enumerate() {
            let sql = format!("COMMIT PREPARED '{}'", Coordinator::participant_gid(gid, i));
            if let Err(source) = p.execute(&sql).await {
                failure.get_or_insert(TwoPhaseError::Unfinished { backend: i, source });
            }
        }
        if let Some(failure) = failure {
            tracing::warn!(%gid, error = %failure, "commit left to recovery");
            return Err(failure);
        }
        // A row left behind is removed by the next recovery pass.
        let sql = format!("DELETE FROM {LOG_TABLE} WHERE gid = '{gid}'");
        match log.and_then(|i| participants.get_mut(i)) {
            Some(conn) => {
                let _ = conn.execute(&sql).await;
            }
            None => {
                if let Ok(mut conn) = self.log.checkout().await {
                    let _ = conn.execute(&sql).await;
                }
            }
        }
        Ok(())
    }

    /// Resolves pgshard's prepared transactions on every backend in `pools`.
    pub async fn recover(&self, pools: &[Arc<Pool>]) -> Result<Recovered, TwoPhaseError> {
        let mut log = self.log.checkout().await?;
        ensure_log(&mut log).await.map_err(TwoPhaseError::Log)?;
        let committed: HashSet<String> = log
            .query_column(&format!("SELECT gid FROM {LOG_TABLE}"))
            .await
            .map_err(TwoPhaseError::Log)?
            .into_iter()
            .flatten()
            .collect();
        drop(log);
        let mut done = Recovered::default();
        let mut still_prepared = HashSet::new();
        for (i, pool) in pools.iter().enumerate() {
            let mut conn = pool.checkout().await?;
            let participant = |source| TwoPhaseError::Participant { backend: i, source };
            let sql = format!(
                "SELECT gid || ' ' || (now() - prepared > interval '{} milliseconds')::text \
                 FROM pg_prepared_xacts WHERE gid LIKE '{GID_PREFIX}%' \
                 AND database = current_database()",
                self.abort_after.as_millis()
            );
            let rows = conn.query_column(&sql).await.map_err(participant)?;
            for row in rows.into_iter().flatten() {
                let Some((prepared, old)) = row.split_once(' ') else {
                    continue;
                };
                let gid = Coordinator::decision_gid(prepared);
                if self.is_inflight(gid) {
                    still_prepared.insert(gid.to_owned());
                    continue;
                }
                if committed.contains(gid) {
                    conn.execute(&format!("COMMIT PREPARED '{prepared}'"))
                        .await
                        .map_err(participant)?;
                    done.committed += 1;
                    tracing::info!(backend = %pool.backend, gid = %prepared, "recovery committed a prepared transaction");
                } else if old == "true" {
                    conn.execute(&format!("ROLLBACK PREPARED '{prepared}'"))
                        .await
                        .map_err(participant)?;
                    done.rolled_back += 1;
                    tracing::info!(backend = %pool.backend, gid = %prepared, "recovery rolled back an undecided prepared transaction");
                } else {
                    still_prepared.insert(gid.to_owned());
                }
            }
        }
        // Decisions whose transactions are committed everywhere are done with.
        let finished: Vec<&String> = committed
            .iter()
            .filter(|gid| !still_prepared.contains(*gid) && !self.is_inflight(gid))
            .collect();
        if !finished.is_empty() {
            let list: Vec<String> = finished.iter().map(|g| format!("'{g}'")).collect();
            let mut log = self.log.checkout().await?;
            let sql = format!("DELETE FROM {LOG_TABLE} WHERE gid IN ({})", list.join(", "));
            log.execute(&sql).await.map_err(TwoPhaseError::Log)?;
        }
        Ok(done)
    }

    fn track(&self, gid: &str, on: bool) {
        if let Ok(mut inflight) = self.inflight.lock() {
            if on {
                inflight.insert(gid.to_owned());
            } else {
                inflight.remove(gid);
            }
        }
    }

    fn is_inflight(&self, gid: &str) -> bool {
        self.inflight.lock().is_ok_and(|i| i.contains(gid))
    }
}

async fn rollback_prepared(gid: &str, participants: &mut [&mut ServerConn]) {
    for (i, p) in participants.iter_mut().enumerate() {
        let prepared = Coordinator::participant_gid(gid, i);
        let _ = p.execute(&format!("ROLLBACK PREPARED '{prepared}'")).await;
    }
}

/// Writes the commit decision for `gid` on `conn` (a connection to the log backend,
/// outside any transaction).
async fn decide_on(conn: &mut ServerConn, gid: &str) -> Result<(), TwoPhaseError> {
    ensure_log(conn).await.map_err(TwoPhaseError::Log)?;
    let sql = format!("INSERT INTO {LOG_TABLE} (gid) VALUES ('{gid}')");
    conn.execute(&sql).await.map_err(TwoPhaseError::Log)
}

/// Creates the log table if it is missing (two creators at once: one wins, the
/// other's error is harmless).
async fn ensure_log(conn: &mut ServerConn) -> Result<(), ServerError> {
    let sql = format!(
        "CREATE SCHEMA IF NOT EXISTS pgshard; CREATE TABLE IF NOT EXISTS {LOG_TABLE} \
         (gid text PRIMARY KEY, decided_at timestamptz NOT NULL DEFAULT now())"
    );
    match conn.execute(&sql).await {
        Ok(()) => Ok(()),
        // unique_violation / duplicate_table / duplicate_schema from a concurrent
        // creator.
        Err(ServerError::Server(f)) if matches!(f.code.as_str(), "23505" | "42P07" | "42P06") => {
            Ok(())
        }
        Err(e) => Err(e),
    }
}

#[cfg(test)]
mod tests {
    use super::Coordinator;

    #[test]
    fn participant_gids_come_back_to_their_decision() {
        let gid = Coordinator::new_gid();
        let first = Coordinator::participant_gid(&gid, 0);
        let tenth = Coordinator::participant_gid(&gid, 10);
        assert_ne!(first, tenth);
        assert_eq!(Coordinator::decision_gid(&first), gid);
        assert_eq!(Coordinator::decision_gid(&tenth), gid);
        // A gid made before participants had suffixes is its own decision.
        assert_eq!(Coordinator::decision_gid(&gid), gid);
        // Not pgshard's shape: unchanged.
        for other in [
            "pgshard_1_2",
            "pgshard_",
            "x_1",
            &format!("{gid}_"),
            &format!("{gid}_a"),
        ] {
            assert_eq!(Coordinator::decision_gid(other), other);
        }
    }
}
