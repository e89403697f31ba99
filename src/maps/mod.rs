//! The running shard map's life. A new map is checked (`check.rs`), written back to
//! the map file and kept in the history (`history.rs`), then swapped in at once: one
//! `ArcSwap::store` of a topology that reuses the pools of unchanged backends. A
//! transaction in flight keeps the snapshot it began with; the next one takes the
//! new map. Rollback applies the previous map again under a new version; SIGHUP, the
//! console's `RELOAD` and the API reload the map file.

pub mod check;
pub mod diff;
pub mod history;

use std::sync::Arc;
use std::time::Instant;

use crate::app::App;
use crate::backend::Topology;
use crate::router::shardmap::MapError;
use crate::router::ShardMap;
pub use history::{Applied, History};

#[derive(Debug, thiserror::Error)]
pub enum ApplyError {
    #[error(transparent)]
    Map(#[from] MapError),
    #[error("shard map: {0}")]
    Refused(String),
    #[error("cannot save the shard map: {0}")]
    Save(String),
}

impl ApplyError {
    /// Label for metrics; a closed set.
    pub fn kind(&self) -> &'static str {
        match self {
            ApplyError::Map(MapError::Toml(_)) => "malformed",
            ApplyError::Map(_) => "invalid",
            ApplyError::Refused(_) => "refused",
            ApplyError::Save(_) => "save",
        }
    }
}

/// What a swap did.
#[derive(Debug, Clone, serde::Serialize)]
pub struct Swapped {
    pub version: u64,
    pub previous: u64,
    /// What changed, one line each (`diff::lines`).
    pub changes: Vec<String>,
    /// How long the swap itself took (building the topology and storing it).
    pub swap_us: u64,
}

/// How a map came to be applied (kept in the history).
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum How {
    Start,
    Apply,
    Rollback,
    Reload,
    Move,
}

impl App {
    /// Checks `text` as the next shard map and swaps it in. `force`: accept vshards
    /// changing backend without moving their rows (the admin vouches they are
    /// there, or empty).
    pub async fn apply_map(
        &self,
        text: &str,
        force: bool,
        how: How,
    ) -> Result<Swapped, ApplyError> {
        let _one = self.map_changes.lock().await;
        let result = self.apply_locked(text, force, how).await;
        match &result {
            Ok(done) => {
                metrics::counter!("pgshard_map_swaps_total", "result" => "applied").increment(1);
                tracing::info!(
                    version = done.version,
                    previous = done.previous,
                    swap_us = done.swap_us,
                    changes = %done.changes.join("; "),
                    "shard map applied"
                );
            }
            Err(e) => {
                metrics::counter!("pgshard_map_swaps_total", "result" => e.kind()).increment(1);
                tracing::warn!(error = %e, "shard map refused; the running map stays");
            }
        }
        result
    }

    async fn apply_locked(&self, text: &str, force: bool, how: How) -> Result<Swapped, ApplyError> {
        let running = self.topology.load_full();
        let map = ShardMap::parse(text)?;
        check::compare(&running.map, &map, force).map_err(ApplyError::Refused)?;
        if let Some(v) = self.gate.moving() {
            if running.map.owner_name(v) != map.owner_name(v) {
                return Err(ApplyError::Refused(format!(
                    "vshard {v} is being moved; the move decides where it goes"
                )));
            }
        }
        check::reachable(&running, &map)
            .await
            .map_err(ApplyError::Refused)?;
        check::prepare_new_backends(&running, &map)
            .await
            .map_err(ApplyError::Refused)?;
        self.save_map(&map, how)?;
        Ok(self.install_map(map))
    }

    /// Writes `map` to the map file and the history: once this returns, a restart
    /// runs this map.
    pub fn save_map(&self, map: &ShardMap, how: How) -> Result<(), ApplyError> {
        self.persist_map(map)?;
        self.history
            .record(map, how)
            .map_err(|e| ApplyError::Save(e.to_string()))
    }

    /// Writes `map` to the map file only (the history may follow later).
    pub fn persist_map(&self, map: &ShardMap) -> Result<(), ApplyError> {
        history::write_atomic(&self.config.shard_map, map.text.0.as_bytes())
            .map_err(|e| ApplyError::Save(format!("{}: {e}", self.config.shard_map.display())))
    }

    /// Swaps `map` in (the caller checked and saved it).
    pub fn install_map(&self, map: ShardMap) -> Swapped {
        let started = Instant::now();
        let running = self.topology.load_full();
        let changes = diff::lines(&running.map, &map);
        let version = map.version;
        let topology = Topology::new(
            map,
            Some(&running),
            self.config.pool_size,
            self.config.checkout_timeout,
        );
        self.topology.store(Arc::new(topology));
        let swap_us = started.elapsed().as_micros() as u64;
        metrics::gauge!("pgshard_map_version").set(version as f64);
        metrics::histogram!("pgshard_map_swap_seconds").record(swap_us as f64 / 1e6);
        Swapped {
            version,
            previous: running.map.version,
            changes,
            swap_us,
        }
    }

    /// Applies the map before the running one again, as a new version.
    pub async fn rollback_map(&self) -> Result<Swapped, ApplyError> {
        let running = self.topology.load().map.version;
        let previous = self
            .history
            .before(running)
            .map_err(|e| ApplyError::Refused(e.to_string()))?
            .ok_or_else(|| {
                ApplyError::Refused(format!("no map was applied before version {running}"))
            })?;
        let text = history::with_version(&previous.1, running + 1)?;
        tracing::info!(
            from = running,
            to = previous.0,
            "rolling back to the previous shard map"
        );
        self.apply_map(&text, false, How::Rollback).await
    }

    /// Reloads the map file: applied when its version is above the running one;
    /// `Ok(None)` when it is the running map already.
    pub async fn reload_map(&self) -> Result<Option<Swapped>, ApplyError> {
        let text = std::fs::read_to_string(&self.config.shard_map).map_err(|e| {
            ApplyError::Map(MapError::Read(
                self.config.shard_map.display().to_string(),
                e.to_string(),
            ))
        })?;
        let running = self.topology.load_full();
        if *text == *running.map.text.0 {
            tracing::info!(version = running.map.version, "shard map file unchanged");
            return Ok(None);
        }
        self.apply_map(&text, false, How::Reload).await.map(Some)
    }
}
