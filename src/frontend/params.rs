//! Session parameters a client set (at startup or with SET/RESET), tracked so that
//! transaction pooling can give each client its own settings on any server connection
//! and none leak to another client.

use std::collections::BTreeMap;
use std::hash::{Hash, Hasher};

use crate::limits::CLIENT_PARAMS_MAX;

/// One change a statement makes to the session's parameters.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ParamChange {
    /// `SET name TO value`; `value` is the SQL text as the client wrote it.
    Set(String, String),
    Reset(String),
    ResetAll,
    /// `DISCARD ALL`: parameters reset (the server's prepared statements are dropped
    /// too; the session sees that from the CommandComplete).
    DiscardAll,
    /// A session-level change the proxy cannot replay (`set_config(.., false)`,
    /// `SET SESSION CHARACTERISTICS`, an unparsed SET): the server must be reset
    /// before anyone else uses it, and the client loses it after its transaction.
    Untracked,
    /// `SET SESSION AUTHORIZATION`: not undone by `RESET ALL`; the server connection
    /// is discarded after the transaction.
    Unresettable,
}

/// The parameters a client wants on top of the server's defaults.
#[derive(Debug, Clone, Default)]
pub struct ClientParams {
    values: BTreeMap<String, String>,
    fingerprint: u64,
}

impl ClientParams {
    /// From the startup packet: every parameter except connection routing ones, and
    /// except those already equal to the server's default.
    pub fn from_startup(startup: &[(String, String)], server: &[(String, String)]) -> ClientParams {
        let mut params = ClientParams::default();
        for (name, value) in startup {
            match name.as_str() {
                "user" | "database" | "replication" => {}
                "options" => {
                    for (n, v) in parse_options(value) {
                        params.set(n, quote(&v));
                    }
                }
                _ => {
                    let default = server.iter().find(|(n, _)| n.eq_ignore_ascii_case(name));
                    let same = default.is_some_and(|(_, v)| v.eq_ignore_ascii_case(value));
                    if !same {
                        params.set(name.to_ascii_lowercase(), quote(value));
                    }
                }
            }
        }
        params
    }

    /// 0 when nothing is set, which is also what a fresh server connection has.
    pub fn fingerprint(&self) -> u64 {
        self.fingerprint
    }

    pub fn apply(&mut self, change: &ParamChange) {
        match change {
            ParamChange::Set(name, value) => self.set(name.clone(), value.clone()),
            ParamChange::Reset(name) => {
                self.values.remove(name);
            }
            ParamChange::ResetAll | ParamChange::DiscardAll => self.values.clear(),
            ParamChange::Untracked | ParamChange::Unresettable => {}
        }
        self.refresh();
    }

    fn set(&mut self, name: String, value: String) {
        if self.values.len() < CLIENT_PARAMS_MAX || self.values.contains_key(&name) {
            self.values.insert(name, value);
        }
        self.refresh();
    }

    fn refresh(&mut self) {
        self.fingerprint = if self.values.is_empty() {
            0
        } else {
            let mut h = std::collections::hash_map::DefaultHasher::new();
            self.values.hash(&mut h);
            h.finish() | 1
        };
    }

    /// The statement that turns any server connection into this client's session.
    pub fn sync_sql(&self) -> String {
        // RESET ALL leaves the role alone.
        let mut sql = String::from("RESET ROLE; RESET ALL");
        for (name, value) in &self.values {
            sql.push_str(&format!("; SET {name} TO {value}"));
        }
        sql
    }

    /// Value as the client set it, for `SHOW CLIENTS` and ParameterStatus.
    pub fn get(&self, name: &str) -> Option<&str> {
        self.values.get(name).map(String::as_str)
    }
}

/// Quotes a value as a SQL string literal.
pub fn quote(value: &str) -> String {
    format!("'{}'", value.replace('\'', "''"))
}

/// `-c name=value` and `--name=value` pairs of the startup `options` parameter.
fn parse_options(options: &str) -> Vec<(String, String)> {
    let mut out = Vec::new();
    let mut words = options.split_whitespace();
    while let Some(word) = words.next() {
        let pair = match word {
            "-c" => words.next(),
            w => w.strip_prefix("--").or_else(|| w.strip_prefix("-c")),
        };
        if let Some((name, value)) = pair.and_then(|p| p.split_once('=')) {
            out.push((
                name.replace('-', "_").to_ascii_lowercase(),
                value.to_owned(),
            ));
        }
    }
    out
}

/// The parameter changes a simple-query string makes, statement by statement.
pub fn changes(sql: &str) -> Vec<ParamChange> {
    let mut out: Vec<ParamChange> = split_statements(sql).filter_map(statement_change).collect();
    let calls_set_config = sql
        .as_bytes()
        .windows(10)
        .any(|w| w.eq_ignore_ascii_case(b"set_config"));
    if calls_set_config {
        out.push(ParamChange::Untracked);
    }
    out
}

/// Cheap check before the full parse: could this SQL change session parameters?
pub fn may_change(sql: &[u8]) -> bool {
    sql.windows(3)
        .any(|w| w.eq_ignore_ascii_case(b"set") || w.eq_ignore_ascii_case(b"dis"))
}

fn statement_change(stmt: &str) -> Option<ParamChange> {
    let stmt = strip_leading_comments(stmt);
    let words: Vec<&str> = stmt.split_whitespace().collect();
    let upper = |i: usize| words.get(i).map(|w| w.to_ascii_uppercase());
    match upper(0)?.as_str() {
        "SET" => set_statement(stmt, &words),
        "RESET" => match upper(1)?.as_str() {
            "ALL" => Some(ParamChange::ResetAll),
            "SESSION" => Some(ParamChange::Unresettable),
            _ => Some(ParamChange::Reset(words.get(1)?.to_ascii_lowercase())),
        },
        "DISCARD" if upper(1).as_deref() == Some("ALL") => Some(ParamChange::DiscardAll),
        _ => None,
    }
}

/// A statement starting with SET: the special forms, then `SET [SESSION] name ...`.
fn set_statement(stmt: &str, words: &[&str]) -> Option<ParamChange> {
    let upper = |i: usize| words.get(i).map(|w| w.to_ascii_uppercase());
    let value = |n: usize| rest_after_words(stmt, n);
    let set_or_reset = |name: &str, v: &str, resets: &[&str]| {
        if v.is_empty() || resets.iter().any(|r| v.eq_ignore_ascii_case(r)) {
            ParamChange::Reset(name.into())
        } else {
            ParamChange::Set(name.into(), v.into())
        }
    };
    let (first, second) = (upper(1), upper(2));
    Some(match (first.as_deref(), second.as_deref()) {
        (Some("LOCAL" | "TRANSACTION" | "CONSTRAINTS"), _) => return None,
        (Some("SESSION"), Some("CHARACTERISTICS")) => ParamChange::Untracked,
        (Some("SESSION"), Some("AUTHORIZATION")) => ParamChange::Unresettable,
        (Some("TIME"), Some("ZONE")) => set_or_reset("timezone", value(3), &["LOCAL", "DEFAULT"]),
        (Some("SCHEMA"), _) => set_or_reset("search_path", value(2), &[]),
        (Some("NAMES"), _) => set_or_reset("client_encoding", value(2), &["DEFAULT"]),
        (Some("ROLE"), _) => set_or_reset("role", value(2), &["NONE"]),
        (Some("SESSION"), Some(_)) => set_change(stmt, words[2]).unwrap_or(ParamChange::Untracked),
        (Some(_), _) => set_change(stmt, words[1]).unwrap_or(ParamChange::Untracked),
        (None, _) => return None,
    })
}

/// The text after the first `n` words of `stmt`, trimmed.
fn rest_after_words(stmt: &str, n: usize) -> &str {
    let mut rest = stmt.trim_start();
    for _ in 0..n {
        rest = rest
            .split_once(char::is_whitespace)
            .map_or("", |(_, r)| r)
            .trim_start();
    }
    rest.trim_end()
}

/// `name TO value` / `name = value` / `name=value`, starting at the word `first`.
fn set_change(stmt: &str, first: &str) -> Option<ParamChange> {
    let start = stmt.find(first)?;
    let rest = &stmt[start..];
    let (name, value) = match rest.find('=') {
        Some(eq) if !rest[..eq].trim().contains(char::is_whitespace) => {
            (&rest[..eq], &rest[eq + 1..])
        }
        _ => {
            let (name, tail) = rest.split_once(char::is_whitespace)?;
            let tail = tail.trim_start();
            let value = tail.get(..2).filter(|kw| kw.eq_ignore_ascii_case("to"))?;
            (name, &tail[value.len()..])
        }
    };
    let name = name.trim().to_ascii_lowercase();
    let value = value.trim();
    if name.is_empty() || value.is_empty() {
        return None;
    }
    if value.eq_ignore_ascii_case("default") {
        return Some(ParamChange::Reset(name));
    }
    Some(ParamChange::Set(name, value.to_owned()))
}

/// Splits on `;` outside quotes and comments.
fn split_statements(sql: &str) -> impl Iterator<Item = &str> {
    let bytes = sql.as_bytes();
    let mut parts = Vec::new();
    let (mut start, mut i) = (0, 0);
    while i < bytes.len() {
        match bytes[i] {
            b'\'' | b'"' => i = skip_quoted(bytes, i),
            b'-' if bytes.get(i + 1) == Some(&b'-') => {
                i = bytes[i..]
                    .iter()
                    .position(|&b| b == b'\n')
                    .map_or(bytes.len(), |p| i + p)
            }
            b'/' if bytes.get(i + 1) == Some(&b'*') => {
                i = sql[i + 2..]
                    .find("*/")
                    .map_or(bytes.len(), |p| i + 2 + p + 2)
            }
            b';' => {
                parts.push(&sql[start..i]);
                start = i + 1;
                i += 1;
            }
            _ => i += 1,
        }
    }
    parts.push(&sql[start..]);
    parts.into_iter().map(str::trim).filter(|s| !s.is_empty())
}

fn strip_leading_comments(s: &str) -> &str {
    // Comments end at ASCII bytes, so the rest starts on a char boundary.
    let rest = super::shareable::skip_blanks(s.as_bytes());
    &s[s.len() - rest.len()..]
}

fn skip_quoted(bytes: &[u8], open: usize) -> usize {
    let quote = bytes[open];
    let mut i = open + 1;
    while i < bytes.len() {
        if bytes[i] == quote {
            if bytes.get(i + 1) == Some(&quote) {
                i += 2;
                continue;
            }
            return i + 1;
        }
        i += 1;
    }
    bytes.len()
}

#[cfg(test)]
mod tests {
    use super::*;
    use ParamChange::*;

    fn check(sql: &str, expect: Vec<ParamChange>) {
        assert_eq!(changes(sql), expect, "sql {sql:?}");
    }

    #[test]
    fn set_statements() {
        let set = |n: &str, v: &str| Set(n.into(), v.into());
        check(
            "SET statement_timeout = '1234ms'",
            vec![set("statement_timeout", "'1234ms'")],
        );
        check(
            "set search_path to public, other",
            vec![set("search_path", "public, other")],
        );
        check(
            "SET SESSION work_mem TO '8MB';",
            vec![set("work_mem", "'8MB'")],
        );
        check("SET x=1; SET y = 2", vec![set("x", "1"), set("y", "2")]);
        check("SET TimeZone TO DEFAULT", vec![Reset("timezone".into())]);
        check("SET LOCAL work_mem = '1MB'", vec![]);
        check("SET TRANSACTION ISOLATION LEVEL SERIALIZABLE", vec![]);
        check(
            "SET SESSION CHARACTERISTICS AS TRANSACTION READ ONLY",
            vec![Untracked],
        );
        check("RESET work_mem", vec![Reset("work_mem".into())]);
        check("reset all", vec![ResetAll]);
        check("DISCARD ALL", vec![DiscardAll]);
        check("SELECT 'SET x = 1; '", vec![]);
        check("SELECT 1; -- SET x = 1;\nSET y TO 2", vec![set("y", "2")]);
        check("SET", vec![]);
        check("SET x", vec![Untracked]);
        // PostgreSQL nests block comments and ends `--` comments at `\r` too.
        check(
            "/* /* */ select */ SET search_path = s",
            vec![set("search_path", "s")],
        );
        check("-- c\rSET y TO 2", vec![set("y", "2")]);
    }

    #[test]
    fn fingerprints_and_sync() {
        let mut p = ClientParams::default();
        assert_eq!(p.fingerprint(), 0);
        p.apply(&Set("work_mem".into(), "'8MB'".into()));
        assert_ne!(p.fingerprint(), 0);
        assert_eq!(p.sync_sql(), "RESET ROLE; RESET ALL; SET work_mem TO '8MB'");
        p.apply(&Reset("work_mem".into()));
        assert_eq!(p.fingerprint(), 0);
        assert_eq!(p.sync_sql(), "RESET ROLE; RESET ALL");
    }

    #[test]
    fn startup_params_skip_server_defaults() {
        let server = vec![("client_encoding".to_string(), "UTF8".to_string())];
        let startup: Vec<(String, String)> = [
            ("user", "u"),
            ("database", "d"),
            ("client_encoding", "utf8"),
            ("application_name", "it's"),
            ("options", "-c search_path=s1 --work-mem=4MB"),
        ]
        .iter()
        .map(|(a, b)| (a.to_string(), b.to_string()))
        .collect();
        let p = ClientParams::from_startup(&startup, &server);
        assert_eq!(p.get("client_encoding"), None);
        assert_eq!(p.get("application_name"), Some("'it''s'"));
        assert_eq!(p.get("search_path"), Some("'s1'"));
        assert_eq!(p.get("work_mem"), Some("'4MB'"));
    }
}
