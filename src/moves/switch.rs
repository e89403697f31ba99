//! The moment a move switches its vshard to the target (step 3 of `mover.rs`), and
//! what follows it (step 4). The vshard's writes are held only from the last
//! catch-up to the new map's swap.

use std::time::{Duration, Instant};

use super::finish;
use super::gate::{Gate, MoveGate};
use super::journal::{Journal, Step};
use super::mover::{failpoint, Mover};
use super::schema::{ident, literal};
use crate::app::App;
use crate::limits;
use crate::maps::history::off_runtime;
use crate::maps::How;
use crate::router::ShardMap;

/// Why a switch did not happen this time (it is tried again).
enum Held {
    Switched,
    Busy(&'static str),
}

impl Mover {
    /// Holds the vshard's writes and switches; tries again (after another
    /// catch-up) while writes already running do not end in time.
    pub(super) async fn switch(
        &mut self,
        gate: &MoveGate,
        journal: &Journal,
    ) -> Result<(), String> {
        let hold = self.app.config.move_hold;
        let timeout = format!(
            "SET statement_timeout = '{}ms'",
            limits::MOVE_SWITCH_TIMEOUT.as_millis()
        );
        for conn in [&mut self.src, &mut self.dst] {
            conn.execute(&timeout).await.map_err(|e| e.to_string())?;
        }
        for attempt in 1..=limits::MOVE_HOLD_ATTEMPTS {
            let app = self.app.clone();
            // No other map change until this one is in.
            let changes = app.map_changes.lock().await;
            if let Err(busy) = gate.hold_writes(hold).await {
                tracing::info!(vshard = self.record.vshard, attempt, %busy, "writes did not end; trying again");
                drop(changes);
                self.catch_up().await?;
                continue;
            }
            let held = Instant::now();
            let switched = self.switch_held(gate).await;
            gate.release_writes();
            drop(changes);
            match switched? {
                Held::Switched => {
                    self.pause = held.elapsed();
                    self.record_switch(journal).await;
                    metrics::histogram!("pgshard_move_write_pause_seconds")
                        .record(self.pause.as_secs_f64());
                    return Ok(());
                }
                Held::Busy(why) => {
                    tracing::info!(vshard = self.record.vshard, attempt, why, "trying again");
                    tokio::time::sleep(hold / 4).await;
                    self.catch_up().await?;
                }
            }
        }
        Err(format!(
            "the vshard could not be switched: statements running on it did not end \
             within {hold:?}, {} times",
            limits::MOVE_HOLD_ATTEMPTS
        ))
    }

    /// With the writes held: the switch, unless something still runs.
    async fn switch_held(&mut self, gate: &MoveGate) -> Result<Held, String> {
        let prepared = tokio::time::timeout(limits::MOVE_SWITCH_TIMEOUT, self.prepare_switch(gate));
        let new_map = match prepared.await {
            Ok(Ok(Ok(map))) => map,
            Ok(Ok(Err(busy))) => return Ok(busy),
            Ok(Err(e)) => return Err(e),
            Err(_) => {
                // Cut off mid-request: the connections are no use any more.
                self.src.broken = true;
                self.dst.broken = true;
                return Err(format!(
                    "the switch took longer than {:?}",
                    limits::MOVE_SWITCH_TIMEOUT
                ));
            }
        };
        failpoint("prepared").await;
        self.decide(gate, new_map).await?;
        Ok(Held::Switched)
    }

    /// The last catch-up, statements on every vshard held, the target's rows in a
    /// prepared transaction; the map to switch to. Nothing is decided yet.
    async fn prepare_switch(&mut self, gate: &MoveGate) -> Result<Result<ShardMap, Held>, String> {
        if self.prepared_on_source().await? {
            return Ok(Err(Held::Busy(
                "a two-phase commit prepared on the source holds its rows",
            )));
        }
        self.catch_up().await?;
        if gate.hold_spanning(self.app.config.move_hold).await.is_err() {
            return Ok(Err(Held::Busy("statements on every vshard did not end")));
        }
        let running = self.app.topology.load_full();
        let map = &running.map;
        let (vshard, target) = (self.record.vshard, &self.record.target);
        if map.owner_name(vshard) != Some(self.record.source.as_str()) {
            return Err(format!(
                "vshard {vshard} changed backend while it was being moved"
            ));
        }
        let target_id = map
            .backend_id(target)
            .ok_or_else(|| format!("backend \"{target}\" left the map"))?;
        let new_map = map
            .with_assignment(map.version + 1, &[(vshard, target_id)])
            .map_err(|e| e.to_string())?;
        self.insert_prepared().await?;
        Ok(Ok(new_map))
    }

    /// The decision (the new map file), the target's commit, the new map in.
    async fn decide(&mut self, gate: &MoveGate, new_map: ShardMap) -> Result<(), String> {
        let vshard = self.record.vshard;
        // Once the map file has the vshard on the target, the move has happened
        // (recovery reads it off the map the proxy starts with).
        let (app, map) = (self.app.clone(), new_map.clone());
        off_runtime(move || app.persist_map(&map))
            .await?
            .map_err(|e| e.to_string())?;
        self.record.to_version = Some(new_map.version);
        failpoint("decided").await;
        let commit_sql = format!("COMMIT PREPARED {}", literal(&self.names().gid()));
        let commit = self.dst.execute(&commit_sql);
        match tokio::time::timeout(limits::MOVE_SWITCH_TIMEOUT, commit).await {
            Ok(Ok(())) => {}
            // Decided: recovery commits it; the map switches regardless.
            Ok(Err(e)) => {
                tracing::error!(vshard, error = %e, "COMMIT PREPARED failed on the target; recovery completes it")
            }
            Err(_) => {
                self.dst.broken = true;
                tracing::error!(
                    vshard,
                    "COMMIT PREPARED timed out on the target; recovery completes it"
                );
            }
        }
        self.installed = Some(new_map.clone());
        let swapped = self.app.install_map(new_map);
        // Requests begun from now on route with the new map.
        self.switched_epoch = Some(gate.bump());
        tracing::info!(
            vshard,
            from = %self.record.source,
            to = %self.record.target,
            version = swapped.version,
            swap_us = swapped.swap_us,
            "vshard switched"
        );
        Ok(())
    }

    /// Whether a transaction prepared by a two-phase commit (and not yet committed)
    /// holds locks on the moved tables on the source: its changes are not visible
    /// to the catch-up yet.
    async fn prepared_on_source(&mut self) -> Result<bool, String> {
        let tables: Vec<String> = self
            .record
            .tables
            .iter()
            .map(|t| literal(&t.name))
            .collect();
        let sql = format!(
            "SELECT count(*) FROM pg_locks WHERE pid IS NULL AND locktype = 'relation' \
             AND database = (SELECT oid FROM pg_database WHERE datname = current_database()) \
             AND relation IN (SELECT to_regclass(t) FROM unnest(ARRAY[{}]::text[]) t)",
            tables.join(", ")
        );
        let rows = self
            .src
            .query_column(&sql)
            .await
            .map_err(|e| e.to_string())?;
        Ok(rows.first() != Some(&Some("0".to_string())))
    }

    /// Once the writes go on: the journal and the map history learn of the switch
    /// (recovery does not need them: the map file decided).
    async fn record_switch(&mut self, journal: &Journal) {
        self.record.step = Step::Switched;
        if let Err(e) = journal.save(&self.record).await {
            tracing::warn!(error = %e, "cannot write the move journal");
        }
        if let Some(map) = self.installed.take() {
            let history = self.app.history.clone();
            let recorded = off_runtime(move || history.record(&map, How::Move)).await;
            if let Err(e) = recorded.and_then(|r| r.map_err(|e| e.to_string())) {
                tracing::warn!(error = %e, "cannot record the map in the history");
            }
        }
    }

    /// Inserts the staged rows into the target's tables, in a prepared transaction.
    async fn insert_prepared(&mut self) -> Result<(), String> {
        let mut sql = String::from("BEGIN; ");
        for (i, table) in self.record.tables.iter().enumerate() {
            let columns = &table.columns;
            sql += &format!(
                "INSERT INTO {} ({columns}) OVERRIDING SYSTEM VALUE SELECT {columns} FROM {}; ",
                table.sql_name(),
                self.names().staging(i)
            );
        }
        sql += &format!("PREPARE TRANSACTION {}", literal(&self.names().gid()));
        match self.dst.simple(&sql).await {
            Ok(reply) if reply.tag == "PREPARE TRANSACTION" => Ok(()),
            Ok(reply) => Err(format!("the target did not prepare ({})", reply.tag)),
            Err(e) => {
                let _ = self.dst.execute("ROLLBACK").await;
                Err(format!("inserting on the target: {e}"))
            }
        }
    }

    /// After the switch: once statements routed by the old map are done, the
    /// source's rows go, held statements go on, and the move's objects are dropped.
    pub(super) async fn complete(
        &mut self,
        gate: &MoveGate,
        journal: &Journal,
    ) -> Result<(), String> {
        if let Some(epoch) = self.switched_epoch {
            // Requests routed by the old map (a read waiting for a connection) must
            // not find the rows gone. One stuck longer than a checkout can wait is
            // not waiting for a server.
            let wait = self.app.config.checkout_timeout + limits::MOVE_OLD_MAP_WAIT;
            if let Err(busy) = quiesce(&self.app, epoch, wait).await {
                tracing::warn!(
                    vshard = self.record.vshard,
                    requests = busy,
                    "requests begun before the switch still run; deleting the old rows anyway"
                );
            }
        }
        failpoint("switched").await;
        for conn in [&mut self.src, &mut self.dst] {
            conn.execute("SET statement_timeout = 0")
                .await
                .map_err(|e| e.to_string())?;
        }
        self.delete_from_source().await?;
        gate.release_spanning();
        // Rows of the vshard written to the source behind the proxy's back.
        let stray = finish::delete_vshard(&self.record, &mut self.src)
            .await
            .map_err(|e| format!("source: {e}"))?;
        if stray > 0 {
            tracing::warn!(
                vshard = self.record.vshard,
                rows = stray,
                "rows of the moved vshard were written to the source directly; deleted"
            );
        }
        finish::remove_objects(&self.record, &mut self.src, &mut self.dst)
            .await
            .map_err(|e| format!("cleanup: {e}"))?;
        self.record.step = Step::Done;
        journal
            .save(&self.record)
            .await
            .map_err(|e| e.to_string())?;
        metrics::counter!("pgshard_move_rows_copied_total").increment(self.rows);
        let report = self.report();
        tracing::info!(
            vshard = report.vshard,
            rows = report.rows_copied,
            rounds = report.catch_up_rounds,
            write_pause_ms = report.write_pause_ms,
            total_ms = report.total_ms,
            "move done"
        );
        Ok(())
    }

    /// Deletes the moved rows from the source, by the keys staged on the target
    /// (quick, by index where there is one), in one transaction.
    async fn delete_from_source(&mut self) -> Result<(), String> {
        // Nothing through the proxy writes these rows any more (writes and locking
        // reads are drained), but a transaction begun before the move may still
        // lock some: wait a while for it, else the cleanup is retried later.
        let mut sql = format!(
            "BEGIN; SET LOCAL lock_timeout = '{}ms'; ",
            limits::MOVE_DELETE_LOCK_WAIT.as_millis()
        );
        for (i, table) in self.record.tables.iter().enumerate() {
            let keys = self
                .dst
                .query_column(&format!(
                    "SELECT DISTINCT {}::text FROM {}",
                    ident(&table.key),
                    self.names().staging(i)
                ))
                .await
                .map_err(|e| format!("target: {e}"))?;
            let keys: Vec<String> = keys.into_iter().flatten().collect();
            let filter = if keys.len() > limits::MOVE_DELETE_KEYS_MAX {
                table.in_vshard(self.record.vshard, self.record.vshards)
            } else if keys.is_empty() {
                continue;
            } else {
                table.with_keys(&keys)
            };
            sql += &format!("DELETE FROM {} WHERE {filter}; ", table.sql_name());
        }
        sql += "COMMIT";
        if let Err(e) = self.src.simple(&sql).await {
            let _ = self.src.execute("ROLLBACK").await;
            return Err(format!("deleting from the source: {e}"));
        }
        Ok(())
    }
}

/// Waits (at most `wait`) until no client runs a request begun before the gate
/// `epoch`. `Err(n)`: n still run.
pub(super) async fn quiesce(app: &App, epoch: u64, wait: Duration) -> Result<(), usize> {
    let deadline = Instant::now() + wait;
    loop {
        let busy = app
            .clients
            .count(|c| Gate::routing_before(&c.routing, epoch));
        if busy == 0 {
            return Ok(());
        }
        if Instant::now() >= deadline {
            return Err(busy);
        }
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
}
