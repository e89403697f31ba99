//! Rows streamed from one backend to another with COPY: the source's CopyData
//! messages go to the target as they are (same text format both ways), never
//! decoded.

use bytes::BytesMut;
use tokio::io::AsyncWriteExt;

use crate::backend::server::{CopyStep, ServerConn, ServerError};
use crate::protocol::messages;

/// Bytes gathered before they are written to the target.
const BATCH_BYTES: usize = 256 * 1024;

#[derive(Debug, thiserror::Error)]
pub enum CopyError {
    #[error("on the source: {0}")]
    Source(String),
    #[error("on the target: {0}")]
    Target(String),
}

impl From<ServerError> for CopyError {
    fn from(e: ServerError) -> Self {
        CopyError::Source(e.to_string())
    }
}

/// Runs `out_sql` (a `COPY ... TO STDOUT`) on `from` and feeds its rows to `in_sql`
/// (a `COPY ... FROM STDIN`) on `to`. Returns the rows copied.
pub async fn copy_rows(
    from: &mut ServerConn,
    to: &mut ServerConn,
    out_sql: &str,
    in_sql: &str,
) -> Result<u64, CopyError> {
    let target = |e: ServerError| CopyError::Target(e.to_string());
    let mut request = BytesMut::new();
    messages::query(&mut request, in_sql);
    match to.copy_step(&request).await.map_err(target)? {
        CopyStep::Started(_) => {}
        CopyStep::Done(tag) => return Err(CopyError::Target(format!("no COPY started ({tag})"))),
        CopyStep::Failed(frame) => return Err(CopyError::Target(error_text(&frame))),
    }
    let streamed = stream(from, to, out_sql).await;
    let mut end = BytesMut::new();
    match &streamed {
        Ok(()) => messages::empty(&mut end, b'c'),
        Err(e) => {
            let at = messages::begin(&mut end, b'f');
            messages::put_cstr(&mut end, e.to_string().as_bytes());
            messages::finish(&mut end, at);
        }
    }
    to.stream
        .write_all(&end)
        .await
        .map_err(|e| target(e.into()))?;
    let tag = finish(to).await.map_err(CopyError::Target);
    streamed?;
    let tag = tag?;
    Ok(tag
        .strip_prefix("COPY ")
        .and_then(|n| n.parse().ok())
        .unwrap_or(0))
}

/// The source's rows, written to the target as they come.
async fn stream(
    from: &mut ServerConn,
    to: &mut ServerConn,
    out_sql: &str,
) -> Result<(), CopyError> {
    let mut request = BytesMut::new();
    messages::query(&mut request, out_sql);
    from.stream
        .write_all(&request)
        .await
        .map_err(ServerError::from)?;
    let mut batch = BytesMut::with_capacity(BATCH_BYTES);
    let mut failure = None;
    loop {
        let info = from.read_frame().await?;
        let frame = from.rbuf.split_to(info.len);
        match info.tag {
            b'd' => {
                batch.extend_from_slice(&frame);
                if batch.len() >= BATCH_BYTES {
                    write_to(to, &mut batch).await?;
                }
            }
            b'E' => failure = Some(error_text(&frame)),
            b'Z' => break,
            // CopyOutResponse, CopyDone, CommandComplete, notices.
            _ => {}
        }
    }
    write_to(to, &mut batch).await?;
    match failure {
        Some(e) => Err(CopyError::Source(e)),
        None => Ok(()),
    }
}

async fn write_to(to: &mut ServerConn, batch: &mut BytesMut) -> Result<(), CopyError> {
    if !batch.is_empty() {
        to.stream
            .write_all(batch)
            .await
            .map_err(|e| CopyError::Target(e.to_string()))?;
        batch.clear();
    }
    Ok(())
}

/// Reads the target's replies to the end of its COPY: its tag, or its error.
async fn finish(to: &mut ServerConn) -> Result<String, String> {
    let mut tag = String::new();
    let mut failure = None;
    loop {
        let info = to.read_frame().await.map_err(|e| e.to_string())?;
        let frame = to.rbuf.split_to(info.len);
        match info.tag {
            b'C' => {
                let payload = &frame[5..];
                tag = String::from_utf8_lossy(payload.strip_suffix(b"\0").unwrap_or(payload))
                    .into_owned();
            }
            b'E' => failure = Some(error_text(&frame)),
            b'Z' => break,
            _ => {}
        }
    }
    match failure {
        Some(e) => Err(e),
        None => Ok(tag),
    }
}

fn error_text(frame: &[u8]) -> String {
    frame
        .get(5..)
        .and_then(messages::parse_error_fields)
        .map_or_else(|| "an error".into(), |f| f.message)
}
