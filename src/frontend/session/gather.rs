//! The client's reply to a statement that ran on several backends, from their
//! replies: rows concatenated and row counts summed, or a keyless read combined
//! (`frontend::combine`), with the values only a backend can order (text under
//! its collation) ranked by the first of the servers, in the same transaction.

use bytes::{Bytes, BytesMut};

use super::batch::{ReadBatch, Step};
use super::fanout::{lost, merge, Failure, Merged};
use crate::backend::pool::Guard;
use crate::error::ClientError;
use crate::frontend::combine::{Combined, Gathered, RankRequest};
use crate::protocol::messages;
use crate::router::sql::merge::{Bound, Combine};
use crate::router::BackendId;

/// The reply (without ReadyForQuery) from every backend's replies.
pub(super) async fn merged_reply(
    servers: &mut [(BackendId, Guard)],
    replies: &[Vec<Bytes>],
    merged: Merged,
) -> Result<BytesMut, Failure> {
    match merged {
        Merged::Rows => Ok(merge(replies)),
        Merged::Combine(spec) => Ok(combined(servers, replies, &spec).await?.into_reply()),
        Merged::Batch(batch) => batch_reply(servers, replies, &batch).await,
    }
}

fn refused(why: impl std::fmt::Display) -> Failure {
    Failure::Refused(ClientError::Unsupported(format!(
        "pgshard cannot merge this read: {why}"
    )))
}

/// Every backend's rows combined as `spec` says.
async fn combined(
    servers: &mut [(BackendId, Guard)],
    replies: &[Vec<Bytes>],
    spec: &Combine,
) -> Result<Combined, Failure> {
    let bound = |b: &Option<Bound>| match b {
        Some(Bound::Value(n)) => Ok(Some(*n)),
        None => Ok(None),
        Some(Bound::Source(_)) => Err(refused("its LIMIT/OFFSET could not be read")),
    };
    let (limit, offset) = (bound(&spec.limit)?, bound(&spec.offset)?.unwrap_or(0));
    let gathered = Gathered::new(replies, spec).map_err(refused)?;
    let mut ranks = Vec::with_capacity(gathered.rank_requests().len());
    for request in gathered.rank_requests() {
        ranks.push(rank(servers, request).await?);
    }
    gathered.finish(ranks, limit, offset).map_err(refused)
}

/// The ranks of `request`'s values, from the first server.
async fn rank(
    servers: &mut [(BackendId, Guard)],
    request: &RankRequest,
) -> Result<Vec<u64>, Failure> {
    let Some((_, server)) = servers.first_mut() else {
        return Err(refused("no server to order its values"));
    };
    let Ok(frames) = server.exchange(&request.messages()).await else {
        return Err(Failure::Lost(lost(server)));
    };
    if let Some(error) = frames.iter().find(|f| f.first() == Some(&b'E')) {
        return Err(Failure::Failed {
            at: 0,
            error: error.clone(),
        });
    }
    request.read(&frames).map_err(refused)
}

/// The reply to an extended-protocol read: the first backend's BindComplete,
/// then for each of the client's messages its part: a Describe of the statement
/// as the first backend answered it, a Describe of the portal with the merged
/// rows' RowDescription, the Execute with the merged rows.
async fn batch_reply(
    servers: &mut [(BackendId, Guard)],
    replies: &[Vec<Bytes>],
    batch: &ReadBatch,
) -> Result<BytesMut, Failure> {
    let unexpected = || refused("an unexpected reply from a backend");
    let first = replies.first().ok_or_else(unexpected)?;
    let parts = parts(first, &batch.steps).ok_or_else(unexpected)?;
    let (description, rows, count) = match &batch.combine {
        Some(spec) => {
            let c = combined(servers, replies, spec).await?;
            (c.description, c.rows, c.count)
        }
        None => {
            let mut rows = BytesMut::new();
            let mut count = 0;
            for frame in replies
                .iter()
                .flatten()
                .filter(|f| f.first() == Some(&b'D'))
            {
                rows.extend_from_slice(frame);
                count += 1;
            }
            (parts.own_describe.clone(), rows, count)
        }
    };
    let mut out = BytesMut::new();
    for frame in &parts.notices {
        out.extend_from_slice(frame);
    }
    out.extend_from_slice(&parts.bind);
    let mut statements = parts.statements.iter();
    for step in &batch.steps {
        match step {
            Step::Statement => {
                for frame in statements.next().ok_or_else(unexpected)? {
                    out.extend_from_slice(frame);
                }
            }
            Step::Portal => out.extend_from_slice(&description),
            Step::Execute => {
                out.extend_from_slice(&rows);
                messages::command_complete(&mut out, &format!("SELECT {count}"));
            }
        }
    }
    Ok(out)
}

/// The first backend's reply to a read batch, cut by message.
struct Parts {
    notices: Vec<Bytes>,
    bind: Bytes,
    /// The reply to the proxy's own Describe of the portal.
    own_describe: Bytes,
    /// Per Describe of the statement: its ParameterDescription and
    /// RowDescription (or NoData).
    statements: Vec<Vec<Bytes>>,
}

fn parts(frames: &[Bytes], steps: &[Step]) -> Option<Parts> {
    let notices = frames
        .iter()
        .filter(|f| f.first() == Some(&b'N'))
        .cloned()
        .collect();
    let mut replies = frames
        .iter()
        .filter(|f| !matches!(f.first(), Some(b'N' | b'S')));
    let mut next = |tags: &[u8]| {
        let frame = replies.next()?;
        tags.contains(frame.first()?).then(|| frame.clone())
    };
    let bind = next(b"2")?;
    let own_describe = next(b"Tn")?;
    let mut statements = Vec::new();
    for step in steps {
        match step {
            Step::Statement => statements.push(vec![next(b"t")?, next(b"Tn")?]),
            Step::Portal => {}
            Step::Execute => loop {
                if next(b"DC")?.first() == Some(&b'C') {
                    break;
                }
            },
        }
    }
    Some(Parts {
        notices,
        bind,
        own_describe,
        statements,
    })
}
