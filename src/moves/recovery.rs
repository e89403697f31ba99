//! A move a crash left unfinished, finished or undone when the proxy starts, before
//! it takes clients. The map the proxy starts with decides: if it has the move's
//! new version with the vshard on the target, the move had switched and is
//! completed; otherwise it is undone (the source kept every row).

use std::sync::Arc;

use super::finish::{self, connect};
use super::journal::{Journal, Step};
use crate::app::App;

pub async fn recover(app: &Arc<App>) -> Result<(), String> {
    let journal = Journal::new(&app.config.state_dir);
    let Some(mut record) = journal.unfinished().map_err(|e| e.to_string())? else {
        return Ok(());
    };
    let topology = app.topology.load_full();
    let map = &topology.map;
    // The vshard was on the source when the move began, and nothing else moves it
    // while this move's journal is open.
    let switched = map.owner_name(record.vshard) == Some(record.target.as_str());
    let dsn = |name: &str| {
        map.backend_id(name)
            .map(|id| map.backends[id].primary.clone())
            .ok_or_else(|| format!("move {}: backend \"{name}\" is not in the map", record.id))
    };
    let mut source = connect(&dsn(&record.source)?)
        .await
        .map_err(|e| format!("move {}: source: {e}", record.id))?;
    let mut target = connect(&dsn(&record.target)?)
        .await
        .map_err(|e| format!("move {}: target: {e}", record.id))?;
    if switched {
        let deleted = finish::complete(&record, &mut source, &mut target)
            .await
            .map_err(|e| format!("completing move {}: {e}", record.id))?;
        record.step = Step::Done;
        tracing::info!(id = %record.id, vshard = record.vshard, rows_deleted = deleted, "interrupted move completed");
    } else {
        finish::undo(&record, &mut source, &mut target)
            .await
            .map_err(|e| format!("undoing move {}: {e}", record.id))?;
        record.step = Step::RolledBack;
        record.error = Some("interrupted before it switched; undone at restart".into());
        tracing::info!(id = %record.id, vshard = record.vshard, "interrupted move rolled back");
    }
    metrics::counter!("pgshard_moves_recovered_total").increment(1);
    journal.write(&record).map_err(|e| e.to_string())
}
