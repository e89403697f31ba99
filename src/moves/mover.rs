//! `pgshard move VSHARD --to BACKEND`: one vshard's rows from its backend (the
//! source) to another (the target), online.
//!
//! 1. Capture triggers on the source log the key of every row written from now on;
//!    staging tables on the target receive the vshard's rows, copied with COPY in
//!    one snapshot (the vshard predicate computed in SQL on the source).
//! 2. Catch-up rounds copy again the rows whose keys were logged meanwhile.
//! 3. The switch: the gate holds the vshard's writes (waiting for those running),
//!    a last catch-up runs, statements on every vshard are held too, the target
//!    inserts the staged rows in a prepared transaction, the new map is saved (the
//!    decision), the target commits, the map is swapped in and the writes go on,
//!    now to the target.
//! 4. Once statements routed by the old map are done, the source's rows of the
//!    vshard are deleted, held statements go on, the move's objects are dropped.
//!
//! Every step is in the journal; a crash before the decision is undone at restart,
//! one after it completed (`recovery.rs`).

use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use super::copy::copy_rows;
use super::finish::{self, connect};
use super::gate::MoveGate;
use super::journal::{Journal, Record, Step};
use super::sql::{MovedTable, Names};
use super::switch::quiesce;
use crate::app::App;
use crate::backend::server::ServerConn;
use crate::limits;
use crate::router::decide::parse_text;

#[derive(Debug, thiserror::Error)]
pub enum MoveError {
    #[error("{0}")]
    Invalid(String),
    #[error("{0}")]
    Busy(String),
    #[error("the move of vshard {0} was rolled back: {1}")]
    RolledBack(u32, String),
    #[error(
        "vshard {0} moved, but its cleanup did not finish ({1}); it is retried in the background"
    )]
    Unfinished(u32, String),
    #[error("the move journal: {0}")]
    Journal(String),
}

/// What a move did.
#[derive(Debug, Clone, serde::Serialize)]
pub struct MoveReport {
    pub id: String,
    pub vshard: u32,
    pub from: String,
    pub to: String,
    pub rows_copied: u64,
    pub catch_up_rounds: usize,
    /// How long the vshard's writes were held.
    pub write_pause_ms: f64,
    pub total_ms: f64,
    /// The map version the move made.
    pub version: u64,
}

/// Moves `vshard` to the backend named `to`.
pub async fn move_vshard(app: &Arc<App>, vshard: u32, to: &str) -> Result<MoveReport, MoveError> {
    let record = plan(app, vshard, to)?;
    let journal = Journal::new(&app.config.state_dir);
    let open = journal
        .unfinished()
        .map_err(|e| MoveError::Journal(e.to_string()))?;
    if let Some(open) = open {
        return Err(MoveError::Busy(format!(
            "move {} of vshard {} is not finished (its recovery is retried); no move \
             starts before it is",
            open.id, open.vshard
        )));
    }
    let gate = app.gate.start(vshard).ok_or_else(|| {
        let moving = app
            .gate
            .moving()
            .map_or(String::new(), |v| format!(" (vshard {v})"));
        MoveError::Busy(format!(
            "another move is running{moving}; one runs at a time"
        ))
    })?;
    // Requests begun before the gate could see it may write the vshard without
    // a permit: they end before the capture triggers go in (which then wait for
    // their transactions).
    let wait = app.config.checkout_timeout + limits::MOVE_OLD_MAP_WAIT;
    if let Err(busy) = quiesce(app, app.gate.epoch(), wait).await {
        return Err(MoveError::RolledBack(
            vshard,
            format!("{busy} requests begun before the move still ran after {wait:?}"),
        ));
    }
    journal
        .save(&record)
        .await
        .map_err(|e| MoveError::Journal(e.to_string()))?;
    tracing::info!(id = %record.id, vshard, from = %record.source, to = %record.target, "move started");
    metrics::gauge!("pgshard_move_running").set(1.0);
    let result = run(app, record, &gate, &journal).await;
    metrics::gauge!("pgshard_move_running").set(0.0);
    let outcome = match &result {
        Ok(_) => "done",
        Err(MoveError::Unfinished(..)) => "unfinished",
        Err(_) => "rolled_back",
    };
    metrics::counter!("pgshard_moves_total", "result" => outcome).increment(1);
    match result {
        // The vshard may be on both backends: statements on every vshard stay
        // held until the cleanup is done.
        Err(e @ MoveError::Unfinished(..)) => {
            retry_recovery(app.clone(), Some(gate));
            Err(e)
        }
        other => other,
    }
}

/// The move's record, once the request makes sense against the running map.
fn plan(app: &App, vshard: u32, to: &str) -> Result<Record, MoveError> {
    let topology = app.topology.load();
    let map = &topology.map;
    if vshard >= map.vshards() {
        return Err(MoveError::Invalid(format!(
            "vshard {vshard} does not exist (0-{})",
            map.vshards() - 1
        )));
    }
    if map.backend_id(to).is_none() {
        return Err(MoveError::Invalid(format!(
            "backend \"{to}\" is not in the running map (add it with `pgshard map apply` first)"
        )));
    }
    let source = map.owner_name(vshard).unwrap_or_default().to_string();
    if source == to {
        return Err(MoveError::Invalid(format!(
            "vshard {vshard} is on backend \"{to}\" already"
        )));
    }
    let mut tables: Vec<MovedTable> = map
        .tables
        .values()
        .map(|t| MovedTable {
            name: t.name.clone(),
            key: t.key.clone(),
            key_type: t.key_type,
            columns: String::new(),
        })
        .collect();
    tables.sort_by(|a, b| a.name.cmp(&b.name));
    Ok(Record {
        id: format!("{:012x}", rand::random::<u64>() >> 16),
        vshard,
        vshards: map.vshards(),
        source,
        target: to.to_string(),
        tables,
        step: Step::Copying,
        to_version: None,
        started_at: SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| d.as_secs()),
        error: None,
    })
}

async fn run(
    app: &Arc<App>,
    record: Record,
    gate: &MoveGate,
    journal: &Journal,
) -> Result<MoveReport, MoveError> {
    let vshard = record.vshard;
    let mut mover = match Mover::connect(app, record.clone()).await {
        Ok(mover) => mover,
        Err(why) => {
            let mut record = record;
            record.step = Step::RolledBack;
            record.error = Some(why.clone());
            let _ = journal.save(&record).await;
            return Err(MoveError::RolledBack(vshard, why));
        }
    };
    if let Err(why) = mover.copy_and_switch(gate, journal).await {
        tracing::warn!(vshard, error = %why, "move failed; undoing it");
        gate.release_writes();
        gate.release_spanning();
        mover.reconnect_broken().await;
        if let Err(e) = finish::undo(&mover.record, &mut mover.src, &mut mover.dst).await {
            tracing::warn!(vshard, error = %e, "undo incomplete; retried in the background");
            retry_recovery(app.clone(), None);
            return Err(MoveError::RolledBack(vshard, why));
        }
        mover.record.step = Step::RolledBack;
        mover.record.error = Some(why.clone());
        let _ = journal.save(&mover.record).await;
        return Err(MoveError::RolledBack(vshard, why));
    }
    if let Err(why) = mover.complete(gate, journal).await {
        tracing::warn!(vshard, error = %why, "move switched; cleanup failed");
        return Err(MoveError::Unfinished(vshard, why));
    }
    Ok(mover.report())
}

/// Recovery of the unfinished move retried until it succeeds (one loop at a time),
/// holding `hold` (the move's gate, statements on every vshard held) meanwhile.
pub fn retry_recovery(app: Arc<App>, hold: Option<MoveGate>) {
    if app
        .move_recovery
        .swap(true, std::sync::atomic::Ordering::AcqRel)
    {
        return;
    }
    tokio::spawn(async move {
        loop {
            tokio::time::sleep(limits::MOVE_RECOVERY_RETRY).await;
            match super::recovery::recover(&app).await {
                Ok(()) => break,
                Err(e) => tracing::warn!(error = %e, "move recovery failed; will retry"),
            }
        }
        app.move_recovery
            .store(false, std::sync::atomic::Ordering::Release);
        drop(hold);
    });
}

/// A move under way: its record and its connections to source and target.
pub(super) struct Mover {
    pub(super) app: Arc<App>,
    pub(super) record: Record,
    pub(super) src: ServerConn,
    pub(super) dst: ServerConn,
    pub(super) rows: u64,
    pub(super) rounds: usize,
    pub(super) pause: Duration,
    pub(super) started: Instant,
    /// The gate epoch from which requests route with the new map.
    pub(super) switched_epoch: Option<u64>,
    /// The map the switch installed, until the history has it.
    pub(super) installed: Option<crate::router::ShardMap>,
}

pub(super) fn failed(what: &str) -> impl Fn(crate::backend::server::ServerError) -> String + '_ {
    move |e| format!("{what}: {e}")
}

impl Mover {
    /// Connections left mid-request (a step cut off by its timeout) replaced.
    async fn reconnect_broken(&mut self) {
        let topology = self.app.topology.load_full();
        let map = &topology.map;
        for (conn, name) in [
            (&mut self.src, &self.record.source),
            (&mut self.dst, &self.record.target),
        ] {
            if !conn.broken {
                continue;
            }
            let Some(id) = map.backend_id(name) else {
                continue;
            };
            match connect(&map.backends[id].primary).await {
                Ok(fresh) => *conn = fresh,
                Err(e) => tracing::warn!(backend = %name, error = %e, "cannot reconnect"),
            }
        }
    }

    async fn connect(app: &Arc<App>, record: Record) -> Result<Mover, String> {
        let topology = app.topology.load_full();
        let dsn = |name: &str| {
            let id = topology.map.backend_id(name);
            id.map(|id| topology.map.backends[id].primary.clone())
                .ok_or_else(|| format!("backend \"{name}\" left the map"))
        };
        let src = connect(&dsn(&record.source)?)
            .await
            .map_err(failed("cannot connect to the source"))?;
        let dst = connect(&dsn(&record.target)?)
            .await
            .map_err(failed("cannot connect to the target"))?;
        Ok(Mover {
            app: app.clone(),
            record,
            src,
            dst,
            rows: 0,
            rounds: 0,
            pause: Duration::ZERO,
            started: Instant::now(),
            switched_epoch: None,
            installed: None,
        })
    }

    pub(super) fn names(&self) -> Names<'_> {
        Names {
            id: &self.record.id,
        }
    }

    async fn copy_and_switch(&mut self, gate: &MoveGate, journal: &Journal) -> Result<(), String> {
        self.check_tables().await?;
        // The tables as they are moved, before anything is made on a backend.
        journal
            .save(&self.record)
            .await
            .map_err(|e| e.to_string())?;
        self.install_capture().await?;
        self.initial_copy().await?;
        failpoint("copied").await;
        for _ in 0..limits::MOVE_CATCH_UP_ROUNDS {
            if self.catch_up().await? < limits::MOVE_CATCH_UP_KEYS {
                break;
            }
        }
        self.switch(gate, journal).await
    }

    /// The vshard's rows, in one snapshot of the source taken after its capture
    /// triggers were in place (so every later write is logged).
    async fn initial_copy(&mut self) -> Result<(), String> {
        self.src
            .execute("BEGIN ISOLATION LEVEL REPEATABLE READ READ ONLY")
            .await
            .map_err(failed("source"))?;
        for i in 0..self.record.tables.len() {
            let table = &self.record.tables[i];
            let filter = table.in_vshard(self.record.vshard, self.record.vshards);
            let rows = self.copy(i, &filter).await;
            let rows = match rows {
                Ok(rows) => rows,
                Err(e) => {
                    let _ = self.src.execute("ROLLBACK").await;
                    return Err(e);
                }
            };
            self.rows += rows;
        }
        self.src.execute("COMMIT").await.map_err(failed("source"))
    }

    /// Copies the rows of table `i` that `filter` selects into its staging table.
    async fn copy(&mut self, i: usize, filter: &str) -> Result<u64, String> {
        let table = &self.record.tables[i];
        let columns = &table.columns;
        let out_sql = format!(
            "COPY (SELECT {columns} FROM {} WHERE {filter}) TO STDOUT",
            table.sql_name()
        );
        let in_sql = format!("COPY {} ({columns}) FROM STDIN", self.names().staging(i));
        copy_rows(&mut self.src, &mut self.dst, &out_sql, &in_sql)
            .await
            .map_err(|e| format!("copying \"{}\": {e}", table.name))
    }

    /// Copies again the rows whose keys were logged since the last round (a
    /// TRUNCATE: the whole vshard). Returns the keys copied.
    pub(super) async fn catch_up(&mut self) -> Result<usize, String> {
        self.rounds += 1;
        let sql = self.names().take_changes();
        let logged = self
            .src
            .query_column(&sql)
            .await
            .map_err(failed("source"))?;
        let mut keys: Vec<(std::collections::BTreeSet<String>, bool)> =
            vec![Default::default(); self.record.tables.len()];
        for entry in logged.into_iter().flatten() {
            let Ok((table, key)) = serde_json::from_str::<(String, Option<String>)>(&entry) else {
                continue;
            };
            let Some(i) = self.record.tables.iter().position(|t| t.name == table) else {
                continue;
            };
            match key {
                None => keys[i].1 = true,
                Some(key) if self.in_vshard(i, &key) => {
                    keys[i].0.insert(key);
                }
                Some(_) => {}
            }
        }
        let mut copied = 0;
        for (i, (set, everything)) in keys.into_iter().enumerate() {
            copied += set.len();
            self.resync(i, set.into_iter().collect(), everything)
                .await?;
        }
        Ok(copied)
    }

    fn in_vshard(&self, i: usize, key: &str) -> bool {
        let table = &self.record.tables[i];
        parse_text(key.as_bytes(), table.key_type)
            .is_ok_and(|k| k.vshard(self.record.vshards) == self.record.vshard)
    }

    /// The staging rows of table `i` for `keys` (or all) replaced by the source's.
    async fn resync(
        &mut self,
        i: usize,
        keys: Vec<String>,
        everything: bool,
    ) -> Result<(), String> {
        let staging = self.names().staging(i);
        let table = self.record.tables[i].clone();
        if everything {
            let sql = format!("TRUNCATE {staging}");
            self.dst.execute(&sql).await.map_err(failed("target"))?;
            let filter = table.in_vshard(self.record.vshard, self.record.vshards);
            self.rows += self.copy(i, &filter).await?;
            return Ok(());
        }
        for chunk in keys.chunks(10_000) {
            let filter = table.with_keys(chunk);
            let sql = format!("DELETE FROM {staging} WHERE {filter}");
            self.dst.execute(&sql).await.map_err(failed("target"))?;
            self.rows += self.copy(i, &filter).await?;
        }
        Ok(())
    }

    pub(super) fn report(&self) -> MoveReport {
        MoveReport {
            id: self.record.id.clone(),
            vshard: self.record.vshard,
            from: self.record.source.clone(),
            to: self.record.target.clone(),
            rows_copied: self.rows,
            catch_up_rounds: self.rounds,
            write_pause_ms: self.pause.as_secs_f64() * 1000.0,
            total_ms: self.started.elapsed().as_secs_f64() * 1000.0,
            version: self.record.to_version.unwrap_or(0),
        }
    }
}

/// With `PGSHARD_FAILPOINT=move:STEP` (tests only), a move stops for good at STEP,
/// so a test can kill the proxy there.
pub async fn failpoint(step: &str) {
    let wanted = std::env::var("PGSHARD_FAILPOINT").ok();
    if wanted.as_deref().and_then(|w| w.strip_prefix("move:")) == Some(step) {
        tracing::warn!(step, "move failpoint reached; stopping here");
        std::future::pending::<()>().await;
    }
}
