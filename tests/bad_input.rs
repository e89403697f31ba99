//! Malformed and hostile clients get an ErrorResponse where the protocol allows and a
//! closed connection, and the proxy keeps serving everyone else.

mod common;

use std::net::SocketAddr;
use std::time::Duration;

use common::{demo, start_proxy, Proxy};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

fn proxy() -> &'static Proxy {
    static PROXY: std::sync::OnceLock<Proxy> = std::sync::OnceLock::new();
    PROXY.get_or_init(|| {
        let users = "startup_timeout_ms = 500\n[[users]]\nname = \"t\"\nauth = \"trust\"\n";
        start_proxy(demo(1, 4), "bad-input", users)
    })
}

fn startup_packet(user: &str) -> Vec<u8> {
    let mut body = 196_608i32.to_be_bytes().to_vec();
    for s in ["user", user, "database", common::DATABASE] {
        body.extend_from_slice(s.as_bytes());
        body.push(0);
    }
    body.push(0);
    let mut out = ((body.len() + 4) as i32).to_be_bytes().to_vec();
    out.extend_from_slice(&body);
    out
}

/// Everything the proxy sends until it closes the connection (or 5 s pass).
async fn read_to_close(stream: &mut TcpStream) -> (Vec<u8>, bool) {
    let mut out = Vec::new();
    let read = tokio::time::timeout(Duration::from_secs(5), stream.read_to_end(&mut out)).await;
    (out, read.is_ok())
}

/// The tags of the messages in `bytes`, and the SQLSTATE of the first ErrorResponse.
fn summary(bytes: &[u8]) -> (String, Option<String>) {
    let (mut tags, mut code, mut rest) = (String::new(), None, bytes);
    while rest.len() >= 5 {
        let len = u32::from_be_bytes([rest[1], rest[2], rest[3], rest[4]]) as usize + 1;
        let Some(msg) = rest.get(..len) else { break };
        tags.push(msg[0] as char);
        if msg[0] == b'E' && code.is_none() {
            let fields = &msg[5..];
            let at = fields.windows(1).position(|w| w == b"C").map(|p| p + 1);
            code = at.map(|p| fields[p..p + 5].iter().map(|&b| b as char).collect());
        }
        rest = &rest[len..];
    }
    (tags, code)
}

/// Logs in as the trust user; returns the stream ready for queries.
async fn logged_in(addr: SocketAddr) -> TcpStream {
    let mut stream = TcpStream::connect(addr).await.unwrap();
    stream.write_all(&startup_packet("t")).await.unwrap();
    let mut buf = vec![0u8; 4096];
    let mut got = Vec::new();
    while !got.ends_with(b"Z\0\0\0\x05I") {
        let n = stream.read(&mut buf).await.unwrap();
        assert!(n > 0, "closed during login");
        got.extend_from_slice(&buf[..n]);
    }
    stream
}

/// The proxy still answers a well-behaved client.
async fn still_serving(addr: SocketAddr) {
    let client = common::connect(addr, "t", "", common::DATABASE)
        .await
        .expect("proxy still accepts clients");
    assert_eq!(common::one_i32(&client, "SELECT 1", &[]).await, 1);
}

async fn check(
    setup: impl std::future::Future<Output = TcpStream>,
    send: &[u8],
    expect_tags: &str,
    expect_code: Option<&str>,
) {
    let addr = proxy().addr;
    let mut stream = setup.await;
    stream.write_all(send).await.unwrap();
    let (bytes, closed) = read_to_close(&mut stream).await;
    assert!(closed, "the proxy kept the connection open after {send:?}");
    let (tags, code) = summary(&bytes);
    assert_eq!(tags, expect_tags, "after sending {send:?}");
    assert_eq!(code.as_deref(), expect_code, "after sending {send:?}");
    still_serving(addr).await;
}

#[tokio::test]
async fn garbage_startup_packet() {
    let addr = proxy().addr;
    check(
        async { TcpStream::connect(addr).await.unwrap() },
        b"GET / HTTP/1.1\r\n\r\n",
        "E",
        Some("08P01"),
    )
    .await;
}

#[tokio::test]
async fn startup_length_over_the_limit() {
    let addr = proxy().addr;
    let mut packet = 1_000_000i32.to_be_bytes().to_vec();
    packet.extend_from_slice(&196_608i32.to_be_bytes());
    check(
        async { TcpStream::connect(addr).await.unwrap() },
        &packet,
        "E",
        Some("08P01"),
    )
    .await;
}

#[tokio::test]
async fn message_length_over_the_limit() {
    let addr = proxy().addr;
    check(logged_in(addr), b"Q\x7f\xff\xff\xff", "E", Some("08P01")).await;
}

#[tokio::test]
async fn negative_message_length() {
    let addr = proxy().addr;
    check(logged_in(addr), b"Q\0\0\0\x02", "E", Some("08P01")).await;
}

#[tokio::test]
async fn unknown_message_type() {
    let addr = proxy().addr;
    check(logged_in(addr), b"?\0\0\0\x04", "E", Some("08P01")).await;
}

#[tokio::test]
async fn truncated_message_then_close() {
    let addr = proxy().addr;
    let mut stream = logged_in(addr).await;
    stream.write_all(b"Q\0\0\0\x20SELEC").await.unwrap();
    stream.shutdown().await.unwrap();
    let (bytes, closed) = read_to_close(&mut stream).await;
    assert!(closed, "the proxy kept a half-closed connection open");
    assert_eq!(
        summary(&bytes).0,
        "",
        "nothing can be answered to half a message"
    );
    still_serving(addr).await;
}

#[tokio::test]
async fn malformed_bind_is_a_protocol_error() {
    let addr = proxy().addr;
    // Bind whose statement name never ends.
    check(logged_in(addr), b"B\0\0\0\x07p\0s", "E", Some("08P01")).await;
}

#[tokio::test]
async fn silent_client_is_dropped_after_the_startup_timeout() {
    let addr = proxy().addr;
    check(
        async { TcpStream::connect(addr).await.unwrap() },
        b"",
        "E",
        Some("08P01"),
    )
    .await;
}

#[tokio::test]
async fn client_stuck_in_authentication_is_dropped() {
    let addr = proxy().addr;
    // Half a startup packet, then silence.
    check(
        async { TcpStream::connect(addr).await.unwrap() },
        &startup_packet("t")[..6],
        "E",
        Some("08P01"),
    )
    .await;
}
