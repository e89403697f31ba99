//! Values of a merged read's columns, in text format: how they compare and add up
//! by their type (integers, numeric, floating point, bool); anything else compares
//! for equality only.

use std::cmp::Ordering;

/// How a column's text values compare and add up, from its type OID.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Kind {
    Int,
    Numeric,
    Float,
    /// Values whose text sorts as they do (bool's f/t). Dates and timestamps are
    /// not: their text follows the client's DateStyle.
    Lexical,
    /// Anything else: equality only.
    Other,
}

pub(super) fn kind_of(oid: i32) -> Kind {
    match oid {
        20 | 21 | 23 | 26 => Kind::Int,
        1700 => Kind::Numeric,
        700 | 701 => Kind::Float,
        16 => Kind::Lexical,
        _ => Kind::Other,
    }
}

pub(super) fn text(v: &[u8]) -> Option<&str> {
    std::str::from_utf8(v).ok().map(str::trim)
}

pub(super) fn compare(kind: Kind, a: &[u8], b: &[u8]) -> Option<Ordering> {
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
pub(super) fn decimal(s: &str) -> Option<(bool, &str, &str)> {
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

pub(super) fn compare_numeric(a: &str, b: &str) -> Option<Ordering> {
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
pub(super) fn add(kind: Kind, a: &[u8], b: &[u8]) -> Option<String> {
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
pub(super) fn float_text(v: f64) -> String {
    if v.is_nan() {
        "NaN".into()
    } else if v.is_infinite() {
        if v > 0.0 { "Infinity" } else { "-Infinity" }.into()
    } else {
        format!("{v}")
    }
}

/// The sum of two numerics, with the larger of their scales (as PostgreSQL's sum).
pub(super) fn add_numeric(a: &str, b: &str) -> Option<String> {
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
