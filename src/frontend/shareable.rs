//! Which client requests may share a server connection with other clients' requests
//! (see `backend::mux`): a statement that runs in its own implicit transaction and
//! leaves the session as it found it.

/// Statements a shared connection runs.
const KEYWORDS: [&[u8]; 7] = [
    b"select", b"insert", b"update", b"delete", b"with", b"values", b"table",
];
/// Functions that change the session (settings, session-level locks).
const SESSION_FUNCTIONS: [&[u8]; 2] = [b"set_config", b"advisory"];

/// True when `sql` (a Query string or a Parse's query, NUL-terminated or not) is one
/// SELECT, INSERT, UPDATE, DELETE, WITH, VALUES or TABLE statement, with no `;`
/// before its end and no call of a function that changes the session. Anything
/// unsure is false: the request then gets a server connection of its own.
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
    !SESSION_FUNCTIONS
        .iter()
        .any(|f| contains_ignore_case(body, f))
}

/// `sql` after leading whitespace and comments.
fn skip_blanks(mut sql: &[u8]) -> &[u8] {
    loop {
        let trimmed = sql.trim_ascii_start();
        if let Some(rest) = trimmed.strip_prefix(b"--") {
            let end = rest.iter().position(|&b| b == b'\n').unwrap_or(rest.len());
            sql = &rest[end..];
        } else if let Some(rest) = trimmed.strip_prefix(b"/*") {
            // Nested comments are rare; an unclosed one leaves nothing to run.
            match rest.windows(2).position(|w| w == b"*/") {
                Some(end) => sql = &rest[end + 2..],
                None => return &[],
            }
        } else {
            return trimmed;
        }
    }
}

fn contains_ignore_case(haystack: &[u8], needle: &[u8]) -> bool {
    haystack
        .windows(needle.len())
        .any(|w| w.eq_ignore_ascii_case(needle))
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
        ];
        for sql in no {
            assert!(!self_contained(sql.as_bytes()), "{sql}");
        }
    }
}
