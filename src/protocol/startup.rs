//! The untagged first packet of a connection: StartupMessage, SSLRequest,
//! GSSENCRequest or CancelRequest.

use super::frame::cstr;
use crate::limits::STARTUP_BYTES_MAX;

const PROTOCOL_3_0: i32 = 196_608;
const CANCEL_REQUEST: i32 = 80_877_102;
const SSL_REQUEST: i32 = 80_877_103;
const GSSENC_REQUEST: i32 = 80_877_104;

#[derive(Debug, PartialEq, Eq)]
pub enum StartupPacket {
    Startup(Vec<(String, String)>),
    SslRequest,
    GssEncRequest,
    Cancel { pid: i32, secret: i32 },
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum StartupError {
    #[error("invalid length of startup packet")]
    BadLength,
    #[error("unsupported frontend protocol {0}.{1}: server supports 3.0")]
    UnsupportedProtocol(i32, i32),
    #[error("invalid startup packet layout: expected terminator as last byte")]
    Malformed,
    #[error("startup packet is not valid UTF-8")]
    NotUtf8,
}

/// Returns the packet and its length when a whole one is in `buf`.
pub fn parse(buf: &[u8]) -> Result<Option<(StartupPacket, usize)>, StartupError> {
    if buf.len() < 4 {
        return Ok(None);
    }
    let len = i32::from_be_bytes([buf[0], buf[1], buf[2], buf[3]]);
    if !(8..=STARTUP_BYTES_MAX as i32).contains(&len) {
        return Err(StartupError::BadLength);
    }
    let len = len as usize;
    if buf.len() < len {
        return Ok(None);
    }
    let code = i32::from_be_bytes([buf[4], buf[5], buf[6], buf[7]]);
    let body = &buf[8..len];
    let packet = match code {
        SSL_REQUEST if body.is_empty() => StartupPacket::SslRequest,
        GSSENC_REQUEST if body.is_empty() => StartupPacket::GssEncRequest,
        CANCEL_REQUEST if body.len() == 8 => StartupPacket::Cancel {
            pid: i32::from_be_bytes([body[0], body[1], body[2], body[3]]),
            secret: i32::from_be_bytes([body[4], body[5], body[6], body[7]]),
        },
        PROTOCOL_3_0 => StartupPacket::Startup(parameters(body)?),
        SSL_REQUEST | GSSENC_REQUEST | CANCEL_REQUEST => return Err(StartupError::BadLength),
        other => {
            return Err(StartupError::UnsupportedProtocol(
                other >> 16,
                other & 0xffff,
            ))
        }
    };
    Ok(Some((packet, len)))
}

fn parameters(mut body: &[u8]) -> Result<Vec<(String, String)>, StartupError> {
    let mut out = Vec::new();
    loop {
        match body {
            [0] => return Ok(out),
            [] => return Err(StartupError::Malformed),
            _ => {}
        }
        let (name, rest) = cstr(body).ok_or(StartupError::Malformed)?;
        let (value, rest) = cstr(rest).ok_or(StartupError::Malformed)?;
        let name = std::str::from_utf8(name).map_err(|_| StartupError::NotUtf8)?;
        let value = std::str::from_utf8(value).map_err(|_| StartupError::NotUtf8)?;
        out.push((name.to_owned(), value.to_owned()));
        body = rest;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn packet(code: i32, body: &[u8]) -> Vec<u8> {
        let mut out = ((body.len() + 8) as i32).to_be_bytes().to_vec();
        out.extend_from_slice(&code.to_be_bytes());
        out.extend_from_slice(body);
        out
    }

    fn check(input: &[u8], expect: Result<Option<StartupPacket>, StartupError>) {
        let got = parse(input).map(|o| o.map(|(p, _)| p));
        assert_eq!(got, expect, "input {input:?}");
    }

    #[test]
    fn packets() {
        check(
            &packet(SSL_REQUEST, b""),
            Ok(Some(StartupPacket::SslRequest)),
        );
        check(
            &packet(GSSENC_REQUEST, b""),
            Ok(Some(StartupPacket::GssEncRequest)),
        );
        check(
            &packet(CANCEL_REQUEST, &[0, 0, 0, 7, 0, 0, 0, 9]),
            Ok(Some(StartupPacket::Cancel { pid: 7, secret: 9 })),
        );
        check(
            &packet(PROTOCOL_3_0, b"user\0bob\0database\0db\0\0"),
            Ok(Some(StartupPacket::Startup(vec![
                ("user".into(), "bob".into()),
                ("database".into(), "db".into()),
            ]))),
        );
        check(
            &packet(PROTOCOL_3_0, b"user\0bob\0"),
            Err(StartupError::Malformed),
        );
        check(
            &packet(PROTOCOL_3_0, b"user\0bob"),
            Err(StartupError::Malformed),
        );
        check(&packet(PROTOCOL_3_0, b""), Err(StartupError::Malformed));
        check(
            &packet(0x0002_0000, b"\0"),
            Err(StartupError::UnsupportedProtocol(2, 0)),
        );
        check(&packet(CANCEL_REQUEST, b"\0"), Err(StartupError::BadLength));
        check(b"\0\0\0\x03abcd", Err(StartupError::BadLength));
        check(b"\x7f\0\0\0", Err(StartupError::BadLength));
        check(b"\0\0\0\x10\0\x03", Ok(None));
        check(b"GET / HTTP/1.1\r\n", Err(StartupError::BadLength));
    }
}
