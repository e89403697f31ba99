//! The admin console: psql connects to database `pgshard` and runs `SHOW ...`.

use std::sync::Arc;

use super::tables::{self, Table};
use crate::app::App;
use crate::error::ClientError;
use crate::frontend::conn::{ClientConn, ConnError};
use crate::protocol::messages;

const HELP: &str = "SHOW SHARDS | SHOW VSHARDS | SHOW POOLS | SHOW CLIENTS | SHOW STATS | \
                    SHOW VERSION | SHOW HELP | RELOAD";

/// Server parameters the console reports (also the fallback when no backend answers).
pub fn server_params() -> Vec<(String, String)> {
    [
        ("server_version", "15.0 (pgshard)"),
        ("server_encoding", "UTF8"),
        ("client_encoding", "UTF8"),
        ("DateStyle", "ISO, MDY"),
        ("TimeZone", "UTC"),
        ("integer_datetimes", "on"),
        ("standard_conforming_strings", "on"),
        ("IntervalStyle", "postgres"),
        ("is_superuser", "off"),
    ]
    .iter()
    .map(|(n, v)| (n.to_string(), v.to_string()))
    .collect()
}

pub async fn run(app: &Arc<App>, conn: &mut ClientConn) -> Result<(), ConnError> {
    let mut skipping = false;
    loop {
        let info = match conn.read_frame().await {
            Ok(info) => info,
            Err(ConnError::Closed) => return Ok(()),
            Err(ConnError::Frame(e)) => {
                ClientError::Protocol(e.to_string()).write_fatal(&mut conn.wbuf);
                return conn.flush().await;
            }
            Err(e) => return Err(e),
        };
        let frame = conn.rbuf.split_to(info.len);
        match info.tag {
            b'X' => return Ok(()),
            b'Q' => {
                let sql = String::from_utf8_lossy(&frame[5..])
                    .trim_end_matches('\0')
                    .to_owned();
                if is_reload(&sql) {
                    reload(app, &mut conn.wbuf).await;
                } else {
                    command(app, &sql, &mut conn.wbuf);
                }
                messages::ready_for_query(&mut conn.wbuf, b'I');
            }
            b'S' => {
                skipping = false;
                messages::ready_for_query(&mut conn.wbuf, b'I');
            }
            _ if skipping => {}
            _ => {
                let msg = "the admin console supports only the simple query protocol".into();
                ClientError::Unsupported(msg).write(&mut conn.wbuf);
                skipping = true;
            }
        }
        conn.flush().await?;
    }
}

fn is_reload(sql: &str) -> bool {
    sql.trim()
        .trim_end_matches(';')
        .trim()
        .eq_ignore_ascii_case("reload")
}

/// `RELOAD`: the shard map file again (as SIGHUP does).
async fn reload(app: &Arc<App>, out: &mut bytes::BytesMut) {
    match app.reload_map().await {
        Ok(done) => {
            let version = done.map_or(app.topology.load().map.version, |d| d.version);
            messages::parameter_status(out, "pgshard_map_version", &version.to_string());
            messages::command_complete(out, "RELOAD");
        }
        Err(e) => ClientError::AdminSyntax(e.to_string()).write(out),
    }
}

fn command(app: &App, sql: &str, out: &mut bytes::BytesMut) {
    let words: Vec<String> = sql
        .trim()
        .trim_end_matches(';')
        .split_whitespace()
        .map(|w| w.to_ascii_uppercase())
        .collect();
    let words: Vec<&str> = words.iter().map(String::as_str).collect();
    let table = match words.as_slice() {
        [] => {
            messages::empty(out, b'I');
            return;
        }
        ["SHOW", "SHARDS"] => tables::shards(app),
        ["SHOW", "VSHARDS"] => tables::vshards(app),
        ["SHOW", "POOLS"] => tables::pools(app),
        ["SHOW", "CLIENTS"] => tables::clients(app),
        ["SHOW", "STATS"] => tables::stats(app),
        ["SHOW", "VERSION"] => tables::version(),
        ["SHOW", "HELP"] => Table {
            columns: &["commands"],
            rows: vec![vec![HELP.into()]],
        },
        _ => {
            let msg = format!(
                "unknown admin command \"{}\"; supported: {HELP}",
                sql.trim()
            );
            ClientError::AdminSyntax(msg).write(out);
            return;
        }
    };
    write_table(out, &table);
}

fn write_table(out: &mut bytes::BytesMut, table: &Table) {
    messages::row_description(out, table.columns);
    for row in &table.rows {
        messages::data_row(out, row);
    }
    messages::command_complete(out, &format!("SHOW {}", table.rows.len()));
}
