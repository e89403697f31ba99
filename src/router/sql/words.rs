//! What a statement's words say when the parser is not asked or cannot answer:
//! statements PostgreSQL runs only outside a transaction, COPY options written
//! ON/OFF, and statements the parser does not take.

use super::plan::Plan;
use crate::router::shardmap::ShardMap;

/// Statements PostgreSQL refuses inside a transaction block, by their first words.
pub(super) fn outside_transactions(sql: &str) -> bool {
    let words: Vec<String> = sql
        .split_whitespace()
        .take(4)
        .map(str::to_ascii_lowercase)
        .collect();
    let w = |i: usize| words.get(i).map(String::as_str).unwrap_or("");
    match w(0) {
        "vacuum" => true,
        "create" | "drop" => {
            matches!(w(1), "database" | "tablespace")
                || (w(1) == "index" && w(2) == "concurrently")
                || (w(1) == "unique" && w(2) == "index" && w(3) == "concurrently")
        }
        "reindex" => {
            matches!(w(1), "database" | "system") || words.iter().any(|x| x == "concurrently")
        }
        "alter" => w(1) == "system",
        "cluster" => words.len() == 1,
        _ => false,
    }
}

/// A COPY whose option list says ON/OFF, with TRUE/FALSE instead (`None`: not
/// such a COPY).
pub(super) fn copy_booleans(sql: &str) -> Option<String> {
    let lower = sql.to_ascii_lowercase();
    if !lower.trim_start().starts_with("copy") {
        return None;
    }
    let at = lower.rfind("with")?;
    let mut out = sql[..at].to_string();
    for (i, word) in sql[at..]
        .split_inclusive(|c: char| !c.is_ascii_alphanumeric())
        .enumerate()
    {
        let (token, rest) = word.split_at(
            word.trim_end_matches(|c: char| !c.is_ascii_alphanumeric())
                .len(),
        );
        match token.to_ascii_lowercase().as_str() {
            "on" if i > 0 => out.push_str("true"),
            "off" if i > 0 => out.push_str("false"),
            _ => out.push_str(token),
        }
        out.push_str(rest);
    }
    Some(out)
}

/// A statement the parser does not understand.
pub(super) fn unparsed(sql: &str, map: &ShardMap) -> Plan {
    let words: Vec<String> = sql
        .split(|c: char| !(c.is_alphanumeric() || c == '_'))
        .filter(|w| !w.is_empty())
        .map(str::to_ascii_lowercase)
        .collect();
    let first = words.first().map(String::as_str).unwrap_or("");
    if matches!(
        first,
        "vacuum" | "analyze" | "analyse" | "cluster" | "reindex" | "checkpoint"
    ) {
        return Plan::All;
    }
    // PREPARE TRANSACTION, COMMIT PREPARED ...: transaction control for one backend.
    let second = words.get(1).map(String::as_str).unwrap_or("");
    if matches!(
        (first, second),
        ("prepare", "transaction") | ("commit" | "rollback", "prepared")
    ) {
        return Plan::Savepoint;
    }
    if let Some(table) = words
        .iter()
        .find(|w| map.tables.contains_key(*w) || map.reference_tables.contains(*w))
    {
        return Plan::Unsupported(format!(
            "pgshard cannot parse this statement, and it names sharded or reference table \
             \"{table}\""
        ));
    }
    Plan::Default
}
