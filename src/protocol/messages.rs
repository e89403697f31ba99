//! Builders for the messages pgshard writes itself, and decoders for the few server
//! messages it inspects. Builders append to a caller's buffer so nothing allocates per
//! message once buffers are warm.

use bytes::{BufMut, BytesMut};

use super::frame::{cstr, read_i16, read_i32};

/// Starts a tagged message; pass the returned offset to [`finish`].
pub fn begin(buf: &mut BytesMut, tag: u8) -> usize {
    buf.put_u8(tag);
    let at = buf.len();
    buf.put_i32(0);
    at
}

/// Patches the length of a message started by [`begin`].
pub fn finish(buf: &mut BytesMut, at: usize) {
    let len = (buf.len() - at) as i32;
    buf[at..at + 4].copy_from_slice(&len.to_be_bytes());
}

pub fn put_cstr(buf: &mut BytesMut, s: &[u8]) {
    buf.put_slice(s);
    buf.put_u8(0);
}

fn auth(buf: &mut BytesMut, code: i32, data: &[u8]) {
    let at = begin(buf, b'R');
    buf.put_i32(code);
    buf.put_slice(data);
    finish(buf, at);
}

pub fn authentication_ok(buf: &mut BytesMut) {
    auth(buf, 0, &[]);
}

pub fn authentication_md5(buf: &mut BytesMut, salt: [u8; 4]) {
    auth(buf, 5, &salt);
}

pub fn authentication_sasl(buf: &mut BytesMut, mechanism: &str) {
    let mut data = Vec::with_capacity(mechanism.len() + 2);
    data.extend_from_slice(mechanism.as_bytes());
    data.extend_from_slice(&[0, 0]);
    auth(buf, 10, &data);
}

pub fn authentication_sasl_continue(buf: &mut BytesMut, data: &[u8]) {
    auth(buf, 11, data);
}

pub fn authentication_sasl_final(buf: &mut BytesMut, data: &[u8]) {
    auth(buf, 12, data);
}

pub fn parameter_status(buf: &mut BytesMut, name: &str, value: &str) {
    let at = begin(buf, b'S');
    put_cstr(buf, name.as_bytes());
    put_cstr(buf, value.as_bytes());
    finish(buf, at);
}

pub fn backend_key_data(buf: &mut BytesMut, pid: i32, secret: i32) {
    let at = begin(buf, b'K');
    buf.put_i32(pid);
    buf.put_i32(secret);
    finish(buf, at);
}

pub fn ready_for_query(buf: &mut BytesMut, status: u8) {
    let at = begin(buf, b'Z');
    buf.put_u8(status);
    finish(buf, at);
}

/// An empty-payload message such as ParseComplete ('1'), BindComplete ('2'),
/// CloseComplete ('3'), NoData ('n'), EmptyQueryResponse ('I').
pub fn empty(buf: &mut BytesMut, tag: u8) {
    let at = begin(buf, tag);
    finish(buf, at);
}

/// ErrorResponse ('E') or NoticeResponse ('N').
pub fn error_fields(buf: &mut BytesMut, tag: u8, severity: &str, code: &str, message: &str) {
    let at = begin(buf, tag);
    for (field, value) in [
        (b'S', severity),
        (b'V', severity),
        (b'C', code),
        (b'M', message),
    ] {
        buf.put_u8(field);
        put_cstr(buf, value.as_bytes());
    }
    buf.put_u8(0);
    finish(buf, at);
}

pub fn error_response(buf: &mut BytesMut, code: &str, message: &str) {
    error_fields(buf, b'E', "ERROR", code, message);
}

pub fn fatal_response(buf: &mut BytesMut, code: &str, message: &str) {
    error_fields(buf, b'E', "FATAL", code, message);
}

/// RowDescription with text columns only (used by the admin console).
pub fn row_description(buf: &mut BytesMut, columns: &[&str]) {
    const TEXT_OID: i32 = 25;
    let at = begin(buf, b'T');
    buf.put_i16(columns.len() as i16);
    for name in columns {
        put_cstr(buf, name.as_bytes());
        buf.put_i32(0); // table oid
        buf.put_i16(0); // column number
        buf.put_i32(TEXT_OID);
        buf.put_i16(-1); // type size
        buf.put_i32(-1); // type modifier
        buf.put_i16(0); // text format
    }
    finish(buf, at);
}

pub fn data_row(buf: &mut BytesMut, values: &[String]) {
    let at = begin(buf, b'D');
    buf.put_i16(values.len() as i16);
    for value in values {
        buf.put_i32(value.len() as i32);
        buf.put_slice(value.as_bytes());
    }
    finish(buf, at);
}

pub fn command_complete(buf: &mut BytesMut, tag: &str) {
    let at = begin(buf, b'C');
    put_cstr(buf, tag.as_bytes());
    finish(buf, at);
}

/// A simple Query message (frontend).
pub fn query(buf: &mut BytesMut, sql: &str) {
    let at = begin(buf, b'Q');
    put_cstr(buf, sql.as_bytes());
    finish(buf, at);
}

pub fn terminate(buf: &mut BytesMut) {
    empty(buf, b'X');
}

/// The fields of an ErrorResponse or NoticeResponse that pgshard looks at.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct ErrorFields {
    pub severity: String,
    pub code: String,
    pub message: String,
}

/// Decodes an ErrorResponse/NoticeResponse payload; `None` when malformed.
pub fn parse_error_fields(mut payload: &[u8]) -> Option<ErrorFields> {
    let mut out = ErrorFields::default();
    loop {
        let (&field, rest) = payload.split_first()?;
        if field == 0 {
            return Some(out);
        }
        let (value, rest) = cstr(rest)?;
        let value = String::from_utf8_lossy(value).into_owned();
        match field {
            b'V' => out.severity = value,
            b'S' if out.severity.is_empty() => out.severity = value,
            b'C' => out.code = value,
            b'M' => out.message = value,
            _ => {}
        }
        payload = rest;
    }
}

/// Reads the statement name and query text of a Parse payload.
pub fn parse_message(payload: &[u8]) -> Option<(&[u8], &[u8], &[u8])> {
    let (name, rest) = cstr(payload)?;
    let (query, types) = cstr(rest)?;
    let (count, params) = read_i16(types)?;
    if count < 0 || params.len() != count as usize * 4 {
        return None;
    }
    Some((name, query, types))
}

/// Reads the portal and statement names at the start of a Bind payload; returns
/// them and the offset where the rest (formats, parameters) starts.
pub fn bind_names(payload: &[u8]) -> Option<(&[u8], &[u8], usize)> {
    let (portal, rest) = cstr(payload)?;
    let (statement, rest) = cstr(rest)?;
    Some((portal, statement, payload.len() - rest.len()))
}

/// A Bind parameter: its format code (0 text, 1 binary) and value (`None`: NULL).
pub type BindParam<'a> = (i16, Option<&'a [u8]>);

/// Reads the parameters of a Bind payload from `rest_at` (see `bind_names`).
pub fn bind_params(payload: &[u8], rest_at: usize) -> Option<Vec<BindParam<'_>>> {
    let rest = payload.get(rest_at..)?;
    let (format_count, mut rest) = read_i16(rest)?;
    let mut formats = Vec::with_capacity(usize::try_from(format_count).ok()?);
    for _ in 0..format_count {
        let (format, after) = read_i16(rest)?;
        formats.push(format);
        rest = after;
    }
    let (count, mut rest) = read_i16(rest)?;
    let count = usize::try_from(count).ok()?;
    // One format applies to all; none means text.
    let format_of = |i: usize| match formats.len() {
        0 => Some(0),
        1 => Some(formats[0]),
        n if n == count => Some(formats[i]),
        _ => None,
    };
    let mut params = Vec::with_capacity(count);
    for i in 0..count {
        let (len, after) = read_i32(rest)?;
        let value = if len < 0 {
            rest = after;
            None
        } else {
            let len = usize::try_from(len).ok()?;
            let value = after.get(..len)?;
            rest = &after[len..];
            Some(value)
        };
        params.push((format_of(i)?, value));
    }
    Some(params)
}

/// Where a Bind payload's result-format codes start (the offset of their count),
/// and the codes; `rest_at` as from `bind_names`.
pub fn bind_result_formats(payload: &[u8], rest_at: usize) -> Option<(usize, Vec<i16>)> {
    let mut rest = payload.get(rest_at..)?;
    let (format_count, after) = read_i16(rest)?;
    rest = after.get(usize::try_from(format_count).ok()? * 2..)?;
    let (count, mut after) = read_i16(rest)?;
    for _ in 0..count {
        let (len, tail) = read_i32(after)?;
        after = match usize::try_from(len) {
            Ok(len) => tail.get(len..)?,
            Err(_) => tail,
        };
    }
    let at = payload.len() - after.len();
    let (count, mut codes_at) = read_i16(after)?;
    let mut codes = Vec::with_capacity(usize::try_from(count).ok()?);
    for _ in 0..count {
        let (code, tail) = read_i16(codes_at)?;
        codes.push(code);
        codes_at = tail;
    }
    codes_at.is_empty().then_some((at, codes))
}

/// The portal and row limit of an Execute payload.
pub fn execute_message(payload: &[u8]) -> Option<(&[u8], i32)> {
    let (portal, rest) = cstr(payload)?;
    let (max_rows, rest) = read_i32(rest)?;
    rest.is_empty().then_some((portal, max_rows))
}

/// The values of a DataRow payload (`None` for NULL); `None` when malformed.
pub fn data_row_values(payload: &[u8]) -> Option<Vec<Option<&[u8]>>> {
    let (count, mut rest) = read_i16(payload)?;
    let mut values = Vec::with_capacity(usize::try_from(count).ok()?);
    for _ in 0..count {
        let (len, after) = read_i32(rest)?;
        if len < 0 {
            values.push(None);
            rest = after;
            continue;
        }
        let len = usize::try_from(len).ok()?;
        values.push(Some(after.get(..len)?));
        rest = &after[len..];
    }
    Some(values)
}

/// Reads the kind ('S' or 'P') and name of a Describe or Close payload.
pub fn target(payload: &[u8]) -> Option<(u8, &[u8])> {
    let (&kind, rest) = payload.split_first()?;
    let (name, rest) = cstr(rest)?;
    if !rest.is_empty() || !(kind == b'S' || kind == b'P') {
        return None;
    }
    Some((kind, name))
}

/// Reads the authentication request code of an 'R' payload.
pub fn auth_code(payload: &[u8]) -> Option<(i32, &[u8])> {
    read_i32(payload)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::protocol::next_frame;

    #[test]
    fn error_round_trip() {
        let mut buf = BytesMut::new();
        error_response(&mut buf, "28P01", "password authentication failed");
        let info = next_frame(&buf).unwrap().unwrap();
        assert_eq!(info.tag, b'E');
        assert_eq!(info.len, buf.len());
        let fields = parse_error_fields(&buf[info.payload()]).unwrap();
        assert_eq!(fields.code, "28P01");
        assert_eq!(fields.severity, "ERROR");
        assert_eq!(fields.message, "password authentication failed");
    }

    #[test]
    fn decoders_reject_malformed() {
        assert_eq!(parse_error_fields(b"Cabc"), None);
        assert_eq!(parse_message(b"s\0select 1\0\0\x01"), None);
        assert_eq!(
            parse_message(b"s\0select 1\0\0\0"),
            Some((&b"s"[..], &b"select 1"[..], &b"\0\0"[..]))
        );
        assert_eq!(target(b"Sname\0"), Some((b'S', &b"name"[..])));
        assert_eq!(target(b"Xname\0"), None);
        assert_eq!(bind_names(b"p\0s\0rest"), Some((&b"p"[..], &b"s"[..], 4)));
        // One text parameter "ab", then two result formats.
        let bind = b"\0s\0\0\x01\0\0\0\x01\0\0\0\x02ab\0\x02\0\x01\0\0";
        assert_eq!(bind_result_formats(bind, 3), Some((15, vec![1, 0])));
        assert_eq!(bind_result_formats(&bind[..20], 3), None);
        assert_eq!(execute_message(b"p\0\0\0\0\x05"), Some((&b"p"[..], 5)));
        assert_eq!(execute_message(b"p\0\0\0"), None);
    }
}
