//! PostgreSQL's `numeric`, exactly: its text and binary forms, addition, order, and
//! the division of a sum by a row count that `avg` ends with, at the scale
//! PostgreSQL's `select_div_scale` picks. Pure; any input that is not a numeric is
//! `None`, never a panic.

use std::cmp::Ordering;

/// The fewest significant digits a quotient gets (`NUMERIC_MIN_SIG_DIGITS`).
const MIN_SIG_DIGITS: i64 = 16;
/// The largest display scale (`NUMERIC_MAX_DISPLAY_SCALE`).
const MAX_DISPLAY_SCALE: i64 = 1000;
/// Decimal digits per digit of numeric's base-10000 form (`DEC_DIGITS`).
const DEC_DIGITS: usize = 4;
/// Most decimal digits a value may have here (PostgreSQL's numeric holds up to
/// 131072 before the point and 16383 after).
const DIGITS_MAX: usize = 131_072 + 16_383 + DEC_DIGITS;

const SIGN_NEGATIVE: u16 = 0x4000;
const SIGN_NAN: u16 = 0xC000;
const SIGN_POSITIVE_INFINITY: u16 = 0xD000;
const SIGN_NEGATIVE_INFINITY: u16 = 0xF000;

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Numeric {
    NaN,
    Infinity { negative: bool },
    Finite(Decimal),
}

/// `(-1 if negative) * digits * 10^-scale`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Decimal {
    /// Never set for zero.
    negative: bool,
    /// The magnitude's decimal digits (0..=9), most significant first, without
    /// leading zeros (empty for zero).
    digits: Vec<u8>,
    /// Digits after the point (the display scale).
    scale: usize,
}

impl Decimal {
    fn new(negative: bool, mut digits: Vec<u8>, scale: usize) -> Decimal {
        let zeros = digits.iter().take_while(|&&d| d == 0).count();
        digits.drain(..zeros);
        Decimal {
            negative: negative && !digits.is_empty(),
            digits,
            scale,
        }
    }

    /// An integer.
    pub fn from_i128(v: i128) -> Decimal {
        let digits = v.unsigned_abs().to_string();
        Decimal::new(v < 0, digits.bytes().map(|b| b - b'0').collect(), 0)
    }

    /// The magnitude's digits at `scale` (at least this one's scale).
    fn scaled(&self, scale: usize) -> Vec<u8> {
        let mut out = self.digits.clone();
        out.resize(out.len() + (scale - self.scale), 0);
        out
    }

    /// Base-10000 weight and value of the first non-zero base-10000 digit, as
    /// `select_div_scale` reads them ((0, 0) for zero).
    fn first_digit(&self) -> (i64, u32) {
        let Some(first) = self.digits.iter().position(|&d| d != 0) else {
            return (0, 0);
        };
        // Decimal position of that digit: 0 for units, 1 for tens, -1 for tenths.
        let position = (self.digits.len() - 1 - first) as i64 - self.scale as i64;
        let weight = position.div_euclid(DEC_DIGITS as i64);
        // The base-10000 digit holding it: decimal positions weight*4 .. weight*4+3.
        let mut value = 0u32;
        for p in (weight * 4..weight * 4 + 4).rev() {
            value = value * 10 + u32::from(self.digit_at(p));
        }
        (weight, value)
    }

    /// The decimal digit at position `p` (0 units, 1 tens, -1 tenths).
    fn digit_at(&self, p: i64) -> u8 {
        let from_right = p + self.scale as i64;
        if from_right < 0 || from_right >= self.digits.len() as i64 {
            return 0;
        }
        self.digits[self.digits.len() - 1 - from_right as usize]
    }
}

impl Numeric {
    /// PostgreSQL's text form (`numeric_out`): `-12.340`, `NaN`, `Infinity`.
    pub fn parse_text(text: &[u8]) -> Option<Numeric> {
        let s = std::str::from_utf8(text).ok()?.trim();
        match s {
            "NaN" => return Some(Numeric::NaN),
            "Infinity" => return Some(Numeric::Infinity { negative: false }),
            "-Infinity" => return Some(Numeric::Infinity { negative: true }),
            _ => {}
        }
        let (negative, rest) = match s.strip_prefix('-') {
            Some(rest) => (true, rest),
            None => (false, s.strip_prefix('+').unwrap_or(s)),
        };
        let (int, frac) = rest.split_once('.').unwrap_or((rest, ""));
        let all_digits = |p: &str| p.bytes().all(|c| c.is_ascii_digit());
        if (int.is_empty() && frac.is_empty())
            || !all_digits(int)
            || !all_digits(frac)
            || int.len() + frac.len() > DIGITS_MAX
        {
            return None;
        }
        let digits = int.bytes().chain(frac.bytes()).map(|c| c - b'0').collect();
        Some(Numeric::Finite(Decimal::new(negative, digits, frac.len())))
    }

    /// PostgreSQL's binary form (`numeric_send`): ndigits, weight, sign, dscale,
    /// then base-10000 digits, all big-endian 16-bit.
    pub fn parse_binary(v: &[u8]) -> Option<Numeric> {
        let word = |i: usize| -> Option<u16> {
            Some(u16::from_be_bytes(
                v.get(i * 2..i * 2 + 2)?.try_into().ok()?,
            ))
        };
        let ndigits = usize::from(word(0)?);
        let weight = i64::from(word(1)? as i16);
        let sign = word(2)?;
        let dscale = usize::from(word(3)?);
        if v.len() != 8 + 2 * ndigits || dscale > DIGITS_MAX {
            return None;
        }
        let negative = match sign {
            0 => false,
            SIGN_NEGATIVE => true,
            SIGN_NAN => return Some(Numeric::NaN),
            SIGN_POSITIVE_INFINITY => return Some(Numeric::Infinity { negative: false }),
            SIGN_NEGATIVE_INFINITY => return Some(Numeric::Infinity { negative: true }),
            _ => return None,
        };
        let mut digits = Vec::with_capacity(ndigits * DEC_DIGITS);
        for i in 0..ndigits {
            let d = word(4 + i)?;
            if d > 9999 {
                return None;
            }
            digits.extend_from_slice(&[
                (d / 1000) as u8,
                (d / 100 % 10) as u8,
                (d / 10 % 10) as u8,
                (d % 10) as u8,
            ]);
        }
        // The digits hold value * 10^(4 * groups after the point).
        let after = ndigits as i64 - 1 - weight;
        let mut scale = 0;
        if after < 0 {
            let zeros = usize::try_from(-after).ok()? * DEC_DIGITS;
            if zeros > DIGITS_MAX {
                return None;
            }
            digits.resize(digits.len() + zeros, 0);
        } else {
            scale = usize::try_from(after).ok()? * DEC_DIGITS;
        }
        if scale > dscale {
            // Digits past the display scale are dropped, as numeric_recv does.
            let cut = (scale - dscale).min(digits.len());
            digits.truncate(digits.len() - cut);
        } else {
            digits.resize(digits.len() + (dscale - scale), 0);
        }
        Some(Numeric::Finite(Decimal::new(negative, digits, dscale)))
    }

    pub fn parse(v: &[u8], binary: bool) -> Option<Numeric> {
        if binary {
            Numeric::parse_binary(v)
        } else {
            Numeric::parse_text(v)
        }
    }

    pub fn to_text(&self) -> String {
        let d = match self {
            Numeric::NaN => return "NaN".into(),
            Numeric::Infinity { negative: false } => return "Infinity".into(),
            Numeric::Infinity { negative: true } => return "-Infinity".into(),
            Numeric::Finite(d) => d,
        };
        let mut out = String::with_capacity(d.digits.len() + 3);
        if d.negative {
            out.push('-');
        }
        let digit = |x: &u8| char::from(b'0' + x);
        let int_len = d.digits.len().saturating_sub(d.scale);
        if int_len == 0 {
            out.push('0');
        }
        out.extend(d.digits[..int_len].iter().map(digit));
        if d.scale > 0 {
            out.push('.');
            let frac = &d.digits[int_len..];
            out.extend(std::iter::repeat_n('0', d.scale - frac.len()));
            out.extend(frac.iter().map(digit));
        }
        out
    }

    pub fn to_binary(&self) -> Vec<u8> {
        let header = |ndigits: u16, weight: i16, sign: u16, dscale: u16| {
            let mut out = Vec::with_capacity(8);
            for w in [ndigits, weight as u16, sign, dscale] {
                out.extend_from_slice(&w.to_be_bytes());
            }
            out
        };
        let d = match self {
            Numeric::NaN => return header(0, 0, SIGN_NAN, 0),
            Numeric::Infinity { negative: false } => {
                return header(0, 0, SIGN_POSITIVE_INFINITY, 0)
            }
            Numeric::Infinity { negative: true } => return header(0, 0, SIGN_NEGATIVE_INFINITY, 0),
            Numeric::Finite(d) => d,
        };
        // Align to base-10000 digits around the point.
        let pad_right = (DEC_DIGITS - d.scale % DEC_DIGITS) % DEC_DIGITS;
        let mut digits = d.digits.clone();
        digits.resize(digits.len() + pad_right, 0);
        let pad_left = (DEC_DIGITS - digits.len() % DEC_DIGITS) % DEC_DIGITS;
        let mut aligned = vec![0u8; pad_left];
        aligned.extend_from_slice(&digits);
        let mut groups: Vec<u16> = aligned
            .chunks(DEC_DIGITS)
            .map(|c| c.iter().fold(0u16, |acc, &x| acc * 10 + u16::from(x)))
            .collect();
        let after = (d.scale + pad_right) / DEC_DIGITS;
        let mut weight = groups.len() as i64 - 1 - after as i64;
        let leading = groups.iter().take_while(|&&g| g == 0).count();
        groups.drain(..leading);
        weight -= leading as i64;
        while groups.last() == Some(&0) {
            groups.pop();
        }
        if groups.is_empty() {
            weight = 0;
        }
        let sign = if d.negative { SIGN_NEGATIVE } else { 0 };
        let mut out = header(groups.len() as u16, weight as i16, sign, d.scale as u16);
        for g in groups {
            out.extend_from_slice(&g.to_be_bytes());
        }
        out
    }

    /// `self + other` as numeric's `+` (the larger scale; NaN and infinities as
    /// PostgreSQL adds them).
    pub fn add(&self, other: &Numeric) -> Numeric {
        let (a, b) = match (self, other) {
            (Numeric::NaN, _) | (_, Numeric::NaN) => return Numeric::NaN,
            (Numeric::Infinity { negative: x }, Numeric::Infinity { negative: y }) => {
                return if x == y { self.clone() } else { Numeric::NaN };
            }
            (Numeric::Infinity { .. }, _) => return self.clone(),
            (_, Numeric::Infinity { .. }) => return other.clone(),
            (Numeric::Finite(a), Numeric::Finite(b)) => (a, b),
        };
        let scale = a.scale.max(b.scale);
        let (x, y) = (a.scaled(scale), b.scaled(scale));
        if a.negative == b.negative {
            return Numeric::Finite(Decimal::new(a.negative, add_digits(&x, &y), scale));
        }
        match compare_digits(&x, &y) {
            Ordering::Equal => Numeric::Finite(Decimal::new(false, Vec::new(), scale)),
            Ordering::Greater => {
                Numeric::Finite(Decimal::new(a.negative, sub_digits(&x, &y), scale))
            }
            Ordering::Less => Numeric::Finite(Decimal::new(b.negative, sub_digits(&y, &x), scale)),
        }
    }

    /// `self / count` as `avg` computes it: numeric division at the scale
    /// `select_div_scale` chooses, rounded half away from zero. `None` for a count
    /// of zero.
    pub fn div_count(&self, count: u64) -> Option<Numeric> {
        if count == 0 {
            return None;
        }
        let d = match self {
            Numeric::Finite(d) => d,
            other => return Some(other.clone()),
        };
        let divisor = Decimal::from_i128(i128::from(count));
        let (weight1, first1) = d.first_digit();
        let (weight2, first2) = divisor.first_digit();
        let mut qweight = weight1 - weight2;
        if first1 <= first2 {
            qweight -= 1;
        }
        let rscale = (MIN_SIG_DIGITS - qweight * DEC_DIGITS as i64)
            .max(d.scale as i64)
            .clamp(0, MAX_DISPLAY_SCALE) as usize;
        // digits * 10^(rscale + 1 - scale) / count, then rounded at its last digit.
        // (A scale above the largest display scale divides to fewer digits:
        // floor(floor(a / b) / c) = floor(a / (b * c)).)
        let mut numerator = d.digits.clone();
        let extra = rscale + 1;
        numerator.resize(numerator.len() + extra.saturating_sub(d.scale), 0);
        let mut quotient = Vec::with_capacity(numerator.len());
        let mut rem: u128 = 0;
        for &digit in &numerator {
            rem = rem * 10 + u128::from(digit);
            quotient.push((rem / u128::from(count)) as u8);
            rem %= u128::from(count);
        }
        let drop = d.scale.saturating_sub(extra).min(quotient.len());
        quotient.truncate(quotient.len() - drop);
        let last = quotient.pop().unwrap_or(0);
        if last >= 5 {
            quotient = add_digits(&quotient, &[1]);
        }
        Some(Numeric::Finite(Decimal::new(d.negative, quotient, rscale)))
    }

    /// Numeric order: -Infinity < numbers < Infinity < NaN (NaN equals NaN).
    pub fn compare(&self, other: &Numeric) -> Ordering {
        let rank = |n: &Numeric| match n {
            Numeric::Infinity { negative: true } => 0,
            Numeric::Finite(_) => 1,
            Numeric::Infinity { negative: false } => 2,
            Numeric::NaN => 3,
        };
        let (a, b) = match (self, other) {
            (Numeric::Finite(a), Numeric::Finite(b)) => (a, b),
            _ => return rank(self).cmp(&rank(other)),
        };
        let scale = a.scale.max(b.scale);
        let magnitude = compare_digits(&a.scaled(scale), &b.scaled(scale));
        match (a.negative, b.negative) {
            (false, true) => Ordering::Greater,
            (true, false) => Ordering::Less,
            (false, false) => magnitude,
            (true, true) => magnitude.reverse(),
        }
    }

    /// The value without trailing fraction zeros: equal numerics have equal keys
    /// (`1.0` = `1.00`), as GROUP BY sees them.
    pub fn group_key(&self) -> String {
        match self {
            Numeric::Finite(d) if d.digits.is_empty() => "0".into(),
            Numeric::Finite(d) => {
                let trailing = d.digits.iter().rev().take_while(|&&x| x == 0).count();
                let cut = trailing.min(d.scale);
                let digits = d.digits[..d.digits.len() - cut].to_vec();
                Numeric::Finite(Decimal::new(d.negative, digits, d.scale - cut)).to_text()
            }
            other => other.to_text(),
        }
    }
}

/// Magnitudes without leading zeros, compared.
fn compare_digits(a: &[u8], b: &[u8]) -> Ordering {
    let a = &a[a.iter().take_while(|&&d| d == 0).count()..];
    let b = &b[b.iter().take_while(|&&d| d == 0).count()..];
    a.len().cmp(&b.len()).then_with(|| a.cmp(b))
}

fn add_digits(a: &[u8], b: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(a.len().max(b.len()) + 1);
    let (mut i, mut j, mut carry) = (a.len(), b.len(), 0u8);
    while i > 0 || j > 0 || carry > 0 {
        let x = if i > 0 { a[i - 1] } else { 0 };
        let y = if j > 0 { b[j - 1] } else { 0 };
        let s = x + y + carry;
        out.push(s % 10);
        carry = s / 10;
        i = i.saturating_sub(1);
        j = j.saturating_sub(1);
    }
    out.reverse();
    out
}

/// `a - b` for magnitudes with `a >= b`.
fn sub_digits(a: &[u8], b: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(a.len());
    let mut borrow = 0i8;
    for k in 0..a.len() {
        let x = a[a.len() - 1 - k] as i8;
        let y = if k < b.len() {
            b[b.len() - 1 - k] as i8
        } else {
            0
        };
        let mut d = x - y - borrow;
        borrow = i8::from(d < 0);
        if d < 0 {
            d += 10;
        }
        out.push(d as u8);
    }
    out.reverse();
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn n(s: &str) -> Numeric {
        Numeric::parse_text(s.as_bytes()).unwrap()
    }

    #[test]
    fn text_round_trips_and_adds_exactly() {
        for s in [
            "0",
            "-1.50",
            "0.0001",
            "123456789012345678901234567890.000001",
            "NaN",
        ] {
            assert_eq!(n(s).to_text(), s);
        }
        assert_eq!(n("1.10").add(&n("2.005")).to_text(), "3.105");
        assert_eq!(n("-1.5").add(&n("1")).to_text(), "-0.5");
        assert_eq!(n("-0.25").add(&n("0.25")).to_text(), "0.00");
        assert_eq!(
            n("99999999999999999999999999999999999999999")
                .add(&n("1"))
                .to_text(),
            "100000000000000000000000000000000000000000"
        );
        assert_eq!(n("Infinity").add(&n("-Infinity")).to_text(), "NaN");
        assert_eq!(n("-Infinity").add(&n("5")).to_text(), "-Infinity");
        for bad in ["", "-", "1e5", "abc", "1.2.3", " . "] {
            assert_eq!(Numeric::parse_text(bad.as_bytes()), None, "{bad:?}");
        }
    }

    #[test]
    fn binary_form_round_trips() {
        for s in [
            "0",
            "0.000",
            "1",
            "-1.5",
            "10000",
            "12345.6789",
            "0.00000000001",
            "-99990000.00010",
            "NaN",
            "-Infinity",
        ] {
            let v = n(s);
            let binary = v.to_binary();
            assert_eq!(Numeric::parse_binary(&binary), Some(v), "{s}");
        }
        // 12345.6789 as PostgreSQL sends it: ndigits 3, weight 1, dscale 4.
        let b = n("12345.6789").to_binary();
        assert_eq!(
            b,
            [0, 3, 0, 1, 0, 0, 0, 4, 0, 1, 0x09, 0x29, 0x1A, 0x85].to_vec()
        );
        assert_eq!(Numeric::parse_binary(&[0, 1, 0, 0]), None);
        assert_eq!(
            Numeric::parse_binary(&[0, 1, 0, 0, 0, 0, 0, 0, 0x27, 0x10]),
            None
        );
    }

    #[test]
    fn avg_divides_at_postgres_scale() {
        // Expected values from PostgreSQL 15's avg over the same rows.
        let avg = |sum: &str, count: u64| n(sum).div_count(count).unwrap().to_text();
        assert_eq!(avg("3", 2), "1.5000000000000000");
        assert_eq!(avg("7", 3), "2.3333333333333333");
        assert_eq!(avg("3.000", 2), "1.5000000000000000");
        assert_eq!(avg("100000002", 2), "50000001.000000000000");
        assert_eq!(avg("0.0012", 2), "0.00060000000000000000");
        assert_eq!(avg("123456791.123", 2), "61728395.561500000000");
        assert_eq!(avg("-3", 2), "-1.5000000000000000");
        assert_eq!(avg("0.00000000001", 1), "0.0000000000100000000000000000");
        assert_eq!(avg("10000000000000000", 3), "3333333333333333.3333");
        assert_eq!(avg("2", 3), "0.66666666666666666667");
        assert_eq!(avg("Infinity", 2), "Infinity");
        assert_eq!(n("1").div_count(0), None);
    }

    #[test]
    fn order_and_groups() {
        assert_eq!(n("-2").compare(&n("-10")), Ordering::Greater);
        assert_eq!(n("0.50").compare(&n("0.5")), Ordering::Equal);
        assert_eq!(n("NaN").compare(&n("Infinity")), Ordering::Greater);
        assert_eq!(n("-Infinity").compare(&n("-1")), Ordering::Less);
        assert_eq!(n("1.0").group_key(), n("1.00").group_key());
        assert_ne!(n("1.0").group_key(), n("10").group_key());
        assert_eq!(n("-0.0").group_key(), n("0").group_key());
    }
}
