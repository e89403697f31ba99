//! Rows of a keyless read from every backend made into the one answer PostgreSQL
//! would give (`router::sql::merge::Combine`): grouped, aggregates folded (count,
//! sum, min, max), ordered on output columns, cut to OFFSET/LIMIT. Pure: frames in,
//! frames out; a value the proxy cannot compare or add is an error, never a guess.
//!
//! Values are in text format (a simple Query's). Ordering compares by each
//! column's type: integers, numeric, floating point, bool, date and timestamp;
//! text would need the database's collation and is refused.

use std::cmp::Ordering;
use std::collections::HashMap;

use bytes::{Bytes, BytesMut};

use crate::protocol::messages;
use crate::router::sql::merge::{Column, Combine, SortKey};

mod values;

use values::{add, compare, decimal, kind_of, text, Kind};

type Row = Vec<Option<Bytes>>;

/// The combined reply (RowDescription, DataRows, CommandComplete) from each
/// backend's reply frames, or why it cannot be made.
pub fn combine(
    replies: &[Vec<Bytes>],
    spec: &Combine,
    limit: Option<u64>,
    offset: u64,
) -> Result<BytesMut, String> {
    let description = replies
        .iter()
        .flatten()
        .find(|f| f.first() == Some(&b'T'))
        .ok_or("a backend returned no rows description")?;
    let kinds = column_kinds(description).ok_or("a malformed row description")?;
    let mut rows: Vec<Row> = Vec::new();
    for frame in replies
        .iter()
        .flatten()
        .filter(|f| f.first() == Some(&b'D'))
    {
        let values = messages::data_row_values(frame.get(5..).unwrap_or_default())
            .ok_or("a malformed data row")?;
        if values.len() != kinds.len() {
            return Err("rows of different widths".into());
        }
        rows.push(
            values
                .into_iter()
                .map(|v| v.map(|v| frame.slice_ref(v)))
                .collect(),
        );
    }
    let columns: Vec<Column> = if spec.columns.is_empty() {
        vec![Column::Group; kinds.len()]
    } else if spec.columns.len() == kinds.len() {
        spec.columns.clone()
    } else {
        return Err("a select list of unexpected width".into());
    };
    if spec.grouped {
        rows = group(rows, &columns, &kinds)?;
    }
    if !spec.order.is_empty() {
        for key in &spec.order {
            let kind = kinds
                .get(key.column)
                .copied()
                .ok_or("ORDER BY past the last column")?;
            if matches!(kind, Kind::Other) {
                return Err(
                    "ORDER BY on a column of a type pgshard cannot compare (text needs \
                            the database's collation)"
                        .into(),
                );
            }
        }
        let mut failed = false;
        rows.sort_by(|a, b| {
            order(a, b, &spec.order, &kinds).unwrap_or_else(|| {
                failed = true;
                Ordering::Equal
            })
        });
        if failed {
            return Err("a value that does not read as its type".into());
        }
    }
    let start = usize::try_from(offset)
        .unwrap_or(usize::MAX)
        .min(rows.len());
    let end = match limit {
        Some(n) => start
            .saturating_add(usize::try_from(n).unwrap_or(usize::MAX))
            .min(rows.len()),
        None => rows.len(),
    };
    let mut out = BytesMut::new();
    out.extend_from_slice(description);
    for row in &rows[start..end] {
        let at = messages::begin(&mut out, b'D');
        out.extend_from_slice(&(row.len() as i16).to_be_bytes());
        for value in row {
            match value {
                Some(v) => {
                    out.extend_from_slice(&(v.len() as i32).to_be_bytes());
                    out.extend_from_slice(v);
                }
                None => out.extend_from_slice(&(-1i32).to_be_bytes()),
            }
        }
        messages::finish(&mut out, at);
    }
    messages::command_complete(&mut out, &format!("SELECT {}", end - start));
    Ok(out)
}

/// Each column's kind, from a RowDescription frame.
fn column_kinds(frame: &[u8]) -> Option<Vec<Kind>> {
    let payload = frame.get(5..)?;
    let count = i16::from_be_bytes(payload.get(..2)?.try_into().ok()?);
    let mut at = 2;
    let mut kinds = Vec::with_capacity(count.max(0) as usize);
    for _ in 0..count {
        let name_end = payload.get(at..)?.iter().position(|&b| b == 0)?;
        at += name_end + 1;
        // table oid (4), attnum (2), type oid (4), typlen (2), typmod (4), format (2)
        let oid = i32::from_be_bytes(payload.get(at + 6..at + 10)?.try_into().ok()?);
        kinds.push(kind_of(oid));
        at += 18;
    }
    Some(kinds)
}

/// Rows with equal grouping values combined, aggregates folded; first-seen order.
fn group(rows: Vec<Row>, columns: &[Column], kinds: &[Kind]) -> Result<Vec<Row>, String> {
    let mut out: Vec<Row> = Vec::new();
    let mut index: HashMap<Vec<Option<Bytes>>, usize> = HashMap::new();
    for row in rows {
        let key: Vec<Option<Bytes>> = columns
            .iter()
            .zip(&row)
            .zip(kinds)
            .filter(|((c, _), _)| **c == Column::Group)
            .map(|((_, v), kind)| group_value(*kind, v))
            .collect();
        let Some(&at) = index.get(&key) else {
            index.insert(key, out.len());
            out.push(row);
            continue;
        };
        let target = &mut out[at];
        for (i, column) in columns.iter().enumerate() {
            let folded = fold(*column, kinds[i], target[i].take(), row[i].clone())?;
            target[i] = folded;
        }
    }
    Ok(out)
}

/// A grouping value as PostgreSQL compares it: numerics by value (`1.0` = `1.00`),
/// the rest by their text.
fn group_value(kind: Kind, value: &Option<Bytes>) -> Option<Bytes> {
    let v = value.as_ref()?;
    if kind == Kind::Numeric {
        if let Some((negative, int, frac)) = text(v).and_then(decimal) {
            let sign = if negative { "-" } else { "" };
            return Some(Bytes::from(format!("{sign}{int}.{frac}")));
        }
    }
    Some(v.clone())
}

/// Two partial values of one aggregate column folded into one.
fn fold(
    column: Column,
    kind: Kind,
    a: Option<Bytes>,
    b: Option<Bytes>,
) -> Result<Option<Bytes>, String> {
    let (a, b) = match (a, b) {
        (None, other) | (other, None) => return Ok(other),
        (Some(a), Some(b)) => (a, b),
    };
    match column {
        Column::Group => Ok(Some(a)),
        Column::Count | Column::Sum => add(kind, &a, &b)
            .map(|v| Some(Bytes::from(v)))
            .ok_or_else(|| "pgshard could not add up an aggregate's partial values".to_string()),
        Column::Min | Column::Max => {
            let ordering = compare(kind, &a, &b).ok_or_else(|| {
                "min/max of a type pgshard cannot compare across backends (text needs the \
                 database's collation)"
                    .to_string()
            })?;
            let a_wins = (ordering == Ordering::Greater) == (column == Column::Max);
            Ok(Some(if a_wins || ordering == Ordering::Equal {
                a
            } else {
                b
            }))
        }
    }
}

fn order(a: &Row, b: &Row, keys: &[SortKey], kinds: &[Kind]) -> Option<Ordering> {
    for key in keys {
        let ordering = match (&a[key.column], &b[key.column]) {
            (None, None) => Ordering::Equal,
            (None, Some(_)) => {
                return Some(if key.nulls_first {
                    Ordering::Less
                } else {
                    Ordering::Greater
                })
            }
            (Some(_), None) => {
                return Some(if key.nulls_first {
                    Ordering::Greater
                } else {
                    Ordering::Less
                })
            }
            (Some(x), Some(y)) => {
                let o = compare(kinds[key.column], x, y)?;
                if key.descending {
                    o.reverse()
                } else {
                    o
                }
            }
        };
        if ordering != Ordering::Equal {
            return Some(ordering);
        }
    }
    Some(Ordering::Equal)
}

#[cfg(test)]
mod tests;
