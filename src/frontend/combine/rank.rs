//! Values the proxy cannot order itself (text under a collation other than "C",
//! dates and times in text format) ranked by a backend: the distinct values go back
//! as one `text[]` parameter and the backend answers each one's `dense_rank()`
//! under the column's type and collation, so the merge orders them exactly as the
//! database would, equal values included.

use bytes::{BufMut, Bytes, BytesMut};

use crate::limits;
use crate::protocol::messages;

/// OID of `text[]`, the parameter's type.
const TEXT_ARRAY: i32 = 1009;
const TEXT: i32 = 25;

/// One column's distinct values, to be ranked by a backend.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RankRequest {
    type_name: &'static str,
    /// As `pg_collation_for` printed it (checked to be a collation name).
    collation: Option<String>,
    pub values: Vec<Bytes>,
}

impl RankRequest {
    /// Refused when there are more values than the proxy sends back at once.
    pub(super) fn new(
        type_name: &'static str,
        collation: Option<String>,
        values: Vec<Bytes>,
    ) -> Result<RankRequest, String> {
        let bytes: usize = values.iter().map(|v| v.len() + 4).sum();
        if values.len() > limits::RANK_VALUES_MAX || bytes > limits::RANK_BYTES_MAX {
            return Err(format!(
                "ordering {type_name} values across backends takes at most {} distinct \
                 values ({} bytes); add a LIMIT or order by a column of another type",
                limits::RANK_VALUES_MAX,
                limits::RANK_BYTES_MAX
            ));
        }
        Ok(RankRequest {
            type_name,
            collation,
            values,
        })
    }

    pub fn sql(&self) -> String {
        let collate = match &self.collation {
            Some(c) => format!(" COLLATE {c}"),
            None => String::new(),
        };
        format!(
            "SELECT dense_rank() OVER (ORDER BY CAST(v AS {}){collate}) FROM unnest($1::text[]) \
             WITH ORDINALITY AS u(v, i) ORDER BY i",
            self.type_name
        )
    }

    /// Parse, Bind (the values as a binary `text[]`), Execute and Sync.
    pub fn messages(&self) -> Bytes {
        let mut out = BytesMut::new();
        let at = messages::begin(&mut out, b'P');
        out.put_u8(0);
        messages::put_cstr(&mut out, self.sql().as_bytes());
        out.put_i16(1);
        out.put_i32(TEXT_ARRAY);
        messages::finish(&mut out, at);

        let mut array = BytesMut::new();
        array.put_i32(1); // dimensions
        array.put_i32(0); // no NULLs
        array.put_i32(TEXT);
        array.put_i32(self.values.len() as i32);
        array.put_i32(1); // lower bound
        for v in &self.values {
            array.put_i32(v.len() as i32);
            array.put_slice(v);
        }
        let at = messages::begin(&mut out, b'B');
        out.put_slice(b"\0\0");
        out.put_i16(1);
        out.put_i16(1); // binary parameter
        out.put_i16(1);
        out.put_i32(array.len() as i32);
        out.put_slice(&array);
        out.put_i16(0); // text results
        messages::finish(&mut out, at);

        let at = messages::begin(&mut out, b'E');
        out.put_u8(0);
        out.put_i32(0);
        messages::finish(&mut out, at);
        messages::empty(&mut out, b'S');
        out.freeze()
    }

    /// Each value's rank, from the backend's reply (its ErrorResponse, if any, is
    /// the caller's to find first).
    pub fn read(&self, frames: &[Bytes]) -> Result<Vec<u64>, String> {
        let mut ranks = Vec::with_capacity(self.values.len());
        for frame in frames.iter().filter(|f| f.first() == Some(&b'D')) {
            let rank = messages::data_row_values(frame.get(5..).unwrap_or_default())
                .and_then(|v| v.first().copied().flatten())
                .and_then(|v| std::str::from_utf8(v).ok()?.parse::<u64>().ok())
                .ok_or("a malformed rank from the backend")?;
            ranks.push(rank);
        }
        if ranks.len() != self.values.len() {
            return Err("the backend ranked a different number of values".into());
        }
        Ok(ranks)
    }
}

/// A collation name as `pg_collation_for` prints it: identifiers, quoted as
/// needed, maybe schema-qualified (`"de_DE"`, `pg_catalog."C"`, `ucs_basic`).
/// Anything else is refused, so nothing but a name reaches the SQL.
pub(super) fn collation_name(v: &[u8]) -> Option<String> {
    let s = std::str::from_utf8(v).ok()?;
    let mut rest = s;
    loop {
        rest = if let Some(quoted) = rest.strip_prefix('"') {
            let mut end = None;
            let bytes = quoted.as_bytes();
            let mut i = 0;
            while i < bytes.len() {
                if bytes[i] == b'"' {
                    if bytes.get(i + 1) == Some(&b'"') {
                        i += 2;
                        continue;
                    }
                    end = Some(i);
                    break;
                }
                i += 1;
            }
            let end = end?;
            if end == 0 {
                return None;
            }
            &quoted[end + 1..]
        } else {
            let len = rest
                .bytes()
                .take_while(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || *c == b'_')
                .count();
            if len == 0 || rest.as_bytes()[0].is_ascii_digit() {
                return None;
            }
            &rest[len..]
        };
        match rest.strip_prefix('.') {
            Some(next) => rest = next,
            None if rest.is_empty() => return Some(s.to_owned()),
            None => return None,
        }
    }
}

/// Collations under which text sorts as its bytes.
pub(super) fn bytewise(collation: &str) -> bool {
    matches!(
        collation,
        "\"C\"" | "\"POSIX\"" | "pg_catalog.\"C\"" | "pg_catalog.\"POSIX\""
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_collation_names_pass() {
        for ok in [
            "\"C\"",
            "\"default\"",
            "ucs_basic",
            "\"und-x-icu\"",
            "pg_catalog.\"de_DE\"",
            "\"a\"\"b\"",
        ] {
            assert_eq!(collation_name(ok.as_bytes()).as_deref(), Some(ok));
        }
        for bad in [
            "",
            "\"\"",
            "\"C",
            "C; DROP TABLE t",
            "\"C\" x",
            "a.",
            "1x",
            "\"a\"\"",
        ] {
            assert_eq!(collation_name(bad.as_bytes()), None, "{bad:?}");
        }
        assert!(bytewise("\"C\"") && !bytewise("\"default\""));
    }

    #[test]
    fn the_request_carries_every_value_and_reads_ranks() {
        let request = RankRequest::new(
            "text",
            Some("\"und-x-icu\"".into()),
            vec![Bytes::from_static(b"b"), Bytes::from_static(b"A")],
        )
        .unwrap();
        assert!(request
            .sql()
            .contains("ORDER BY CAST(v AS text) COLLATE \"und-x-icu\""));
        let bytes = request.messages();
        let mut at = 0;
        let mut tags = String::new();
        while let Ok(Some(info)) = crate::protocol::next_frame(&bytes[at..]) {
            tags.push(info.tag as char);
            at += info.len;
        }
        assert_eq!(tags, "PBES");
        assert_eq!(at, bytes.len());
        let row = |v: &str| {
            let mut out = BytesMut::new();
            messages::data_row(&mut out, &[v.to_string()]);
            out.freeze()
        };
        assert_eq!(request.read(&[row("2"), row("1")]), Ok(vec![2, 1]));
        assert!(request.read(&[row("2")]).is_err());
        assert!(request.read(&[row("x"), row("1")]).is_err());
        let many = vec![Bytes::from_static(b"x"); limits::RANK_VALUES_MAX + 1];
        assert!(RankRequest::new("text", None, many).is_err());
    }
}
