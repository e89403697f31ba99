//! Values of a merged read's columns, in text or binary format: how they compare,
//! group and add up by their type, as PostgreSQL would. What the proxy cannot
//! compare itself is either ranked by a backend (text under a collation other than
//! "C", dates and times in text) or not compared at all; malformed values are
//! `None`, never a guess.

use std::cmp::Ordering;

use bytes::Bytes;

use super::numeric::Numeric;

pub const INT8: i32 = 20;
pub const NUMERIC: i32 = 1700;
pub const FLOAT8: i32 = 701;

/// How a column's values compare and add up, from its type OID.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    /// int2, int4, int8: the width in bytes (a sum must fit it).
    Int(u8),
    Oid,
    Numeric,
    Float4,
    Float8,
    /// Values whose bytes sort as they do, in either format: bool, uuid.
    Bytewise,
    /// date, time, timestamp, timestamptz: binary values sort as signed integers;
    /// text follows the session's DateStyle, so a backend ranks it.
    Temporal,
    /// text, varchar, bpchar, name: ordered by a collation (bytes under "C",
    /// otherwise ranked by a backend).
    Collated,
    /// Types whose equal values print alike (bytea, "char", inet, cidr, macaddr,
    /// bit strings): equality by bytes, no order.
    Plain,
    /// Anything else (interval, jsonb, arrays, extension types ...): equal values
    /// may differ in form (`1 day` = `24:00:00`), so not even equality.
    Other,
}

pub fn kind_of(oid: i32) -> Kind {
    match oid {
        21 => Kind::Int(2),
        23 => Kind::Int(4),
        INT8 => Kind::Int(8),
        26 => Kind::Oid,
        NUMERIC => Kind::Numeric,
        700 => Kind::Float4,
        FLOAT8 => Kind::Float8,
        16 | 2950 => Kind::Bytewise,
        1082 | 1083 | 1114 | 1184 => Kind::Temporal,
        19 | 25 | 1042 | 1043 => Kind::Collated,
        17 | 18 | 650 | 774 | 829 | 869 | 1560 | 1562 => Kind::Plain,
        _ => Kind::Other,
    }
}

/// The SQL name of a type whose text values a backend can rank.
pub fn rank_type_name(oid: i32) -> Option<&'static str> {
    Some(match oid {
        19 => "name",
        25 => "text",
        1042 => "bpchar",
        1043 => "varchar",
        1082 => "date",
        1083 => "time",
        1114 => "timestamp",
        1184 => "timestamptz",
        _ => return None,
    })
}

/// A column's type as the merge sees it: its kind and the format of its values.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Type {
    pub oid: i32,
    pub kind: Kind,
    pub binary: bool,
}

impl Type {
    pub fn new(oid: i32, binary: bool) -> Type {
        Type {
            oid,
            kind: kind_of(oid),
            binary,
        }
    }

    /// Its values compare here, without a backend (a collated column whose
    /// collation is "C" compares its bytes; the caller knows that).
    pub fn compares(&self) -> bool {
        match self.kind {
            Kind::Temporal => self.binary,
            Kind::Collated | Kind::Plain | Kind::Other => false,
            _ => true,
        }
    }

    /// Values of it from different backends can be told equal or not (GROUP BY,
    /// DISTINCT): by `group_key`.
    pub fn groups(&self) -> bool {
        self.kind != Kind::Other
    }

    /// Its values must be ranked by a backend to be ordered.
    pub fn ranked(&self) -> bool {
        match self.kind {
            Kind::Temporal => !self.binary,
            Kind::Collated => true,
            _ => false,
        }
    }

    /// `None`: a value does not read as the type, or the type does not compare
    /// here (see `compares`).
    pub fn compare(&self, a: &[u8], b: &[u8]) -> Option<Ordering> {
        match self.kind {
            Kind::Int(_) => Some(self.int(a)?.cmp(&self.int(b)?)),
            Kind::Oid => Some(self.oid_value(a)?.cmp(&self.oid_value(b)?)),
            Kind::Numeric => Some(self.numeric(a)?.compare(&self.numeric(b)?)),
            Kind::Float4 | Kind::Float8 => Some(float_order(self.float(a)?, self.float(b)?)),
            Kind::Bytewise => Some(a.cmp(b)),
            Kind::Temporal if self.binary => {
                let signed = |v: &[u8]| match v.len() {
                    4 => Some(i64::from(i32::from_be_bytes(v.try_into().ok()?))),
                    8 => Some(i64::from_be_bytes(v.try_into().ok()?)),
                    _ => None,
                };
                Some(signed(a)?.cmp(&signed(b)?))
            }
            Kind::Temporal | Kind::Collated | Kind::Plain | Kind::Other => None,
        }
    }

    /// `a + b` in this type and format (count and sum columns); `None` when the
    /// type does not add up or the sum leaves its range (PostgreSQL would fail).
    pub fn add(&self, a: &[u8], b: &[u8]) -> Option<Vec<u8>> {
        match self.kind {
            Kind::Int(width) => {
                let sum = self.int(a)?.checked_add(self.int(b)?)?;
                self.encode_int(width, sum)
            }
            Kind::Numeric => Some(self.encode_numeric(&self.numeric(a)?.add(&self.numeric(b)?))),
            Kind::Float8 => {
                let (x, y) = (self.float(a)?, self.float(b)?);
                let sum = checked_float(x + y, x, y)?;
                Some(self.encode_float8(sum))
            }
            Kind::Float4 => {
                let (x, y) = (self.float(a)? as f32, self.float(b)? as f32);
                let sum = x + y;
                if sum.is_infinite() && x.is_finite() && y.is_finite() {
                    return None;
                }
                Some(if self.binary {
                    sum.to_be_bytes().to_vec()
                } else {
                    float4_text(sum).into_bytes()
                })
            }
            _ => None,
        }
    }

    /// The value as GROUP BY and DISTINCT compare it: equal values, equal keys
    /// (`1.0` = `1.00`, `-0` = `0`); other types by their bytes.
    pub fn group_key(&self, v: &Bytes) -> Bytes {
        match self.kind {
            Kind::Numeric => match self.numeric(v) {
                Some(n) => Bytes::from(n.group_key()),
                None => v.clone(),
            },
            Kind::Float4 | Kind::Float8 => match self.float(v) {
                // -0 matches too.
                Some(0.0) => Bytes::from_static(b"0"),
                Some(f) if f.is_nan() => Bytes::from_static(b"NaN"),
                _ => v.clone(),
            },
            _ => v.clone(),
        }
    }

    pub fn int(&self, v: &[u8]) -> Option<i128> {
        if !self.binary {
            return text(v)?.parse().ok();
        }
        Some(match v.len() {
            2 => i16::from_be_bytes(v.try_into().ok()?).into(),
            4 => i32::from_be_bytes(v.try_into().ok()?).into(),
            8 => i64::from_be_bytes(v.try_into().ok()?).into(),
            _ => return None,
        })
    }

    fn oid_value(&self, v: &[u8]) -> Option<u32> {
        if self.binary {
            Some(u32::from_be_bytes(v.try_into().ok()?))
        } else {
            text(v)?.parse().ok()
        }
    }

    fn encode_int(&self, width: u8, v: i128) -> Option<Vec<u8>> {
        let fits = match width {
            2 => i16::try_from(v).is_ok(),
            4 => i32::try_from(v).is_ok(),
            _ => i64::try_from(v).is_ok(),
        };
        if !fits {
            return None;
        }
        if !self.binary {
            return Some(v.to_string().into_bytes());
        }
        let bytes = (v as i64).to_be_bytes();
        Some(bytes[8 - usize::from(width)..].to_vec())
    }

    pub fn numeric(&self, v: &[u8]) -> Option<Numeric> {
        Numeric::parse(v, self.binary)
    }

    pub fn encode_numeric(&self, n: &Numeric) -> Vec<u8> {
        if self.binary {
            n.to_binary()
        } else {
            n.to_text().into_bytes()
        }
    }

    pub fn float(&self, v: &[u8]) -> Option<f64> {
        if !self.binary {
            return parse_float(text(v)?);
        }
        match v.len() {
            4 => Some(f32::from_be_bytes(v.try_into().ok()?).into()),
            8 => Some(f64::from_be_bytes(v.try_into().ok()?)),
            _ => None,
        }
    }

    pub fn encode_float8(&self, v: f64) -> Vec<u8> {
        if self.binary {
            v.to_be_bytes().to_vec()
        } else {
            float8_text(v).into_bytes()
        }
    }
}

/// PostgreSQL's float order: NaN equals NaN and sorts above everything; -0 = 0.
pub fn float_order(x: f64, y: f64) -> Ordering {
    match (x.is_nan(), y.is_nan()) {
        (true, true) => Ordering::Equal,
        (true, false) => Ordering::Greater,
        (false, true) => Ordering::Less,
        _ => x.partial_cmp(&y).unwrap_or(Ordering::Equal),
    }
}

/// `sum` unless it overflowed from finite inputs (PostgreSQL raises an error then).
pub fn checked_float(sum: f64, x: f64, y: f64) -> Option<f64> {
    (!sum.is_infinite() || x.is_infinite() || y.is_infinite()).then_some(sum)
}

fn text(v: &[u8]) -> Option<&str> {
    std::str::from_utf8(v).ok().map(str::trim)
}

fn parse_float(s: &str) -> Option<f64> {
    match s {
        "NaN" => Some(f64::NAN),
        "Infinity" => Some(f64::INFINITY),
        "-Infinity" => Some(f64::NEG_INFINITY),
        _ if s
            .bytes()
            .any(|c| c.is_ascii_alphabetic() && c != b'e' && c != b'E') =>
        {
            None
        }
        _ => s.parse().ok(),
    }
}

/// A float8 as PostgreSQL prints it (`float8out`, extra_float_digits >= 1): the
/// shortest exact digits, in fixed notation for exponents -4 to 14.
pub fn float8_text(v: f64) -> String {
    special(v).unwrap_or_else(|| layout(&format!("{v:e}"), 15))
}

/// A float4 as PostgreSQL prints it (fixed notation for exponents -4 to 5).
pub fn float4_text(v: f32) -> String {
    special(v.into()).unwrap_or_else(|| layout(&format!("{v:e}"), 6))
}

fn special(v: f64) -> Option<String> {
    if v.is_nan() {
        Some("NaN".into())
    } else if v.is_infinite() {
        Some(if v > 0.0 { "Infinity" } else { "-Infinity" }.into())
    } else {
        None
    }
}

/// Rust's shortest `{:e}` form (`-1.25e-7`) laid out as PostgreSQL's `d2s` does:
/// fixed for exponents from -4 to below `fixed_below`, else `1.25e-07`.
fn layout(exp_form: &str, fixed_below: i32) -> String {
    let (negative, rest) = match exp_form.strip_prefix('-') {
        Some(rest) => (true, rest),
        None => (false, exp_form),
    };
    let (mantissa, exp) = rest.split_once('e').unwrap_or((rest, "0"));
    let exp: i32 = exp.parse().unwrap_or(0);
    let digits: String = mantissa.chars().filter(char::is_ascii_digit).collect();
    let mut out = String::with_capacity(digits.len() + 8);
    if negative {
        out.push('-');
    }
    if (-4..fixed_below).contains(&exp) {
        if exp < 0 {
            out.push_str("0.");
            out.extend(std::iter::repeat_n('0', (-exp - 1) as usize));
            out.push_str(&digits);
        } else {
            let int_len = exp as usize + 1;
            if digits.len() <= int_len {
                out.push_str(&digits);
                out.extend(std::iter::repeat_n('0', int_len - digits.len()));
            } else {
                out.push_str(&digits[..int_len]);
                out.push('.');
                out.push_str(&digits[int_len..]);
            }
        }
        return out;
    }
    out.push_str(&digits[..1]);
    if digits.len() > 1 {
        out.push('.');
        out.push_str(&digits[1..]);
    }
    out.push_str(&format!(
        "e{}{:02}",
        if exp < 0 { '-' } else { '+' },
        exp.abs()
    ));
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn floats_print_as_postgres_prints_them() {
        // From PostgreSQL 15: SELECT 1e15::float8, 1e14::float8, ...
        let cases: [(f64, &str); 12] = [
            (1e15, "1e+15"),
            (1e14, "100000000000000"),
            (1.5e-5, "1.5e-05"),
            (0.0001, "0.0001"),
            (123456789012345678.0, "1.2345678901234568e+17"),
            (-0.0, "-0"),
            (1e100, "1e+100"),
            (0.1 + 0.2, "0.30000000000000004"),
            (5e-324, "5e-324"),
            (1.7976931348623157e308, "1.7976931348623157e+308"),
            (-2.5, "-2.5"),
            (f64::NEG_INFINITY, "-Infinity"),
        ];
        for (v, want) in cases {
            assert_eq!(float8_text(v), want);
            assert_eq!(
                parse_float(want).map(f64::to_bits),
                Some(v.to_bits()),
                "{want}"
            );
        }
        let cases: [(f32, &str); 5] = [
            (123456.0, "123456"),
            (1234567.0, "1.234567e+06"),
            (1e-5, "1e-05"),
            (3.4028235e38, "3.4028235e+38"),
            (0.1 + 0.2, "0.3"),
        ];
        for (v, want) in cases {
            assert_eq!(float4_text(v), want);
        }
        assert!(parse_float("NaN").is_some_and(f64::is_nan));
        assert_eq!(parse_float("inf"), None);
    }

    #[test]
    fn values_compare_and_add_by_type_and_format() {
        let text = |oid| Type::new(oid, false);
        let binary = |oid| Type::new(oid, true);
        assert_eq!(text(23).compare(b"-2", b"10"), Some(Ordering::Less));
        assert_eq!(
            binary(20).compare(&(-2i64).to_be_bytes(), &10i64.to_be_bytes()),
            Some(Ordering::Less)
        );
        assert_eq!(
            binary(26).compare(&u32::MAX.to_be_bytes(), &1u32.to_be_bytes()),
            Some(Ordering::Greater)
        );
        assert_eq!(
            text(701).compare(b"NaN", b"Infinity"),
            Some(Ordering::Greater)
        );
        assert_eq!(text(701).compare(b"-0", b"0"), Some(Ordering::Equal));
        assert_eq!(
            binary(1082).compare(&(-1i32).to_be_bytes(), &0i32.to_be_bytes()),
            Some(Ordering::Less)
        );
        assert_eq!(text(1082).compare(b"2024-01-01", b"2023-01-01"), None);
        assert_eq!(text(25).compare(b"a", b"b"), None);
        assert!(text(1082).ranked() && text(25).ranked() && binary(25).ranked());
        assert!(!binary(1082).ranked() && binary(1082).compares());

        assert_eq!(text(20).add(b"5", b"-7").as_deref(), Some(&b"-2"[..]));
        assert_eq!(
            binary(20).add(&5i64.to_be_bytes(), &7i64.to_be_bytes()),
            Some(12i64.to_be_bytes().to_vec())
        );
        // A sum that leaves its type's range fails, as it would in PostgreSQL.
        assert_eq!(text(20).add(b"9223372036854775807", b"1"), None);
        assert_eq!(text(701).add(b"1e308", b"1e308"), None);
        assert_eq!(
            text(701).add(b"0.25", b"0.5").as_deref(),
            Some(&b"0.75"[..])
        );
        assert_eq!(text(700).add(b"0.1", b"0.2").as_deref(), Some(&b"0.3"[..]));
        assert_eq!(
            text(1700).add(b"1.10", b"2.005").as_deref(),
            Some(&b"3.105"[..])
        );
        assert_eq!(text(25).add(b"1", b"2"), None);
        assert_eq!(text(23).add(b"x", b"2"), None);
        assert_eq!(binary(23).add(&[1, 2, 3], &[0, 0, 0, 1]), None);

        let key = |t: Type, v: &'static [u8]| t.group_key(&Bytes::from_static(v));
        assert_eq!(key(text(1700), b"1.0"), key(text(1700), b"1.00"));
        assert_eq!(key(text(701), b"-0"), key(text(701), b"0"));
        assert_ne!(key(text(25), b"a"), key(text(25), b"a "));
    }
}
