//! Framing of regular messages: a one-byte tag, a four-byte big-endian length that
//! counts itself, then the payload.

use crate::limits::MESSAGE_BYTES_MAX;

/// Where one complete message sits at the start of a buffer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FrameInfo {
    pub tag: u8,
    /// Whole message length in bytes, tag included.
    pub len: usize,
}

impl FrameInfo {
    /// Range of the payload inside the frame (after tag and length).
    pub fn payload(&self) -> std::ops::Range<usize> {
        5..self.len
    }
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum FrameError {
    #[error("invalid message length {0}")]
    BadLength(i64),
    #[error("message length {0} exceeds the limit of {MESSAGE_BYTES_MAX} bytes")]
    TooLong(usize),
}

/// Looks at the start of `buf`: `Ok(Some(info))` when a whole message is there,
/// `Ok(None)` when more bytes are needed.
pub fn next_frame(buf: &[u8]) -> Result<Option<FrameInfo>, FrameError> {
    if buf.len() < 5 {
        return Ok(None);
    }
    let declared = i32::from_be_bytes([buf[1], buf[2], buf[3], buf[4]]);
    if declared < 4 {
        return Err(FrameError::BadLength(declared.into()));
    }
    let len = declared as usize + 1;
    if len > MESSAGE_BYTES_MAX {
        return Err(FrameError::TooLong(len));
    }
    if buf.len() < len {
        return Ok(None);
    }
    Ok(Some(FrameInfo { tag: buf[0], len }))
}

/// Reads a NUL-terminated string at the start of `buf`; returns it and the rest.
pub fn cstr(buf: &[u8]) -> Option<(&[u8], &[u8])> {
    let nul = buf.iter().position(|&b| b == 0)?;
    Some((&buf[..nul], &buf[nul + 1..]))
}

/// Reads a big-endian i16 at the start of `buf`.
pub fn read_i16(buf: &[u8]) -> Option<(i16, &[u8])> {
    let bytes: [u8; 2] = buf.get(..2)?.try_into().ok()?;
    Some((i16::from_be_bytes(bytes), &buf[2..]))
}

/// Reads a big-endian i32 at the start of `buf`.
pub fn read_i32(buf: &[u8]) -> Option<(i32, &[u8])> {
    let bytes: [u8; 4] = buf.get(..4)?.try_into().ok()?;
    Some((i32::from_be_bytes(bytes), &buf[4..]))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn check(input: &[u8], expect: Result<Option<FrameInfo>, FrameError>) {
        assert_eq!(next_frame(input), expect, "input {input:?}");
    }

    #[test]
    fn framing() {
        check(b"", Ok(None));
        check(b"Q\0\0", Ok(None));
        check(b"Q\0\0\0\x04", Ok(Some(FrameInfo { tag: b'Q', len: 5 })));
        check(b"Q\0\0\0\x06a", Ok(None));
        check(
            b"Q\0\0\0\x06a\0rest",
            Ok(Some(FrameInfo { tag: b'Q', len: 7 })),
        );
        check(b"Q\0\0\0\x03", Err(FrameError::BadLength(3)));
        check(b"Q\xff\xff\xff\xff", Err(FrameError::BadLength(-1)));
        check(
            b"Q\x7f\xff\xff\xff",
            Err(FrameError::TooLong(0x7fff_ffff + 1)),
        );
    }

    #[test]
    fn readers_never_panic_on_short_input() {
        assert_eq!(cstr(b"abc"), None);
        assert_eq!(cstr(b"ab\0c"), Some((&b"ab"[..], &b"c"[..])));
        assert_eq!(read_i16(b"\x01"), None);
        assert_eq!(read_i32(b"\0\0\0\x05x"), Some((5, &b"x"[..])));
    }
}
