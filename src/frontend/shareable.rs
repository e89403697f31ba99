//! Which client requests may share a server connection with other clients' requests
//! (see `backend::mux`): a statement that runs in its own implicit transaction and
//! leaves the session as it found it.

use crate::router::sql::lexer::block_comment_end;

/// Statements a shared connection runs.
const KEYWORDS: [&[u8]; 7] = [
    b"select", b"insert", b"update", b"delete", b"with", b"values", b"table",
];
/// Text that may change the session: settings (`set_config`, `pg_settings`),
/// session-level locks, temporary tables (`INTO TEMP`), and Unicode escapes, which
/// could spell any of these (`U&"set\005fconfig"`). Matched anywhere, in any case.
const SESSION_TEXT: [&[u8]; 6] = [
    b"set_config",
    b"pg_settings",
    b"advisory",
    b"temp",
    b"u&\"",
    b"u&'",
];

/// True when `sql` (a Query string or a Parse's query, NUL-terminated or not) is one
/// SELECT, INSERT, UPDATE, DELETE, WITH, VALUES or TABLE statement, with no `;`
/// before its end and none of `SESSION_TEXT`. Anything unsure is false: the request
/// then gets a server connection of its own. (A user-defined function that changes
/// settings is not seen here, nor on a connection of its own under transaction
/// pooling; the shared connection's driver retires a connection whose replies show
/// such a change.)
pub fn self_contained(sql: &[u8]) -> bool {
    let sql = sql.strip_suffix(b"\0").unwrap_or(sql);
    let body = skip_blanks(sql);
    let word_len = body
        .iter()
        .position(|b| !b.is_ascii_alphabetic())
        .unwrap_or(body.len());
    let word = &body[..word_len];
    if !KEYWORDS.iter().any(|k| word.eq_ignore_ascii_case(k)) {
        return false;
    }
    if let Some(at) = body.iter().position(|&b| b == b';') {
        if body[at..]
            .iter()
            .any(|&b| b != b';' && !b.is_ascii_whitespace())
        {
            return false;
        }
    }
    !mentions_session_text(body)
}

/// `sql` after leading whitespace and comments, read as PostgreSQL does: `--` runs
/// to the end of the line (`\n` or `\r`), and `/* */` comments nest.
pub(super) fn skip_blanks(mut sql: &[u8]) -> &[u8] {
    loop {
        sql = sql.trim_ascii_start();
        if let Some(rest) = sql.strip_prefix(b"--") {
            let end = rest.iter().position(|&b| b == b'\n' || b == b'\r');
            sql = &rest[end.unwrap_or(rest.len())..];
        } else if sql.starts_with(b"/*") {
            match block_comment_end(sql) {
                Some(end) => sql = &sql[end..],
                // Unclosed: PostgreSQL rejects it, and nothing runs.
                None => return &[],
            }
        } else {
            return sql;
        }
    }
}

/// Whether `body` contains one of `SESSION_TEXT`, in any case (one pass; only bytes
/// that start a needle are compared further).
fn mentions_session_text(body: &[u8]) -> bool {
    body.iter().enumerate().any(|(i, &b)| {
        let b = b.to_ascii_lowercase();
        matches!(b, b's' | b'p' | b'a' | b't' | b'u')
            && SESSION_TEXT.iter().any(|needle| {
                needle[0] == b
                    && body
                        .get(i..i + needle.len())
                        .is_some_and(|w| w.eq_ignore_ascii_case(needle))
            })
    })
}

#[cfg(test)]
mod tests {
    use super::self_contained;

    #[test]
    fn statements() {
        let yes = [
            "SELECT abalance FROM pgbench_accounts WHERE aid = 7;\0",
            "  select 1",
            "-- note\nINSERT INTO t VALUES (1)",
            "/* pgshard: key=3 */ update t set v = 1 where k = 3 ;  ",
            "/* a /* nested */ comment */ SELECT 1",
            "-- note\r\nSELECT 1",
            "WITH x AS (SELECT 1) SELECT * FROM x",
            "values (1)",
            "TABLE t",
            "DELETE FROM t",
        ];
        for sql in yes {
            assert!(self_contained(sql.as_bytes()), "{sql}");
        }
        let no = [
            "BEGIN",
            "SET work_mem = '8MB'",
            "SELECT 1; SELECT 2",
            "SELECT set_config('work_mem', '8MB', false)",
            "SELECT pg_advisory_lock(1)",
            "COPY t FROM STDIN",
            "selectx 1",
            "/* unclosed SELECT 1",
            "",
            "PREPARE p AS SELECT 1",
            "DISCARD ALL",
            "LISTEN x",
            "/* /* */ select */ SET search_path = evil",
            "-- x\rBEGIN /*\nselect 1 */",
            "UPDATE pg_settings SET setting = 'x' WHERE name = 'search_path'",
            "SELECT U&\"set\\005fconfig\"('a', 'b', false)",
            "SELECT * INTO TEMP t FROM x",
            "select pg_try_advisory_lock(1)",
        ];
        for sql in no {
            assert!(!self_contained(sql.as_bytes()), "{sql}");
        }
    }
}
