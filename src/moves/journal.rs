//! The move journal: the move under way in `<state_dir>/move.json` (replaced
//! atomically at each step), and every finished move appended to `moves.jsonl`.
//! A proxy that starts with an unfinished move in its journal finishes or undoes
//! it before it takes clients (`recovery.rs`); whether the move had switched is
//! read off the map the proxy starts with, the one record that decides.

use std::io::Write;
use std::path::{Path, PathBuf};

use super::sql::MovedTable;
use crate::maps::history::write_atomic;

#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Step {
    /// Capture triggers, staging tables, copies, the switch: undone at restart
    /// unless the map the proxy starts with has the vshard on the target.
    Copying,
    /// Switched: the old backend's rows and the move's objects still to remove.
    Switched,
    Done,
    RolledBack,
}

#[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
pub struct Record {
    pub id: String,
    pub vshard: u32,
    pub vshards: u32,
    pub source: String,
    pub target: String,
    pub tables: Vec<MovedTable>,
    pub step: Step,
    /// The map version the switch made.
    pub to_version: Option<u64>,
    pub started_at: u64,
    /// Why it was rolled back, if it was.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
}

#[derive(Clone)]
pub struct Journal {
    dir: PathBuf,
}

impl Journal {
    pub fn new(dir: &Path) -> Journal {
        Journal {
            dir: dir.to_owned(),
        }
    }

    fn current(&self) -> PathBuf {
        self.dir.join("move.json")
    }

    /// The move under way (one not done or rolled back), if any.
    pub fn unfinished(&self) -> std::io::Result<Option<Record>> {
        match std::fs::read_to_string(self.current()) {
            Ok(text) => {
                let record: Record = serde_json::from_str(&text).map_err(|e| {
                    std::io::Error::other(format!("{}: {e}", self.current().display()))
                })?;
                Ok(Some(record).filter(|r| !matches!(r.step, Step::Done | Step::RolledBack)))
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(e),
        }
    }

    /// `write`, off the runtime's thread (see `maps::history::off_runtime`).
    pub async fn save(&self, record: &Record) -> std::io::Result<()> {
        let (journal, record) = (self.clone(), record.clone());
        crate::maps::history::off_runtime(move || journal.write(&record))
            .await
            .map_err(std::io::Error::other)?
    }

    /// Records `record` as the move's state, durably.
    fn write(&self, record: &Record) -> std::io::Result<()> {
        std::fs::create_dir_all(&self.dir)?;
        let text = serde_json::to_vec_pretty(record).map_err(std::io::Error::other)?;
        write_atomic(&self.current(), &text)?;
        if matches!(record.step, Step::Done | Step::RolledBack) {
            let mut line = serde_json::to_vec(record).map_err(std::io::Error::other)?;
            line.push(b'\n');
            let mut log = std::fs::OpenOptions::new()
                .create(true)
                .append(true)
                .open(self.dir.join("moves.jsonl"))?;
            log.write_all(&line)?;
            log.sync_data()?;
        }
        Ok(())
    }
}
