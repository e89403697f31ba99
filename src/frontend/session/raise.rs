//! Refusing a statement inside a transaction the way PostgreSQL fails one: the
//! server runs a statement that raises the refusal, so its transaction fails with
//! it and the client's and the server's transaction status stay alike.

use bytes::{Bytes, BytesMut};

use crate::protocol::messages;

/// SQL that makes the server raise `message` (SQLSTATE 0A000), so that the server's
/// transaction fails the way the client is told it did. The body is an ordinary
/// string literal (quotes doubled twice over), never a dollar-quoted one that the
/// message could close.
fn raise_sql(message: &str) -> String {
    let inner = format!(
        "BEGIN RAISE EXCEPTION USING ERRCODE = '0A000', MESSAGE = '{}'; END",
        message.replace('\'', "''")
    );
    format!("DO '{}'", inner.replace('\'', "''"))
}

/// A Query running `raise_sql`.
pub(super) fn raise_query(message: &str) -> Bytes {
    let mut out = BytesMut::new();
    messages::query(&mut out, &raise_sql(message));
    out.freeze()
}

/// Parse (unnamed), Bind (unnamed portal) and Execute running `raise_sql`.
pub(super) fn raise_messages(message: &str) -> (Bytes, Bytes, Bytes) {
    let mut parse = BytesMut::new();
    let at = messages::begin(&mut parse, b'P');
    parse.extend_from_slice(b"\0");
    messages::put_cstr(&mut parse, raise_sql(message).as_bytes());
    parse.extend_from_slice(&0i16.to_be_bytes());
    messages::finish(&mut parse, at);
    let mut bind = BytesMut::new();
    let at = messages::begin(&mut bind, b'B');
    bind.extend_from_slice(b"\0\0");
    for _ in 0..3 {
        bind.extend_from_slice(&0i16.to_be_bytes());
    }
    messages::finish(&mut bind, at);
    let mut execute = BytesMut::new();
    let at = messages::begin(&mut execute, b'E');
    execute.extend_from_slice(b"\0");
    execute.extend_from_slice(&0i32.to_be_bytes());
    messages::finish(&mut execute, at);
    (parse.freeze(), bind.freeze(), execute.freeze())
}
