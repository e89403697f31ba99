//! The moment a move switches its vshard to the target (step 3 of `mover.rs`), and
//! what follows it (step 4). The vshard's writes are held only from the last
//! catch-up to the new map's swap.

use std::sync::Arc;
use std::time::{Duration, Instant};

use super::finish::{self, retry_locked};
use super::gate::MoveGate;
use super::journal::{Journal, Step};
use super::mover::{failpoint, Mover};
use super::schema::{ident, literal};
use crate::limits;
use crate::maps::How;

impl Mover {
    /// Holds the vshard's writes and switches; tries again (after another
    /// catch-up) while writes already running do not end in time.
    pub(super) async fn switch(
        &mut self,
        gate: &MoveGate,
        journal: &Journal,
    ) -> Result<(), String> {
        let hold = self.app.config.move_hold;
        for attempt in 1..=limits::MOVE_HOLD_ATTEMPTS {
            let app = self.app.clone();
            // No other map change until this one is in.
            let _changes = app.map_changes.lock().await;
            if let Err(busy) = gate.hold_writes(hold).await {
                tracing::info!(vshard = self.record.vshard, attempt, %busy, "writes did not end; trying again");
                drop(_changes);
                self.catch_up().await?;
                continue;
            }
            let held = Instant::now();
            let switched = self.switch_held(gate).await;
            gate.release_writes();
            match switched {
                Ok(true) => {
                    self.pause = held.elapsed();
                    self.record_switch(journal);
                    metrics::histogram!("pgshard_move_write_pause_seconds")
                        .record(self.pause.as_secs_f64());
                    return Ok(());
                }
                Ok(false) => {
                    tracing::info!(
                        vshard = self.record.vshard,
                        attempt,
                        "statements on every vshard did not end; trying again"
                    );
                }
                Err(why) => return Err(why),
            }
        }
        Err(format!(
            "the vshard's writes could not be held: statements running on it did not end \
             within {hold:?}, {} times",
            limits::MOVE_HOLD_ATTEMPTS
        ))
    }

    /// With the writes held. `Ok(false)`: statements on every vshard did not end
    /// in time (nothing changed).
    async fn switch_held(&mut self, gate: &MoveGate) -> Result<bool, String> {
        self.catch_up().await?;
        if gate.hold_spanning(self.app.config.move_hold).await.is_err() {
            return Ok(false);
        }
        let running = self.app.topology.load_full();
        let map = &running.map;
        let (vshard, target) = (self.record.vshard, self.record.target.clone());
        if map.owner_name(vshard) != Some(self.record.source.as_str()) {
            return Err(format!(
                "vshard {vshard} changed backend while it was being moved"
            ));
        }
        let target_id = map
            .backend_id(&target)
            .ok_or_else(|| format!("backend \"{target}\" left the map"))?;
        let new_map = map
            .with_assignment(map.version + 1, &[(vshard, target_id)])
            .map_err(|e| e.to_string())?;
        self.insert_prepared().await?;
        failpoint("prepared").await;
        // The decision: once the map file has the vshard on the target, the move
        // has happened (recovery reads it off the map the proxy starts with).
        self.app.persist_map(&new_map).map_err(|e| e.to_string())?;
        self.record.to_version = Some(new_map.version);
        failpoint("decided").await;
        let gid = literal(&self.names().gid());
        if let Err(e) = self.dst.execute(&format!("COMMIT PREPARED {gid}")).await {
            // Decided: recovery commits it; the map switches regardless.
            tracing::error!(vshard, error = %e, "COMMIT PREPARED failed on the target; recovery completes it");
        }
        self.old = Some(running.clone());
        self.installed = Some(new_map.clone());
        let swapped = self.app.install_map(new_map);
        tracing::info!(
            vshard,
            from = %self.record.source,
            to = %target,
            version = swapped.version,
            swap_us = swapped.swap_us,
            "vshard switched"
        );
        Ok(true)
    }

    /// Once the writes go on: the journal and the map history learn of the switch
    /// (recovery does not need them: the map file decided).
    fn record_switch(&mut self, journal: &Journal) {
        self.record.step = Step::Switched;
        if let Err(e) = journal.write(&self.record) {
            tracing::warn!(error = %e, "cannot write the move journal");
        }
        if let Some(map) = self.installed.take() {
            if let Err(e) = self.app.history.record(&map, How::Move) {
                tracing::warn!(error = %e, "cannot record the map in the history");
            }
        }
    }

    /// Inserts the staged rows into the target's tables, in a prepared transaction.
    async fn insert_prepared(&mut self) -> Result<(), String> {
        let mut sql = String::from("BEGIN; ");
        for (i, table) in self.record.tables.iter().enumerate() {
            sql += &format!(
                "INSERT INTO {} OVERRIDING SYSTEM VALUE SELECT * FROM {}; ",
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
        if let Some(old) = self.old.take() {
            wait_unused(old, limits::MOVE_OLD_MAP_WAIT).await;
        }
        failpoint("switched").await;
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
        journal.write(&self.record).map_err(|e| e.to_string())?;
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
        let mut sql = String::from("BEGIN; ");
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
        if let Err(e) = retry_locked(&mut self.src, &sql).await {
            let _ = self.src.execute("ROLLBACK").await;
            return Err(format!("deleting from the source: {e}"));
        }
        Ok(())
    }
}

/// Waits (at most `wait`) until nobody but the caller holds `topology`: sessions
/// hold the snapshot they route with while a request of theirs is in flight.
async fn wait_unused(topology: Arc<super::super::backend::Topology>, wait: Duration) {
    let deadline = Instant::now() + wait;
    while Arc::strong_count(&topology) > 1 && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
}
