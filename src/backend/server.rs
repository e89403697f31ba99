//! One connection to a PostgreSQL server: connect, authenticate (SCRAM-SHA-256, md5,
//! trust, cleartext) and the per-connection state the pool and sessions keep.

use std::collections::HashSet;

use super::stream::ServerStream;
use bytes::BytesMut;
use postgres_protocol::authentication::{md5_hash, sasl};
use postgres_protocol::message::frontend;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use super::dsn::Dsn;
use crate::limits;
use crate::protocol::messages::{self, ErrorFields};
use crate::protocol::next_frame;

#[derive(Debug, thiserror::Error)]
pub enum ServerError {
    #[error("cannot connect to {addr}: {source}")]
    Connect {
        addr: String,
        source: std::io::Error,
    },
    #[error("connecting to {0} timed out")]
    Timeout(String),
    #[error("I/O error: {0}")]
    Io(#[from] std::io::Error),
    #[error("server closed the connection")]
    Closed,
    #[error("protocol error from server: {0}")]
    Protocol(String),
    #[error("authentication with the server failed: {0}")]
    Auth(String),
    #[error("server error {}: {}", .0.code, .0.message)]
    Server(ErrorFields),
}

/// The cancel key of a server connection and where it lives.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CancelKey {
    /// Shared so that recording it per transaction costs no allocation.
    pub addr: std::sync::Arc<str>,
    pub pid: i32,
    pub secret: i32,
}

pub struct ServerConn {
    pub stream: ServerStream,
    pub rbuf: BytesMut,
    /// ParameterStatus values the server sent at startup.
    pub params: Vec<(String, String)>,
    pub cancel: CancelKey,
    /// Global names of the statements prepared on this connection.
    pub prepared: HashSet<u64>,
    /// Fingerprint of the session parameters applied on top of the defaults (0: none).
    pub params_fingerprint: u64,
    /// Set when the connection must not go back to the pool.
    pub broken: bool,
    /// True when the server is idle outside a transaction with nothing outstanding.
    pub idle: bool,
}

impl ServerConn {
    pub async fn connect(dsn: &Dsn) -> Result<ServerConn, ServerError> {
        let addr = dsn.addr();
        let connect = async {
            let stream =
                ServerStream::connect(&addr)
                    .await
                    .map_err(|source| ServerError::Connect {
                        addr: addr.clone(),
                        source,
                    })?;
            handshake(stream, dsn).await
        };
        tokio::time::timeout(limits::SERVER_CONNECT_TIMEOUT, connect)
            .await
            .map_err(|_| ServerError::Timeout(addr.clone()))?
    }

    /// Reads one whole message into `rbuf` (cancel safe: progress stays in `rbuf`).
    pub async fn read_frame(&mut self) -> Result<crate::protocol::FrameInfo, ServerError> {
        read_frame(&mut self.stream, &mut self.rbuf).await
    }

    /// Runs an internal simple query and discards its replies; fails on an error.
    pub async fn execute(&mut self, sql: &str) -> Result<(), ServerError> {
        self.simple(sql).await.map(|_| ())
    }

    /// Runs an internal simple query; returns the first column of its rows (text,
    /// `None` for NULL).
    pub async fn query_column(&mut self, sql: &str) -> Result<Vec<Option<String>>, ServerError> {
        self.simple(sql).await.map(|reply| reply.rows)
    }

    /// Runs an internal simple query. Fails on an error, after reading up to
    /// ReadyForQuery; a failure other than the server's error leaves the connection
    /// marked broken.
    pub async fn simple(&mut self, sql: &str) -> Result<SimpleReply, ServerError> {
        let result = self.run_simple(sql).await;
        if matches!(&result, Err(e) if !matches!(e, ServerError::Server(_))) {
            self.broken = true;
        }
        result
    }

    async fn run_simple(&mut self, sql: &str) -> Result<SimpleReply, ServerError> {
        let mut out = BytesMut::new();
        messages::query(&mut out, sql);
        self.stream.write_all(&out).await?;
        let mut failure = None;
        let mut reply = SimpleReply::default();
        loop {
            let info = self.read_frame().await?;
            let frame = self.rbuf.split_to(info.len);
            let payload = &frame[info.payload()];
            match info.tag {
                b'E' => failure = messages::parse_error_fields(payload),
                b'D' => reply.rows.push(first_column(payload)),
                b'C' => {
                    let tag = payload.strip_suffix(b"\0").unwrap_or(payload);
                    reply.tag = String::from_utf8_lossy(tag).into_owned();
                }
                b'Z' => break,
                _ => {}
            }
        }
        match failure {
            Some(fields) => Err(ServerError::Server(fields)),
            None => Ok(reply),
        }
    }
}

impl ServerConn {
    /// Sends `request` (whole messages ending in Sync or a Query) and returns every
    /// reply frame up to and including ReadyForQuery. A failure leaves the
    /// connection marked broken.
    pub async fn exchange(&mut self, request: &[u8]) -> Result<Vec<bytes::Bytes>, ServerError> {
        let result = self.run_exchange(request).await;
        if result.is_err() {
            self.broken = true;
        }
        result
    }

    async fn run_exchange(&mut self, request: &[u8]) -> Result<Vec<bytes::Bytes>, ServerError> {
        self.stream.write_all(request).await?;
        let mut frames = Vec::new();
        loop {
            let info = self.read_frame().await?;
            let frame = self.rbuf.split_to(info.len).freeze();
            if matches!(info.tag, b'G' | b'H' | b'W') {
                // COPY needs data this caller does not have: end it, and fail.
                let mut fail = BytesMut::new();
                let at = messages::begin(&mut fail, b'f');
                messages::put_cstr(&mut fail, b"COPY is not supported here");
                messages::finish(&mut fail, at);
                self.stream.write_all(&fail).await?;
                self.broken = true;
                return Err(ServerError::Protocol("unexpected COPY".into()));
            }
            let done = info.tag == b'Z';
            frames.push(frame);
            if done {
                return Ok(frames);
            }
        }
    }
}

/// How a COPY step on a server ended.
pub enum CopyStep {
    /// CopyInResponse or CopyOutResponse: the COPY runs (the frame).
    Started(bytes::Bytes),
    /// CommandComplete's tag, read up to ReadyForQuery.
    Done(String),
    /// The server's ErrorResponse, read up to ReadyForQuery.
    Failed(bytes::Bytes),
}

impl ServerConn {
    /// Sends `request` and reads until the COPY starts, or ends (ReadyForQuery).
    /// CopyData is not expected here. A failure leaves the connection broken.
    pub async fn copy_step(&mut self, request: &[u8]) -> Result<CopyStep, ServerError> {
        let result = self.run_copy_step(request).await;
        if result.is_err() {
            self.broken = true;
        }
        result
    }

    async fn run_copy_step(&mut self, request: &[u8]) -> Result<CopyStep, ServerError> {
        self.stream.write_all(request).await?;
        let mut tag = String::new();
        let mut error = None;
        loop {
            let info = self.read_frame().await?;
            let frame = self.rbuf.split_to(info.len).freeze();
            match info.tag {
                b'G' | b'H' => return Ok(CopyStep::Started(frame)),
                b'E' => error = Some(frame),
                b'C' => {
                    let payload = &frame[5..];
                    let text = payload.strip_suffix(b"\0").unwrap_or(payload);
                    tag = String::from_utf8_lossy(text).into_owned();
                }
                b'Z' => {
                    return Ok(match error {
                        Some(e) => CopyStep::Failed(e),
                        None => CopyStep::Done(tag),
                    })
                }
                b'N' | b'S' | b'A' => {}
                other => {
                    let what = format!("unexpected message {} during COPY", other as char);
                    return Err(ServerError::Protocol(what));
                }
            }
        }
    }
}

/// What an internal simple query returned.
#[derive(Debug, Default)]
pub struct SimpleReply {
    /// The first column of each row.
    pub rows: Vec<Option<String>>,
    /// The last CommandComplete tag.
    pub tag: String,
}

/// The first value of a DataRow payload, as text.
fn first_column(payload: &[u8]) -> Option<String> {
    let value = (*messages::data_row_values(payload)?.first()?)?;
    Some(String::from_utf8_lossy(value).into_owned())
}

async fn read_frame(
    stream: &mut ServerStream,
    buf: &mut BytesMut,
) -> Result<crate::protocol::FrameInfo, ServerError> {
    loop {
        match next_frame(buf) {
            Ok(Some(info)) => return Ok(info),
            Ok(None) => {}
            Err(e) => return Err(ServerError::Protocol(e.to_string())),
        }
        if stream.read_buf(buf).await? == 0 {
            return Err(ServerError::Closed);
        }
    }
}

async fn handshake(mut stream: ServerStream, dsn: &Dsn) -> Result<ServerConn, ServerError> {
    let mut out = BytesMut::new();
    let params = [
        ("user", dsn.user.as_str()),
        ("database", dsn.database.as_str()),
    ];
    frontend::startup_message(params.iter().copied(), &mut out)?;
    stream.write_all(&out).await?;
    let mut rbuf = BytesMut::with_capacity(limits::BUFFER_BYTES_INITIAL);
    let mut scram: Option<sasl::ScramSha256> = None;
    let mut server_params = Vec::new();
    let mut key = (0, 0);
    loop {
        let info = read_frame(&mut stream, &mut rbuf).await?;
        let frame = rbuf.split_to(info.len);
        let payload = &frame[info.payload()];
        match info.tag {
            b'R' => {
                out.clear();
                authenticate(payload, dsn, &mut scram, &mut out)?;
                stream.write_all(&out).await?;
            }
            b'S' => {
                let mut parts = payload.split(|&b| b == 0);
                let name = parts.next().unwrap_or_default();
                let value = parts.next().unwrap_or_default();
                server_params.push((
                    String::from_utf8_lossy(name).into_owned(),
                    String::from_utf8_lossy(value).into_owned(),
                ));
            }
            b'K' if payload.len() == 8 => {
                key.0 = i32::from_be_bytes([payload[0], payload[1], payload[2], payload[3]]);
                key.1 = i32::from_be_bytes([payload[4], payload[5], payload[6], payload[7]]);
            }
            b'E' => {
                let fields = messages::parse_error_fields(payload).unwrap_or_default();
                return Err(ServerError::Server(fields));
            }
            b'Z' => break,
            b'N' => {}
            tag => {
                return Err(ServerError::Protocol(format!(
                    "unexpected message '{}' at startup",
                    tag as char
                )))
            }
        }
    }
    Ok(ServerConn {
        stream,
        rbuf,
        params: server_params,
        cancel: CancelKey {
            addr: dsn.addr().into(),
            pid: key.0,
            secret: key.1,
        },
        prepared: HashSet::new(),
        params_fingerprint: 0,
        broken: false,
        idle: true,
    })
}

/// Answers one authentication request; writes the reply (if any) to `out`.
fn authenticate(
    payload: &[u8],
    dsn: &Dsn,
    scram: &mut Option<sasl::ScramSha256>,
    out: &mut BytesMut,
) -> Result<(), ServerError> {
    let (code, data) = messages::auth_code(payload)
        .ok_or_else(|| ServerError::Protocol("short authentication request".into()))?;
    let password = dsn.password.as_bytes();
    match code {
        0 => {}
        3 => frontend::password_message(password, out)?,
        5 => {
            let salt: [u8; 4] = data
                .try_into()
                .map_err(|_| ServerError::Protocol("md5 salt is not 4 bytes".into()))?;
            let hash = md5_hash(dsn.user.as_bytes(), password, salt);
            frontend::password_message(hash.as_bytes(), out)?;
        }
        10 => {
            let offers_scram = data
                .split(|&b| b == 0)
                .any(|m| m == sasl::SCRAM_SHA_256.as_bytes());
            if !offers_scram {
                return Err(ServerError::Auth("server offers no SCRAM-SHA-256".into()));
            }
            let client = sasl::ScramSha256::new(password, sasl::ChannelBinding::unsupported());
            frontend::sasl_initial_response(sasl::SCRAM_SHA_256, client.message(), out)?;
            *scram = Some(client);
        }
        11 => {
            let client = scram
                .as_mut()
                .ok_or_else(|| ServerError::Protocol("SASL continue out of order".into()))?;
            client
                .update(data)
                .map_err(|e| ServerError::Auth(e.to_string()))?;
            frontend::sasl_response(client.message(), out)?;
        }
        12 => {
            let mut client = scram
                .take()
                .ok_or_else(|| ServerError::Protocol("SASL final out of order".into()))?;
            client
                .finish(data)
                .map_err(|e| ServerError::Auth(e.to_string()))?;
        }
        other => {
            return Err(ServerError::Auth(format!(
                "unsupported authentication method {other}"
            )))
        }
    }
    Ok(())
}

/// Sends a CancelRequest for `key` on a fresh connection, as PostgreSQL expects.
pub async fn cancel(key: &CancelKey) -> Result<(), ServerError> {
    let mut stream =
        ServerStream::connect(&key.addr)
            .await
            .map_err(|source| ServerError::Connect {
                addr: key.addr.to_string(),
                source,
            })?;
    let mut out = BytesMut::new();
    frontend::cancel_request(key.pid, key.secret, &mut out);
    stream.write_all(&out).await?;
    // PostgreSQL closes the connection once it has read the request.
    let mut sink = [0u8; 1];
    let _ = tokio::time::timeout(limits::SERVER_CONNECT_TIMEOUT, stream.read(&mut sink)).await;
    Ok(())
}
