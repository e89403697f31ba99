//! A planned statement plus its values -> which backends run it ([`Decision`]).
//! Pure: no I/O, no lock.

use super::hash::{Key, KeyType};
use super::shardmap::{BackendId, ShardMap};
use super::sql::lexer::Literal;
use super::sql::merge::Bound;
pub use super::sql::plan::CopyInto;
pub use super::sql::plan::Merge;
use super::sql::plan::{Plan, Source};
use super::sql::Analyzed;

/// A Bind parameter: its format code (0 text, 1 binary) and value (`None`: NULL).
#[derive(Debug, Clone, Copy)]
pub struct Param<'a> {
    pub format: i16,
    pub value: Option<&'a [u8]>,
}

impl<'a> Param<'a> {
    /// A non-NULL parameter in text format.
    pub fn text(value: &'a str) -> Param<'a> {
        Param {
            format: 0,
            value: Some(value.as_bytes()),
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Decision {
    /// Any backend will do (no user table, or reference tables only); alone it goes
    /// to the default backend, inside a transaction wherever that runs.
    Any,
    /// The default backend (it holds the tables the map does not list).
    Default,
    /// One backend.
    One(BackendId),
    /// A write whose keys live on several backends, each running it as is
    /// (atomically). Sorted, distinct.
    Many { backends: Vec<BackendId> },
    /// A read whose keys live on several backends: each runs it, the results are
    /// merged as `merge` says. Sorted, distinct.
    Gather {
        backends: Vec<BackendId>,
        merge: Merge,
    },
    /// Every backend runs it; writes commit atomically.
    All,
    /// Every backend runs the read; the results are merged as `Merge` says.
    Scatter(Merge),
    /// INSERT rows by backend: `(backend, row indexes)`, backends sorted.
    Split(Vec<(BackendId, Vec<usize>)>),
    /// COPY FROM STDIN into a sharded table: rows split by key.
    CopyIn(CopyInto),
    /// COPY TO STDOUT from a sharded table: gathered from every backend (`header`:
    /// each writes a header line).
    CopyOut { header: bool },
    /// Every backend, one after another, outside a transaction (VACUUM ...).
    Maintenance,
    /// BEGIN / START TRANSACTION.
    Begin,
    /// COMMIT (`commit`) or ROLLBACK.
    End { commit: bool },
    /// Savepoints, COMMIT/ROLLBACK AND CHAIN: they hold on one backend only.
    Savepoint,
    /// SET, SHOW ...: the session's business.
    Session,
    /// Cannot be run; the message says why (sent to the client as an error).
    Error(String),
}

/// Decides where `analyzed` runs, given the Bind parameters (empty for a simple
/// Query) and the map snapshot of the transaction.
pub fn decide(analyzed: &Analyzed, params: &[Param], map: &ShardMap) -> Decision {
    let values = Values {
        literals: &analyzed.literals,
        params,
    };
    if let Some(hint) = &analyzed.key_hint {
        return by_hint(hint, &analyzed.plan, map);
    }
    decide_plan(&analyzed.plan, &values, map)
}

fn decide_plan(plan: &Plan, values: &Values, map: &ShardMap) -> Decision {
    match plan {
        Plan::Multi(plans) => decide_multi(plans, values, map),
        Plan::Any => Decision::Any,
        Plan::Default => Decision::Default,
        Plan::All => Decision::All,
        Plan::Session => Decision::Session,
        Plan::End { commit } => Decision::End { commit: *commit },
        Plan::Savepoint => Decision::Savepoint,
        Plan::Begin => Decision::Begin,
        Plan::Maintenance => Decision::Maintenance,
        Plan::Scatter { merge, .. } => match resolve(merge, values) {
            Ok(merge) => Decision::Scatter(merge),
            Err(e) => e,
        },
        Plan::CopyIn(copy) => Decision::CopyIn(copy.clone()),
        Plan::CopyOut { header, .. } => Decision::CopyOut { header: *header },
        Plan::Unsupported(why) => Decision::Error(why.clone()),
        Plan::Keyed {
            table,
            keys,
            write,
            merge,
        } => {
            let key_type = key_type(map, table);
            if let [source] = keys.as_slice() {
                // One key, the usual case: decided without a list of backends.
                return match values.key(source, key_type) {
                    Ok(None) => Decision::Any,
                    Ok(Some(key)) => Decision::One(owner(map, &key)),
                    Err(e) => Decision::Error(format!("table \"{table}\": {e}")),
                };
            }
            let mut backends = Vec::with_capacity(keys.len());
            for source in keys {
                match values.key(source, key_type) {
                    // `k = NULL` matches no row anywhere.
                    Ok(None) => {}
                    Ok(Some(key)) => backends.push(owner(map, &key)),
                    Err(e) => return Decision::Error(format!("table \"{table}\": {e}")),
                }
            }
            backends.sort_unstable();
            backends.dedup();
            match backends.as_slice() {
                // Only NULL keys: no row anywhere.
                [] => Decision::Any,
                [one] => Decision::One(*one),
                _ if *write => Decision::Many { backends },
                _ => match resolve(merge, values) {
                    Ok(merge) => Decision::Gather { backends, merge },
                    Err(e) => e,
                },
            }
        }
        Plan::Insert { table, rows } => {
            let key_type = key_type(map, table);
            let mut split: Vec<(BackendId, Vec<usize>)> = Vec::new();
            for (row, source) in rows.iter().enumerate() {
                let backend = match values.key(source, key_type) {
                    Ok(Some(key)) => owner(map, &key),
                    Ok(None) => {
                        return Decision::Error(format!(
                            "table \"{table}\": a row's sharding key is NULL"
                        ))
                    }
                    Err(e) => return Decision::Error(format!("table \"{table}\": {e}")),
                };
                match split.iter_mut().find(|(b, _)| *b == backend) {
                    Some((_, rows)) => rows.push(row),
                    None => split.push((backend, vec![row])),
                }
            }
            split.sort_unstable_by_key(|(b, _)| *b);
            match split.as_slice() {
                [(one, _)] => Decision::One(*one),
                _ => Decision::Split(split),
            }
        }
    }
}

/// Several statements in one Query string run together on one backend: the one
/// their keys (or unlisted tables) name; statements that run anywhere go along.
fn decide_multi(plans: &[Plan], values: &Values, map: &ShardMap) -> Decision {
    let mut target = None;
    for plan in plans {
        let decision = match decide_plan(plan, values, map) {
            Decision::Default => Decision::One(map.default_backend),
            other => other,
        };
        match decision {
            Decision::Any
            | Decision::Session
            | Decision::Begin
            | Decision::End { .. }
            | Decision::Savepoint => {}
            Decision::One(b) if *target.get_or_insert(b) == b => {}
            Decision::Error(why) => return Decision::Error(why),
            _ => {
                return Decision::Error(
                    "several statements in one query string that need different backends: \
                     send them one at a time"
                        .into(),
                )
            }
        }
    }
    target.map_or(Decision::Any, Decision::One)
}

/// How a read on several backends merges, its LIMIT, OFFSET and ORDER BY
/// positions read from the statement's values.
fn resolve(merge: &Merge, values: &Values) -> Result<Merge, Decision> {
    let Merge::Combine(combine) = merge else {
        return Ok(merge.clone());
    };
    let mut combine = combine.clone();
    // LIMIT NULL means no limit, OFFSET NULL none either.
    for (bound, null) in [(&mut combine.limit, u64::MAX), (&mut combine.offset, 0)] {
        if let Some(Bound::Source(source)) = bound {
            match values.key(source, KeyType::Int) {
                Ok(Some(Key::Int(n))) if n >= 0 => *bound = Some(Bound::Value(n as u64)),
                Ok(None) => *bound = Some(Bound::Value(null)),
                _ => {
                    let why = "LIMIT and OFFSET must be non-negative integers";
                    return Err(Decision::Error(why.into()));
                }
            }
        }
    }
    let width = combine.columns.len();
    for key in combine.order.iter_mut() {
        if let Some(source) = key.position.take() {
            match values.key(&source, KeyType::Int) {
                Ok(Some(Key::Int(n))) if n >= 1 && (n as usize) <= width => {
                    key.column = n as usize - 1
                }
                _ => {
                    return Err(Decision::Error(format!(
                        "ORDER BY position is not in the select list (1 to {width})"
                    )))
                }
            }
        }
    }
    Ok(Merge::Combine(combine))
}

/// `/* pgshard: key=VALUE */`: the backend owning VALUE, typed as the statement's
/// sharded table's key (or as an integer if it reads as one, else as text).
fn by_hint(hint: &str, plan: &Plan, map: &ShardMap) -> Decision {
    // The hint overrides the plan (the client vouches that everything the
    // statement touches lives with that key), except for session statements.
    let table = match plan {
        Plan::Keyed { table, .. }
        | Plan::Insert { table, .. }
        | Plan::Scatter { table, .. }
        | Plan::CopyIn(CopyInto { table, .. })
        | Plan::CopyOut { table, .. } => Some(table),
        Plan::Session => return Decision::Session,
        Plan::Begin => return Decision::Begin,
        Plan::End { commit } => return Decision::End { commit: *commit },
        Plan::Savepoint => return Decision::Savepoint,
        _ => None,
    };
    let key_type = match table {
        Some(t) => key_type(map, t),
        None if hint.parse::<i64>().is_ok() => KeyType::Int,
        None => KeyType::Text,
    };
    match parse_text(hint.as_bytes(), key_type) {
        Ok(key) => Decision::One(owner(map, &key)),
        Err(e) => Decision::Error(format!("pgshard key comment: {e}")),
    }
}

pub(super) fn key_type(map: &ShardMap, table: &str) -> KeyType {
    map.tables
        .get(table)
        .map(|t| t.key_type)
        .unwrap_or(KeyType::Int)
}

/// The backend owning `key`'s vshard.
pub fn owner(map: &ShardMap, key: &Key) -> BackendId {
    let vshard = key.vshard(map.vshards());
    map.load.record(vshard);
    // The map has exactly `vshards` entries (checked when it was parsed).
    map.assignment
        .get(vshard as usize)
        .copied()
        .unwrap_or(map.default_backend)
}

/// Where a statement's key values come from: its literals and Bind parameters.
pub(super) struct Values<'a> {
    pub literals: &'a [Literal],
    pub params: &'a [Param<'a>],
}

impl Values<'_> {
    /// The key `source` gives, typed as `key_type`; `None` for NULL.
    pub(super) fn key(&self, source: &Source, key_type: KeyType) -> Result<Option<Key>, String> {
        let negate = |key: Key| match key {
            Key::Int(v) => v
                .checked_neg()
                .map(|v| Some(Key::Int(v)))
                .ok_or_else(|| "integer key out of range".to_string()),
            _ => Err("a negated key must be an integer".to_string()),
        };
        match source {
            Source::Constant(text) => parse_text(text.as_bytes(), key_type).map(Some),
            Source::NegConstant(text) => negate(parse_text(text.as_bytes(), key_type)?),
            Source::Literal(i) | Source::NegLiteral(i) => {
                let literal = self
                    .literals
                    .get(*i)
                    .ok_or_else(|| "a key refers to a missing constant".to_string())?;
                let key = parse_text(literal.text().as_bytes(), key_type)?;
                match source {
                    Source::NegLiteral(_) => negate(key),
                    _ => Ok(Some(key)),
                }
            }
            Source::Param(i) => {
                let i = *i;
                let param = self.params.get(i).ok_or_else(|| {
                    format!(
                        "the key is parameter ${} but only {} were bound",
                        i + 1,
                        self.params.len()
                    )
                })?;
                let Some(value) = param.value else {
                    return Ok(None);
                };
                let key = if param.format == 1 {
                    parse_binary(value, key_type)?
                } else {
                    parse_text(value, key_type)?
                };
                Ok(Some(key))
            }
        }
    }
}

/// A key value in text form (a literal, a text-format parameter, a key comment).
pub fn parse_text(text: &[u8], key_type: KeyType) -> Result<Key, String> {
    let shown = || String::from_utf8_lossy(text).into_owned();
    match key_type {
        KeyType::Int => std::str::from_utf8(text)
            .ok()
            .and_then(|s| s.trim().parse::<i64>().ok())
            .map(Key::Int)
            .ok_or_else(|| format!("\"{}\" is not a valid integer key", shown())),
        KeyType::Text => Ok(Key::Text(text.to_vec())),
        KeyType::Uuid => parse_uuid(text)
            .map(Key::Uuid)
            .ok_or_else(|| format!("\"{}\" is not a valid uuid key", shown())),
    }
}

/// A key value in binary form (a binary-format parameter).
fn parse_binary(value: &[u8], key_type: KeyType) -> Result<Key, String> {
    match (key_type, value.len()) {
        (KeyType::Int, 2) => Ok(Key::Int(i16::from_be_bytes([value[0], value[1]]).into())),
        (KeyType::Int, 4) => Ok(Key::Int(
            i32::from_be_bytes([value[0], value[1], value[2], value[3]]).into(),
        )),
        (KeyType::Int, 8) => {
            let mut b = [0u8; 8];
            b.copy_from_slice(value);
            Ok(Key::Int(i64::from_be_bytes(b)))
        }
        (KeyType::Int, n) => Err(format!("a binary integer key of {n} bytes")),
        (KeyType::Text, _) => Ok(Key::Text(value.to_vec())),
        (KeyType::Uuid, 16) => {
            let mut b = [0u8; 16];
            b.copy_from_slice(value);
            Ok(Key::Uuid(b))
        }
        (KeyType::Uuid, n) => Err(format!("a binary uuid key of {n} bytes")),
    }
}

/// A uuid as PostgreSQL reads it: 32 hex digits, dashes and braces allowed.
fn parse_uuid(text: &[u8]) -> Option<[u8; 16]> {
    let digits: Vec<u8> = text
        .iter()
        .copied()
        .filter(|c| !matches!(c, b'-' | b'{' | b'}'))
        .collect();
    if digits.len() != 32 {
        return None;
    }
    let mut out = [0u8; 16];
    for (i, pair) in digits.chunks_exact(2).enumerate() {
        let hex = std::str::from_utf8(pair).ok()?;
        out[i] = u8::from_str_radix(hex, 16).ok()?;
    }
    Some(out)
}

#[cfg(test)]
#[path = "decide_tests.rs"]
mod tests;
