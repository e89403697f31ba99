//! The wire protocol by hand, for message sequences drivers do not produce:
//! messages built one by one, and a client that sends them and reads the replies.

use std::net::SocketAddr;
use std::time::Duration;

use super::DATABASE;

pub fn parse(name: &str, sql: &str) -> Vec<u8> {
    let mut p = format!("{name}\0{sql}\0").into_bytes();
    p.extend_from_slice(&0i16.to_be_bytes());
    message(b'P', &p)
}

/// Bind of `statement` to the unnamed portal, no parameters, text results.
pub fn bind(statement: &str) -> Vec<u8> {
    bind_text(statement, &[])
}

/// Bind of `statement` to the unnamed portal with text parameters.
pub fn bind_text(statement: &str, params: &[&str]) -> Vec<u8> {
    let mut p = format!("\0{statement}\0").into_bytes();
    p.extend_from_slice(&0i16.to_be_bytes());
    p.extend_from_slice(&(params.len() as i16).to_be_bytes());
    for value in params {
        p.extend_from_slice(&(value.len() as i32).to_be_bytes());
        p.extend_from_slice(value.as_bytes());
    }
    p.extend_from_slice(&0i16.to_be_bytes());
    message(b'B', &p)
}

pub fn execute() -> Vec<u8> {
    let mut p = vec![0u8];
    p.extend_from_slice(&0i32.to_be_bytes());
    message(b'E', &p)
}

pub fn sync() -> Vec<u8> {
    message(b'S', &[])
}

/// Describe of the unnamed portal.
pub fn describe_portal() -> Vec<u8> {
    message(b'D', b"P\0")
}

pub fn query(sql: &str) -> Vec<u8> {
    message(b'Q', format!("{sql}\0").as_bytes())
}

/// Messages concatenated, to send in one write.
pub fn batch(parts: &[Vec<u8>]) -> Vec<u8> {
    parts.concat()
}

/// A client speaking the wire protocol by hand, for message sequences drivers
/// do not produce.
pub struct RawClient {
    stream: tokio::net::TcpStream,
    buf: Vec<u8>,
}

/// Builds one tagged message.
pub fn message(tag: u8, payload: &[u8]) -> Vec<u8> {
    let mut out = vec![tag];
    out.extend_from_slice(&((payload.len() + 4) as i32).to_be_bytes());
    out.extend_from_slice(payload);
    out
}

impl RawClient {
    /// Connects and logs in as a `trust` user.
    pub async fn login(addr: SocketAddr, user: &str) -> RawClient {
        let mut body = 196_608i32.to_be_bytes().to_vec();
        for s in ["user", user, "database", DATABASE] {
            body.extend_from_slice(s.as_bytes());
            body.push(0);
        }
        body.push(0);
        let mut packet = ((body.len() + 4) as i32).to_be_bytes().to_vec();
        packet.extend_from_slice(&body);
        let stream = tokio::net::TcpStream::connect(addr).await.expect("connect");
        let mut client = RawClient {
            stream,
            buf: Vec::new(),
        };
        client.send(&packet).await;
        let replies = client.until_ready().await;
        assert!(
            replies.iter().any(|(tag, _)| *tag == b'R'),
            "no authentication reply: {replies:?}"
        );
        client
    }

    pub async fn send(&mut self, bytes: &[u8]) {
        use tokio::io::AsyncWriteExt;
        self.stream.write_all(bytes).await.expect("send");
    }

    /// Messages up to and including the next ReadyForQuery.
    pub async fn until_ready(&mut self) -> Vec<(u8, Vec<u8>)> {
        use tokio::io::AsyncReadExt;
        let mut out = Vec::new();
        loop {
            while self.buf.len() >= 5 {
                let len = u32::from_be_bytes([self.buf[1], self.buf[2], self.buf[3], self.buf[4]])
                    as usize
                    + 1;
                if self.buf.len() < len {
                    break;
                }
                let msg: Vec<u8> = self.buf.drain(..len).collect();
                let tag = msg[0];
                out.push((tag, msg[5..].to_vec()));
                if tag == b'Z' {
                    return out;
                }
            }
            let mut chunk = [0u8; 8192];
            let read =
                tokio::time::timeout(Duration::from_secs(10), self.stream.read(&mut chunk)).await;
            let n = read.expect("reply within 10 s").expect("read");
            assert!(n > 0, "connection closed; got so far: {out:?}");
            self.buf.extend_from_slice(&chunk[..n]);
        }
    }
}

/// The text of the first column of the first DataRow in `replies`.
pub fn first_value(replies: &[(u8, Vec<u8>)]) -> Option<String> {
    let (_, row) = replies.iter().find(|(tag, _)| *tag == b'D')?;
    let len = i32::from_be_bytes([row[2], row[3], row[4], row[5]]);
    (len >= 0).then(|| String::from_utf8_lossy(&row[6..6 + len as usize]).into_owned())
}
