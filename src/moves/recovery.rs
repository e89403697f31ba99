//! A move a crash left unfinished, finished or undone. The map the proxy runs
//! decides: if it has the vshard on the target, the move had switched and is
//! completed; otherwise it is undone (the source kept every row). The target's
//! part (its prepared transaction) comes first and must succeed before the proxy
//! takes clients; the source's part (deleting the moved rows, dropping the move's
//! objects) is retried in the background if it fails, with statements on every
//! vshard held meanwhile (the vshard may be on both backends).

use std::sync::Arc;

use super::finish::{self, connect};
use super::journal::{Journal, Record, Step};
use super::mover::retry_recovery;
use crate::app::App;
use crate::backend::server::ServerConn;
use crate::limits;

/// The unfinished move, and whether it had switched.
fn pending(app: &App) -> Result<Option<(Record, bool)>, String> {
    let journal = Journal::new(&app.config.state_dir);
    let Some(record) = journal.unfinished().map_err(|e| e.to_string())? else {
        return Ok(None);
    };
    let map = &app.topology.load().map;
    // The vshard was on the source when the move began, and nothing else moves it
    // while this move's journal is open.
    let switched = map.owner_name(record.vshard) == Some(record.target.as_str());
    if record.step == Step::Switched && !switched {
        return Err(format!(
            "move {}: the journal says vshard {} switched to \"{}\", but the map has it on \
             \"{}\"; not touching it (restore the map file from {}/maps)",
            record.id,
            record.vshard,
            record.target,
            map.owner_name(record.vshard).unwrap_or("?"),
            app.config.state_dir.display()
        ));
    }
    Ok(Some((record, switched)))
}

async fn connect_to(app: &App, record: &Record, name: &str) -> Result<ServerConn, String> {
    let topology = app.topology.load_full();
    let map = &topology.map;
    let id = map
        .backend_id(name)
        .ok_or_else(|| format!("move {}: backend \"{name}\" is not in the map", record.id))?;
    connect(&map.backends[id].primary)
        .await
        .map_err(|e| format!("move {}: backend \"{name}\": {e}", record.id))
}

async fn target_side(app: &App, record: &Record, switched: bool) -> Result<(), String> {
    let mut target = connect_to(app, record, &record.target).await?;
    finish::end_on_target(record, &mut target, switched)
        .await
        .map_err(|e| format!("move {}: target: {e}", record.id))
}

async fn source_side(app: &App, mut record: Record, switched: bool) -> Result<(), String> {
    let mut source = connect_to(app, &record, &record.source).await?;
    let mut target = connect_to(app, &record, &record.target).await?;
    let deleted = finish::end_on_source(&record, &mut source, &mut target, switched)
        .await
        .map_err(|e| format!("move {}: source: {e}", record.id))?;
    if switched {
        record.step = Step::Done;
        tracing::info!(id = %record.id, vshard = record.vshard, rows_deleted = deleted, "interrupted move completed");
    } else {
        record.step = Step::RolledBack;
        record.error = Some("interrupted before it switched; undone".into());
        tracing::info!(id = %record.id, vshard = record.vshard, "interrupted move rolled back");
    }
    metrics::counter!("pgshard_moves_recovered_total").increment(1);
    Journal::new(&app.config.state_dir)
        .save(&record)
        .await
        .map_err(|e| e.to_string())
}

/// Finishes or undoes the unfinished move, if there is one.
pub async fn recover(app: &Arc<App>) -> Result<(), String> {
    let Some((record, switched)) = pending(app)? else {
        return Ok(());
    };
    target_side(app, &record, switched).await?;
    source_side(app, record, switched).await
}

/// At start, before clients: the target's part until it succeeds, then the
/// source's (in the background if it fails).
pub async fn at_start(app: &Arc<App>) {
    let (record, switched) = match pending(app) {
        Ok(Some(pending)) => pending,
        Ok(None) => return,
        Err(e) => {
            tracing::error!(error = %e, "move recovery refused");
            return;
        }
    };
    while let Err(e) = target_side(app, &record, switched).await {
        tracing::error!(error = %e, "move recovery: the target's part failed; clients wait until it succeeds");
        tokio::select! {
            _ = tokio::time::sleep(limits::MOVE_RECOVERY_RETRY) => {}
            _ = app.shutdown.cancelled() => return,
        }
    }
    let vshard = record.vshard;
    if let Err(e) = source_side(app, record, switched).await {
        tracing::warn!(error = %e, "move recovery: the source's part failed; retried in the background");
        let hold = app.gate.start(vshard);
        if let Some(gate) = &hold {
            let _ = gate.hold_spanning(limits::MOVE_HOLD).await;
        }
        retry_recovery(app.clone(), hold);
    }
}
