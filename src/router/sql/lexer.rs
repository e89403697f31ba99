//! A small SQL lexer: enough to find a statement's literals and comments quickly,
//! so that statements differing only in their literal values share one parse.
//!
//! `normalize` replaces each literal with a placeholder numbered from
//! `LITERAL_BASE` (`$100000`, `$100001`, ...), which no client parameter can be
//! (PostgreSQL allows at most 65,535), and returns the literals in order. The
//! normalized text is the parse cache's key and what the real parser reads.

/// Number of the first literal's placeholder.
pub const LITERAL_BASE: u32 = 100_000;

/// A constant in a statement, as written.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Literal {
    /// An unquoted number (`42`, `-` is a separate operator).
    Number(String),
    /// A string constant's value (quotes and escapes removed).
    String(String),
}

impl Literal {
    pub fn text(&self) -> &str {
        match self {
            Literal::Number(s) | Literal::String(s) => s,
        }
    }
}

/// A statement with its literals replaced by placeholders.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Normalized {
    pub text: String,
    pub literals: Vec<Literal>,
    /// The body of a leading `/* pgshard: key=VALUE */` comment, if any.
    pub key_hint: Option<String>,
}

/// Why a statement could not be lexed (it would not parse either).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LexError(pub String);

pub fn normalize(sql: &str) -> Result<Normalized, LexError> {
    let bytes = sql.as_bytes();
    let mut out = Normalized {
        text: String::with_capacity(sql.len() + 8),
        ..Normalized::default()
    };
    let mut at = 0;
    let mut copied = 0;
    let mut prev_word_end: Option<usize> = None;
    while at < bytes.len() {
        let b = bytes[at];
        let start = at;
        match b {
            b'-' if bytes.get(at + 1) == Some(&b'-') => {
                at = bytes[at..]
                    .iter()
                    .position(|&c| c == b'\n' || c == b'\r')
                    .map_or(bytes.len(), |p| at + p);
                continue;
            }
            b'/' if bytes.get(at + 1) == Some(&b'*') => {
                let end = block_comment_end(&bytes[at..])
                    .ok_or_else(|| LexError("unterminated /* comment".into()))?;
                if sql[..at].trim().is_empty() {
                    if let Some(hint) = key_hint(&sql[at + 2..at + end - 2]) {
                        out.key_hint.get_or_insert(hint);
                    }
                }
                at += end;
                continue;
            }
            b'\'' => {
                // E'...' or e'...' right before: backslash escapes.
                let escaped = prev_word_end == Some(at)
                    && at > 0
                    && bytes[at - 1].eq_ignore_ascii_case(&b'e')
                    && (at == 1 || !is_word_byte(bytes[at - 2]));
                let (value, end) = quoted_string(sql, at, escaped)?;
                let from = if escaped { at - 1 } else { at };
                push_literal(
                    &mut out,
                    sql,
                    &mut copied,
                    from,
                    end,
                    Literal::String(value),
                );
                at = end;
            }
            b'$' if bytes.get(at + 1).is_some_and(u8::is_ascii_digit) => {
                // A parameter ($1): copied as is.
                at += 1;
                while at < bytes.len() && bytes[at].is_ascii_digit() {
                    at += 1;
                }
            }
            b'$' => {
                let (value, end) = dollar_string(sql, at)?;
                push_literal(&mut out, sql, &mut copied, at, end, Literal::String(value));
                at = end;
            }
            b'"' => {
                let end = bytes[at + 1..]
                    .iter()
                    .position(|&c| c == b'"')
                    .ok_or_else(|| LexError("unterminated quoted identifier".into()))?;
                at += end + 2;
                // "" inside a quoted identifier continues it.
                while bytes.get(at) == Some(&b'"') {
                    let more = bytes[at + 1..]
                        .iter()
                        .position(|&c| c == b'"')
                        .ok_or_else(|| LexError("unterminated quoted identifier".into()))?;
                    at += more + 2;
                }
            }
            b'0'..=b'9' if prev_word_end != Some(at) => {
                let end = number_end(bytes, at);
                let value = sql[at..end].to_owned();
                push_literal(&mut out, sql, &mut copied, at, end, Literal::Number(value));
                at = end;
            }
            b'.' if bytes.get(at + 1).is_some_and(u8::is_ascii_digit)
                && prev_word_end != Some(at) =>
            {
                let end = number_end(bytes, at);
                let value = sql[at..end].to_owned();
                push_literal(&mut out, sql, &mut copied, at, end, Literal::Number(value));
                at = end;
            }
            _ if is_word_byte(b) => {
                while at < bytes.len() && is_word_byte(bytes[at]) {
                    at += 1;
                }
                prev_word_end = Some(at);
                continue;
            }
            _ => at += 1,
        }
        if at > start {
            prev_word_end = None;
        }
    }
    out.text.push_str(&sql[copied..]);
    Ok(out)
}

fn push_literal(
    out: &mut Normalized,
    sql: &str,
    copied: &mut usize,
    from: usize,
    to: usize,
    literal: Literal,
) {
    out.text.push_str(&sql[*copied..from]);
    let n = LITERAL_BASE as usize + out.literals.len();
    out.text.push('$');
    out.text.push_str(&n.to_string());
    out.literals.push(literal);
    *copied = to;
}

fn is_word_byte(b: u8) -> bool {
    b.is_ascii_alphanumeric() || b == b'_' || b >= 0x80
}

/// `12`, `1.5`, `.5`, `1e10`, `1.5E-3`.
fn number_end(bytes: &[u8], mut at: usize) -> usize {
    while at < bytes.len() && (bytes[at].is_ascii_digit() || bytes[at] == b'.') {
        at += 1;
    }
    if at < bytes.len() && bytes[at].eq_ignore_ascii_case(&b'e') {
        let mut exp = at + 1;
        if exp < bytes.len() && (bytes[exp] == b'+' || bytes[exp] == b'-') {
            exp += 1;
        }
        if exp < bytes.len() && bytes[exp].is_ascii_digit() {
            at = exp;
            while at < bytes.len() && bytes[at].is_ascii_digit() {
                at += 1;
            }
        }
    }
    at
}

/// `'...'` from `open`; `''` is a quote. With `escaped`, backslash escapes too (only
/// the simple ones; anything else keeps the character after the backslash).
fn quoted_string(sql: &str, open: usize, escaped: bool) -> Result<(String, usize), LexError> {
    let bytes = sql.as_bytes();
    let mut value = Vec::new();
    let mut at = open + 1;
    while at < bytes.len() {
        match bytes[at] {
            b'\'' if bytes.get(at + 1) == Some(&b'\'') => {
                value.push(b'\'');
                at += 2;
            }
            b'\'' => {
                let value = String::from_utf8(value)
                    .map_err(|_| LexError("string constant is not UTF-8".into()))?;
                return Ok((value, at + 1));
            }
            b'\\' if escaped && at + 1 < bytes.len() => {
                let c = bytes[at + 1];
                value.push(match c {
                    b'n' => b'\n',
                    b't' => b'\t',
                    b'r' => b'\r',
                    b'b' => 8,
                    b'f' => 12,
                    other => other,
                });
                at += 2;
            }
            c => {
                value.push(c);
                at += 1;
            }
        }
    }
    Err(LexError("unterminated string constant".into()))
}

/// `$tag$...$tag$` from `open`.
fn dollar_string(sql: &str, open: usize) -> Result<(String, usize), LexError> {
    let bytes = sql.as_bytes();
    let tag_len = bytes[open + 1..]
        .iter()
        .position(|&c| c == b'$')
        .ok_or_else(|| LexError("unexpected \"$\"".into()))?;
    let tag = &sql[open..open + tag_len + 2];
    if !tag[1..tag.len() - 1].bytes().all(is_word_byte) {
        return Err(LexError("unexpected \"$\"".into()));
    }
    let body = open + tag.len();
    let end = sql[body..]
        .find(tag)
        .ok_or_else(|| LexError("unterminated dollar-quoted string".into()))?;
    Ok((sql[body..body + end].to_owned(), body + end + tag.len()))
}

/// Where the block comment at the start of `s` ends (comments nest, as in
/// PostgreSQL); `None` when it does not.
pub fn block_comment_end(s: &[u8]) -> Option<usize> {
    let mut depth = 0usize;
    let mut at = 0;
    while at + 1 < s.len() {
        match &s[at..at + 2] {
            b"/*" => {
                depth += 1;
                at += 2;
            }
            b"*/" => {
                depth -= 1;
                at += 2;
                if depth == 0 {
                    return Some(at);
                }
            }
            _ => at += 1,
        }
    }
    None
}

/// `pgshard: key=VALUE` (spaces allowed around the parts) -> VALUE, unquoted.
fn key_hint(comment: &str) -> Option<String> {
    let rest = comment.trim().strip_prefix("pgshard:")?.trim_start();
    let value = rest
        .strip_prefix("key")?
        .trim_start()
        .strip_prefix('=')?
        .trim();
    let value = value
        .strip_prefix('\'')
        .and_then(|v| v.strip_suffix('\''))
        .unwrap_or(value);
    (!value.is_empty()).then(|| value.to_owned())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn lits(sql: &str) -> (String, Vec<String>) {
        let n = normalize(sql).unwrap();
        (
            n.text,
            n.literals.iter().map(|l| l.text().to_owned()).collect(),
        )
    }

    #[test]
    fn literals_become_placeholders() {
        assert_eq!(
            lits("SELECT abalance FROM pgbench_accounts WHERE aid = 48217;"),
            (
                "SELECT abalance FROM pgbench_accounts WHERE aid = $100000;".into(),
                vec!["48217".into()]
            )
        );
        assert_eq!(
            lits("SELECT 'it''s', E'a\\nb', $x$ $1 ' $x$, 1.5e3, $1, t1.c2 FROM t1"),
            (
                "SELECT $100000, $100001, $100002, $100003, $1, t1.c2 FROM t1".into(),
                vec![
                    "it's".into(),
                    "a\nb".into(),
                    " $1 ' ".into(),
                    "1.5e3".into()
                ]
            )
        );
        // Comments and quoted identifiers are not literals.
        assert_eq!(
            lits("SELECT \"a 1\" -- 2\n FROM t /* 3 /* 4 */ */ WHERE k = -5"),
            (
                "SELECT \"a 1\" -- 2\n FROM t /* 3 /* 4 */ */ WHERE k = -$100000".into(),
                vec!["5".into()]
            )
        );
    }

    #[test]
    fn key_hints() {
        let n = normalize("/* pgshard: key=42 */ SELECT 1").unwrap();
        assert_eq!(n.key_hint.as_deref(), Some("42"));
        let n = normalize("/*pgshard:key = 'user_1'*/ UPDATE t SET v = 1").unwrap();
        assert_eq!(n.key_hint.as_deref(), Some("user_1"));
        let n = normalize("SELECT 1 /* pgshard: key=42 */").unwrap();
        assert_eq!(n.key_hint, None);
        let n = normalize("/* other */ SELECT 1").unwrap();
        assert_eq!(n.key_hint, None);
    }

    #[test]
    fn malformed_input_is_an_error_not_a_panic() {
        for sql in [
            "SELECT 'abc",
            "SELECT $$abc",
            "SELECT \"abc",
            "SELECT /* x",
            "$",
            "E'",
            "'",
        ] {
            let _ = normalize(sql);
        }
        assert!(normalize("SELECT 'abc").is_err());
        assert!(normalize("SELECT /* x").is_err());
        assert!(normalize("").unwrap().text.is_empty());
    }
}
