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

type Row = Vec<Option<Bytes>>;

/// How a column's text values compare and add up, from its type OID.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind {
    Int,
    Numeric,
    Float,
    /// Values whose text sorts as they do (bool's f/t). Dates and timestamps are
    /// not: their text follows the client's DateStyle.
    Lexical,
    /// Anything else: equality only.
    Other,
}

fn kind_of(oid: i32) -> Kind {
    match oid {
        20 | 21 | 23 | 26 => Kind::Int,
        1700 => Kind::Numeric,
        700 | 701 => Kind::Float,
        16 => Kind::Lexical,
        _ => Kind::Other,
    }
}

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

fn text(v: &[u8]) -> Option<&str> {
    std::str::from_utf8(v).ok().map(str::trim)
}

fn compare(kind: Kind, a: &[u8], b: &[u8]) -> Option<Ordering> {
    match kind {
        Kind::Int => Some(
            text(a)?
                .parse::<i128>()
                .ok()?
                .cmp(&text(b)?.parse::<i128>().ok()?),
        ),
        Kind::Float => {
            // PostgreSQL sorts NaN above every other value; total_cmp puts it there too
            // (for positive NaN, which is what the text "NaN" reads as).
            let x: f64 = text(a)?.parse().ok()?;
            let y: f64 = text(b)?.parse().ok()?;
            Some(x.total_cmp(&y))
        }
        Kind::Numeric => compare_numeric(text(a)?, text(b)?),
        Kind::Lexical => Some(a.cmp(b)),
        Kind::Other => None,
    }
}

/// A numeric's text as sign, integer digits (no leading zeros) and fraction digits
/// (no trailing zeros); `None` for NaN or anything else.
fn decimal(s: &str) -> Option<(bool, &str, &str)> {
    let (negative, digits) = match s.strip_prefix('-') {
        Some(rest) => (true, rest),
        None => (false, s.strip_prefix('+').unwrap_or(s)),
    };
    let (int, frac) = digits.split_once('.').unwrap_or((digits, ""));
    if int.is_empty() && frac.is_empty()
        || !int.bytes().all(|c| c.is_ascii_digit())
        || !frac.bytes().all(|c| c.is_ascii_digit())
    {
        return None;
    }
    let int = int.trim_start_matches('0');
    let frac = frac.trim_end_matches('0');
    let zero = int.is_empty() && frac.is_empty();
    Some((negative && !zero, int, frac))
}

fn compare_numeric(a: &str, b: &str) -> Option<Ordering> {
    // NaN is above every number, and equal to itself.
    match (a == "NaN", b == "NaN") {
        (true, true) => return Some(Ordering::Equal),
        (true, false) => return Some(Ordering::Greater),
        (false, true) => return Some(Ordering::Less),
        _ => {}
    }
    let (na, ia, fa) = decimal(a)?;
    let (nb, ib, fb) = decimal(b)?;
    let magnitude = ia
        .len()
        .cmp(&ib.len())
        .then_with(|| ia.cmp(ib))
        .then_with(|| fa.cmp(fb));
    Some(match (na, nb) {
        (false, true) => Ordering::Greater,
        (true, false) => Ordering::Less,
        (false, false) => magnitude,
        (true, true) => magnitude.reverse(),
    })
}

/// `a + b` as text, for a count or sum column of `kind`.
fn add(kind: Kind, a: &[u8], b: &[u8]) -> Option<String> {
    match kind {
        Kind::Int => {
            let sum = text(a)?
                .parse::<i128>()
                .ok()?
                .checked_add(text(b)?.parse::<i128>().ok()?)?;
            Some(sum.to_string())
        }
        Kind::Float => {
            let sum = text(a)?.parse::<f64>().ok()? + text(b)?.parse::<f64>().ok()?;
            Some(float_text(sum))
        }
        Kind::Numeric => add_numeric(text(a)?, text(b)?),
        Kind::Lexical | Kind::Other => None,
    }
}

/// A float8 as PostgreSQL prints it (shortest exact form; NaN, Infinity).
fn float_text(v: f64) -> String {
    if v.is_nan() {
        "NaN".into()
    } else if v.is_infinite() {
        if v > 0.0 { "Infinity" } else { "-Infinity" }.into()
    } else {
        format!("{v}")
    }
}

/// The sum of two numerics, with the larger of their scales (as PostgreSQL's sum).
fn add_numeric(a: &str, b: &str) -> Option<String> {
    if a == "NaN" || b == "NaN" {
        return Some("NaN".into());
    }
    let scale_of = |s: &str| s.split_once('.').map_or(0, |(_, f)| f.len());
    let scale = scale_of(a).max(scale_of(b));
    let scaled = |s: &str| -> Option<i128> {
        let (negative, digits) = match s.strip_prefix('-') {
            Some(rest) => (true, rest),
            None => (false, s),
        };
        let (int, frac) = digits.split_once('.').unwrap_or((digits, ""));
        let mut text = String::with_capacity(int.len() + scale);
        text.push_str(int);
        text.push_str(frac);
        text.extend(std::iter::repeat_n('0', scale - frac.len()));
        let value: i128 = text.parse().ok()?;
        Some(if negative { -value } else { value })
    };
    let sum = scaled(a)?.checked_add(scaled(b)?)?;
    let negative = sum < 0;
    let digits = sum.unsigned_abs().to_string();
    let digits = format!("{digits:0>width$}", width = scale + 1);
    let (int, frac) = digits.split_at(digits.len() - scale);
    let mut out = String::new();
    if negative {
        out.push('-');
    }
    out.push_str(int);
    if scale > 0 {
        out.push('.');
        out.push_str(frac);
    }
    Some(out)
}

#[cfg(test)]
#[path = "combine_tests.rs"]
mod tests;
