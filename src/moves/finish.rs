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
    conn.execute(&format!(
        "SET lock_timeout = '{timeout}ms'; SET application_name = 'pgshard move'"
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
        retry_locked(source, &names.drop_triggers(table)).await?;
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

/// Undoes a move that did not switch: its prepared transaction rolled back, its
/// objects dropped. The source kept every row throughout.
pub async fn undo(
    record: &Record,
    source: &mut ServerConn,
    target: &mut ServerConn,
) -> Result<(), ServerError> {
    let gid = Names { id: &record.id }.gid();
    if prepared(target, &gid).await? {
        target
            .execute(&format!(
                "ROLLBACK PREPARED {}",
                super::schema::literal(&gid)
            ))
            .await?;
    }
    remove_objects(record, source, target).await
}

/// Completes a move that switched: the target's rows committed (if its prepared
/// transaction is still there), the vshard's rows deleted from the source by the
/// vshard predicate, the move's objects dropped.
pub async fn complete(
    record: &Record,
    source: &mut ServerConn,
    target: &mut ServerConn,
) -> Result<u64, ServerError> {
    let gid = Names { id: &record.id }.gid();
    if prepared(target, &gid).await? {
        target
            .execute(&format!("COMMIT PREPARED {}", super::schema::literal(&gid)))
            .await?;
    }
    let deleted = delete_vshard(record, source).await?;
    remove_objects(record, source, target).await?;
    Ok(deleted)
}

/// Deletes every row of the move's vshard from `source`, by the vshard predicate.
pub async fn delete_vshard(record: &Record, source: &mut ServerConn) -> Result<u64, ServerError> {
    let mut deleted = 0;
    for table in &record.tables {
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
