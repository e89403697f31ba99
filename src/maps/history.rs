//! The maps applied so far: each kept as `<state_dir>/maps/<version>.toml` (mode
//! 0600: DSNs carry passwords), listed in `history.jsonl` in the order applied.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::time::{SystemTime, UNIX_EPOCH};

use super::{ApplyError, How};
use crate::limits;
use crate::router::shardmap::MapError;
use crate::router::ShardMap;

#[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
pub struct Applied {
    pub version: u64,
    /// Seconds since the Unix epoch.
    pub applied_at: u64,
    pub how: How,
}

pub struct History {
    dir: PathBuf,
    entries: Mutex<Vec<Applied>>,
}

impl History {
    /// The history kept in `dir` (created if missing).
    pub fn open(dir: &Path) -> std::io::Result<History> {
        std::fs::create_dir_all(dir)?;
        let entries = match std::fs::read_to_string(dir.join("history.jsonl")) {
            Ok(text) => text
                .lines()
                .filter_map(|line| serde_json::from_str(line).ok())
                .collect(),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Vec::new(),
            Err(e) => return Err(e),
        };
        Ok(History {
            dir: dir.to_owned(),
            entries: Mutex::new(entries),
        })
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Vec<Applied>> {
        self.entries.lock().unwrap_or_else(|e| e.into_inner())
    }

    pub fn list(&self) -> Vec<Applied> {
        self.lock().clone()
    }

    fn path(&self, version: u64) -> PathBuf {
        self.dir.join(format!("{version}.toml"))
    }

    /// Records `map` as applied now (unless its version is the last one recorded,
    /// as when a proxy starts on the map it ran before).
    pub fn record(&self, map: &ShardMap, how: How) -> std::io::Result<()> {
        let mut entries = self.lock();
        if entries.last().is_some_and(|e| e.version == map.version) {
            return Ok(());
        }
        write_atomic(&self.path(map.version), map.text.0.as_bytes())?;
        let applied_at = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| d.as_secs());
        let entry = Applied {
            version: map.version,
            applied_at,
            how,
        };
        let mut line = serde_json::to_string(&entry).map_err(std::io::Error::other)?;
        line.push('\n');
        let mut log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.dir.join("history.jsonl"))?;
        log.write_all(line.as_bytes())?;
        log.sync_data()?;
        entries.push(entry);
        if entries.len() > limits::MAP_HISTORY_MAX {
            let old = entries.remove(0);
            if !entries.iter().any(|e| e.version == old.version) {
                let _ = std::fs::remove_file(self.path(old.version));
            }
        }
        Ok(())
    }

    /// The map applied before `version` (its version and document).
    pub fn before(&self, version: u64) -> std::io::Result<Option<(u64, String)>> {
        let previous = {
            let entries = self.lock();
            let at = entries.iter().rposition(|e| e.version == version);
            at.and_then(|at| at.checked_sub(1))
                .and_then(|at| entries.get(at))
                .map(|e| e.version)
        };
        match previous {
            Some(v) => Ok(Some((v, std::fs::read_to_string(self.path(v))?))),
            None => Ok(None),
        }
    }
}

/// `text` with its `version` set to `version`.
pub fn with_version(text: &str, version: u64) -> Result<String, ApplyError> {
    let mut doc: toml::Table =
        toml::from_str(text).map_err(|e| ApplyError::Map(MapError::Toml(e.to_string())))?;
    let version = i64::try_from(version)
        .map_err(|_| ApplyError::Refused("the version is out of range".into()))?;
    doc.insert("version".into(), toml::Value::Integer(version));
    toml::to_string(&doc).map_err(|e| ApplyError::Map(MapError::Toml(e.to_string())))
}

/// Runs `f` (file writes that wait for the disk's sync) on tokio's blocking threads,
/// so the runtime's own thread, the only one by default on 2 cores, goes on serving
/// clients meanwhile. `Err` only if `f` panicked. `f` runs to its end even if the
/// caller is dropped: only tasks that nothing cancels (a move's) use this; a map
/// applied through the API writes in place, so a dropped request cannot leave the
/// file ahead of the running map.
pub async fn off_runtime<T: Send + 'static>(
    f: impl FnOnce() -> T + Send + 'static,
) -> Result<T, String> {
    tokio::task::spawn_blocking(f)
        .await
        .map_err(|e| format!("a write to disk failed: {e}"))
}

/// Replaces `path` with `bytes` so that a crash leaves the old file or the new one
/// (a temporary file beside it, synced, renamed over it, the folder synced). `Ok`
/// once renamed.
pub fn write_atomic(path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    use std::os::unix::fs::OpenOptionsExt;
    let dir = path.parent().unwrap_or(Path::new("."));
    let name = path.file_name().and_then(|n| n.to_str()).unwrap_or("file");
    let tmp = dir.join(format!(".{name}.tmp"));
    let mut file = std::fs::OpenOptions::new()
        .create(true)
        .write(true)
        .truncate(true)
        .mode(0o600)
        .open(&tmp)?;
    file.write_all(bytes)?;
    file.sync_all()?;
    std::fs::rename(&tmp, path)?;
    // Renamed: the new file is what a restart reads, whatever comes next; an error
    // now must not make the caller believe the old one still is.
    if let Err(e) = std::fs::File::open(dir).and_then(|d| d.sync_all()) {
        tracing::warn!(dir = %dir.display(), error = %e, "cannot sync the folder after a rename");
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn map(version: u64) -> ShardMap {
        let backends = vec![("b0".to_string(), "postgresql://u@h/d".to_string(), vec![])];
        let text = ShardMap::even_toml(&backends, 10).replace("version = 1", "version = 0");
        ShardMap::parse(&with_version(&text, version).unwrap()).unwrap()
    }

    #[test]
    fn history_survives_a_restart_and_knows_the_previous_map() {
        let dir = tempfile::tempdir().unwrap();
        let history = History::open(dir.path()).unwrap();
        history.record(&map(1), How::Start).unwrap();
        history.record(&map(1), How::Start).unwrap();
        history.record(&map(2), How::Apply).unwrap();
        history.record(&map(5), How::Move).unwrap();
        let history = History::open(dir.path()).unwrap();
        let versions: Vec<u64> = history.list().iter().map(|e| e.version).collect();
        assert_eq!(versions, vec![1, 2, 5]);
        let (version, text) = history.before(5).unwrap().unwrap();
        assert_eq!(version, 2);
        assert_eq!(ShardMap::parse(&text).unwrap().version, 2);
        assert!(history.before(1).unwrap().is_none());
        assert!(history.before(9).unwrap().is_none());
    }
}
