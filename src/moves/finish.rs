//! The ends of a move, shared by the mover and by recovery at start: undo (before
//! the switch) and cleanup (after it). Each step can run again: a crash halfway
//! through either leaves it to be run once more.

use super::journal::Record;
use super::sql::Names;
use crate::backend::server::{ServerConn, ServerError, SimpleReply};
use crate::limits;

/// Runs `sql`, again while it fails for a lock it could not get in time
/// (`lock_timeout`, set on every mover connection): writers queue behind a move's
/// DDL for at most that long.
pub async fn retry_locked(conn: &mut ServerConn, sql: &str) -> Result<SimpleReply, ServerError> {
    let mut attempt = 0;
    loop {
        match conn.simple(sql).await {
            Err(ServerError::Server(f))
                if f.code == "55P03" && attempt < limits::MOVE_LOCK_ATTEMPTS =>
            {
                attempt += 1;
                // A failed explicit transaction in `sql` must end before it runs again.
                conn.execute("ROLLBACK").await?;
                tokio::time::sleep(limits::MOVE_LOCK_TIMEOUT / 5).await;
            }
            other => return other,
        }
    }
}

/// A connection for a move's statements, with its lock timeout.
pub async fn connect(dsn: &crate::backend::dsn::Dsn) -> Result<ServerConn, ServerError> {
    let mut conn = ServerConn::connect(dsn).await?;
    let timeout = limits::MOVE_LOCK_TIMEOUT.as_millis();
    // COPY text passes between backends as it is: both ends read and write it in
    // the same formats, whatever each server's defaults.
    conn.execute(&format!(
        "SET lock_timeout = '{timeout}ms'; SET application_name = 'pgshard move'; \
         SET client_encoding = 'UTF8'; SET DateStyle = 'ISO, YMD'; \
         SET IntervalStyle = 'postgres'; SET TimeZone = 'UTC'; \
         SET extra_float_digits = 3; SET bytea_output = 'hex'"
    ))
    .await?;
    Ok(conn)
}

/// Whether the move's prepared transaction is still prepared on `target`.
async fn prepared(target: &mut ServerConn, gid: &str) -> Result<bool, ServerError> {
    let rows = target
        .query_column(&format!(
            "SELECT count(*) FROM pg_prepared_xacts WHERE gid = {}",
            super::schema::literal(gid)
        ))
        .await?;
    Ok(rows.first() != Some(&Some("0".to_string())))
}

/// Drops what the move made: its triggers and logged changes on the source, its
/// staging tables on the target.
pub async fn remove_objects(
    record: &Record,
    source: &mut ServerConn,
    target: &mut ServerConn,
) -> Result<(), ServerError> {
    let names = Names { id: &record.id };
    for table in &record.tables {
        // A table dropped meanwhile took its triggers with it.
        if super::schema::exists(source, &table.name).await? {
            retry_locked(source, &names.drop_triggers(table)).await?;
        }
    }
    let logged = source
        .query_column("SELECT to_regclass('pgshard.move_changes') IS NOT NULL")
        .await?;
    if logged.first() == Some(&Some("t".to_string())) {
        source.execute(&names.forget_changes()).await?;
    }
    for i in 0..record.tables.len() {
        target
            .execute(&format!("DROP TABLE IF EXISTS {}", names.staging(i)))
            .await?;
    }
    Ok(())
}

/// The target's part of ending a move: its prepared transaction committed if the
/// move switched, rolled back if not (when it is still there).
pub async fn end_on_target(
    record: &Record,
    target: &mut ServerConn,
    switched: bool,
) -> Result<(), ServerError> {
    let gid = Names { id: &record.id }.gid();
    if prepared(target, &gid).await? {
        let verb = if switched { "COMMIT" } else { "ROLLBACK" };
        target
            .execute(&format!("{verb} PREPARED {}", super::schema::literal(&gid)))
            .await?;
    }
    Ok(())
}

/// The rest: the vshard's rows deleted from the source if the move switched (by the
/// vshard predicate), the move's objects dropped. Returns the rows deleted.
pub async fn end_on_source(
    record: &Record,
    source: &mut ServerConn,
    target: &mut ServerConn,
    switched: bool,
) -> Result<u64, ServerError> {
    let deleted = if switched {
        delete_vshard(record, source).await?
    } else {
        0
    };
    remove_objects(record, source, target).await?;
    Ok(deleted)
}

/// Undoes a move that did not switch (the source kept every row throughout).
pub async fn undo(
    record: &Record,
    source: &mut ServerConn,
    target: &mut ServerConn,
) -> Result<(), ServerError> {
    end_on_target(record, target, false).await?;
    end_on_source(record, source, target, false)
        .await
        .map(|_| ())
}

/// Deletes every row of the move's vshard from `source`, by the vshard predicate.
pub async fn delete_vshard(record: &Record, source: &mut ServerConn) -> Result<u64, ServerError> {
    let mut deleted = 0;
    for table in &record.tables {
        if !super::schema::exists(source, &table.name).await? {
            continue;
        }
        let sql = format!(
            "DELETE FROM {} WHERE {}",
            table.sql_name(),
            table.in_vshard(record.vshard, record.vshards)
        );
        let reply = retry_locked(source, &sql).await?;
        deleted += reply
            .tag
            .strip_prefix("DELETE ")
            .and_then(|n| n.parse::<u64>().ok())
            .unwrap_or(0);
    }
    Ok(deleted)
}
