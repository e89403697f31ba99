//! Extended-protocol batches (Bind, Describe, Execute, Sync) that run on several
//! backends: a keyless write on every backend, or a keyed one on the backends of
//! its keys (atomically in autocommit, or in the client's transaction), and a
//! keyless read, in or out of a transaction, whose rows are
//! concatenated or combined (`gather.rs`). A batch is taken whole, up to its Sync;
//! one with other messages (another Bind, Parse, Close, a row-limited Execute, a
//! Flush the client waits on) is refused before anything of it runs.

use std::sync::Arc;

use bytes::{BufMut, Bytes, BytesMut};
use tokio::io::AsyncReadExt;

use super::fanout::{Merged, Request};
use super::Session;
use crate::frontend::statements::{self, Statement};
use crate::limits;
use crate::protocol::{messages, next_frame};
use crate::router::decide::{Decision, Merge};
use crate::router::sql::merge::{Column, Combine};
use crate::router::BackendId;

/// An extended-protocol read on every backend: what the client's messages after
/// its Bind get, and how the rows merge (`None`: concatenated).
#[derive(Clone)]
pub(super) struct ReadBatch {
    pub(super) steps: Vec<Step>,
    pub(super) combine: Option<Box<Combine>>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Step {
    /// Describe of the bound statement: the first backend's ParameterDescription
    /// and RowDescription (the statement as the client wrote it).
    Statement,
    /// Describe of the portal: the merged rows' RowDescription.
    Portal,
    /// Execute: the merged rows and their count.
    Execute,
}

pub(super) const NOT_PLAIN: &str =
    "pgshard runs a statement on several backends only in a whole, plain \
     extended-protocol batch: Bind, Describe, one Execute without a row limit, Sync";

impl Session {
    /// An autocommit write on `backends` (every one, or those of its keys),
    /// atomically.
    pub(super) async fn run_batch_on(
        &mut self,
        bind: &Bytes,
        backends: Vec<BackendId>,
    ) -> Result<(), String> {
        let request = self.write_batch(bind).await?;
        let parts = backends.into_iter().map(|b| (b, request.clone())).collect();
        self.answer(parts, true, Merged::Rows).await;
        self.batch_taken();
        Ok(())
    }

    /// An autocommit read on `backends` (every one, or those of its keys),
    /// merged.
    pub(super) async fn run_gather_batch(
        &mut self,
        bind: &Bytes,
        merge: &Merge,
        backends: Vec<BackendId>,
    ) -> Result<(), String> {
        let (request, merged) = self.read_batch(bind, merge).await?;
        let parts = backends.into_iter().map(|b| (b, request.clone())).collect();
        self.answer(parts, false, merged).await;
        self.batch_taken();
        Ok(())
    }

    /// A batch that needs several backends inside the client's transaction.
    pub(super) async fn spread_batch(
        &mut self,
        decision: &Decision,
        bind: &Bytes,
    ) -> Result<(), String> {
        let every = |s: &Session| (0..s.topology().pools.len()).collect::<Vec<_>>();
        let read = super::several::read_on(decision, &self.topology().map);
        let (backends, request, merged): (Vec<BackendId>, _, _) = match decision {
            _ if read.is_some() => {
                let Some((backends, merge)) = read else {
                    return Err(NOT_PLAIN.into());
                };
                let (request, merged) = self.read_batch(bind, &merge).await?;
                (backends, request, merged)
            }
            Decision::All => (every(self), self.write_batch(bind).await?, Merged::Rows),
            Decision::Many { backends } => (
                backends.clone(),
                self.write_batch(bind).await?,
                Merged::Rows,
            ),
            Decision::Split(split) => {
                let parts = self.split_batch(bind, split).await?;
                self.spread(parts, Merged::Rows).await;
                self.batch_taken();
                return Ok(());
            }
            other => return Err(super::several::needs_several(other)),
        };
        let parts = backends.into_iter().map(|b| (b, request.clone())).collect();
        self.spread(parts, merged).await;
        self.batch_taken();
        Ok(())
    }

    /// The batch's Sync was taken with it.
    pub(super) fn batch_taken(&mut self) {
        self.pipeline.unsynced = false;
        self.pipeline.skip_until_sync = false;
    }

    /// Waits until the rest of the batch (up to its Sync) is buffered. `false`:
    /// it is not plain, too long, or the client stopped sending; nothing was taken.
    pub(super) async fn whole_batch(&mut self) -> bool {
        loop {
            let mut at = 0;
            let mut last = None;
            let mut ended = false;
            for _ in 0..limits::SPREAD_BATCH_MESSAGES_MAX {
                match next_frame(&self.conn.rbuf[at..]) {
                    Ok(Some(info)) if info.tag == b'S' => return true,
                    Ok(Some(info)) if matches!(info.tag, b'D' | b'E' | b'H') => {
                        at += info.len;
                        last = Some(info.tag);
                    }
                    Ok(Some(_)) | Err(_) => return false,
                    Ok(None) => {
                        ended = true;
                        break;
                    }
                }
            }
            let waiting = last == Some(b'H') && at == self.conn.rbuf.len();
            // Too many messages, a Flush after which the client waits for replies
            // before it sends the rest, or a message too long.
            if !ended || waiting || self.conn.rbuf.len() > limits::MESSAGE_BYTES_MAX {
                return false;
            }
            match self.conn.stream.read_buf(&mut self.conn.rbuf).await {
                Ok(n) if n > 0 => {}
                _ => return false,
            }
        }
    }

    /// The client's messages after its Bind, up to and with the Sync (not taken).
    pub(super) fn rest_of_batch(&self) -> Vec<(u8, &[u8])> {
        let mut out = Vec::new();
        let mut at = 0;
        while let Ok(Some(info)) = next_frame(&self.conn.rbuf[at..]) {
            out.push((info.tag, &self.conn.rbuf[at..at + info.len]));
            at += info.len;
            if info.tag == b'S' {
                break;
            }
        }
        out
    }

    pub(super) fn take_rest_of_batch(&mut self) {
        let len: usize = self.rest_of_batch().iter().map(|(_, f)| f.len()).sum();
        let _ = self.conn.rbuf.split_to(len);
    }

    /// A write's batch for every server: the statement (the client's unnamed
    /// Parse, or its named one prepared where missing), the Bind, the Describes and
    /// Executes, the Sync.
    async fn write_batch(&mut self, bind: &Bytes) -> Result<Request, String> {
        if !self.whole_batch().await {
            return Err(NOT_PLAIN.into());
        }
        let (portal, name, rest_at) = messages::bind_names(&bind[5..]).ok_or(NOT_PLAIN)?;
        let mut request = Request::plain(Bytes::new());
        let mut bytes = BytesMut::new();
        if name.is_empty() {
            bytes.extend_from_slice(&self.unnamed.as_ref().ok_or(NOT_PLAIN)?.parse);
            request.hidden = 1;
            bytes.extend_from_slice(bind);
        } else {
            let statement = self.statements.get(name).ok_or(NOT_PLAIN)?.clone();
            statements::rewrite_bind(
                &mut bytes,
                portal,
                &statement.global_name,
                &bind[5 + rest_at..],
            );
            request.statements.push(statement);
        }
        for (tag, frame) in self.rest_of_batch() {
            match (tag, messages::target(&frame[5..])) {
                (b'D', Some((b'S', n))) if n != name => return Err(NOT_PLAIN.into()),
                (b'D', Some((b'S', _))) if !name.is_empty() => {
                    if let Some(s) = request.statements.first() {
                        statements::rewrite_describe(&mut bytes, &s.global_name);
                    }
                }
                (b'H', _) => {}
                (b'D' | b'E' | b'S', _) => bytes.extend_from_slice(frame),
                _ => return Err(NOT_PLAIN.into()),
            }
        }
        self.take_rest_of_batch();
        request.bytes = bytes.freeze();
        Ok(request)
    }

    /// A keyless read's batch for every server, rewritten for the merge where
    /// needed (`router::scatter`: the rewritten statement is prepared under a
    /// global name of its own), with a Describe of the portal of the proxy's own
    /// right after the Bind, so the merge knows the columns' types and formats.
    async fn read_batch(
        &mut self,
        bind: &Bytes,
        merge: &Merge,
    ) -> Result<(Request, Merged), String> {
        if !self.whole_batch().await {
            return Err(NOT_PLAIN.into());
        }
        let payload = &bind[5..];
        let (portal, name, rest_at) = messages::bind_names(payload).ok_or(NOT_PLAIN)?;
        let named = match name.is_empty() {
            true => None,
            false => Some(self.statements.get(name).ok_or(NOT_PLAIN)?.clone()),
        };
        let parse = match &named {
            Some(statement) => statement.parse.clone(),
            None => self.unnamed.as_ref().ok_or(NOT_PLAIN)?.parse.clone(),
        };
        let (_, query, types) = messages::parse_message(&parse[5..]).ok_or(NOT_PLAIN)?;
        let sql = std::str::from_utf8(query).map_err(|_| NOT_PLAIN)?;
        let mut steps = Vec::new();
        for (tag, frame) in self.rest_of_batch() {
            let step = match tag {
                b'D' => match messages::target(&frame[5..]) {
                    Some((b'S', n)) if n == name => Step::Statement,
                    Some((b'P', p)) if p == portal => Step::Portal,
                    _ => return Err(NOT_PLAIN.into()),
                },
                b'E' => match messages::execute_message(&frame[5..]) {
                    Some((p, 0)) if p == portal && !steps.contains(&Step::Execute) => Step::Execute,
                    _ => return Err(NOT_PLAIN.into()),
                },
                _ => continue,
            };
            steps.push(step);
        }
        let combine = match merge {
            Merge::Combine(c) => Some(c.clone()),
            _ => None,
        };
        let scatter = match &combine {
            Some(c) => crate::router::scatter::scatter_sql(sql, c).ok_or(
                "pgshard could not rewrite this read for the backends (its LIMIT/OFFSET, \
                 avg or ORDER BY)",
            )?,
            None => None,
        };
        let (formats_at, formats) =
            messages::bind_result_formats(payload, rest_at).ok_or(NOT_PLAIN)?;
        let mut request = Request::plain(Bytes::new());
        let mut bytes = BytesMut::new();
        // The client's own statement, where the Bind or a Describe of it needs it.
        let original = scatter.is_none() || steps.contains(&Step::Statement);
        let original_name: &[u8] = match &named {
            Some(statement) => {
                if original {
                    request.statements.push(statement.clone());
                }
                &statement.global_name
            }
            None => {
                if original {
                    bytes.extend_from_slice(&parse);
                    request.hidden = 1;
                }
                b"\0"
            }
        };
        let mut bound = original_name.to_vec();
        let mut rest = payload[rest_at..].to_vec();
        if let (Some(scatter), Some(combine)) = (&scatter, &combine) {
            let declared = declare_int8(types, &scatter.unused_params).ok_or(NOT_PLAIN)?;
            let statement = Arc::new(Statement::new(
                scatter.sql.as_bytes(),
                &declared,
                Vec::new(),
            ));
            bound = statement.global_name.clone();
            request.statements.insert(0, statement);
            rest.truncate(formats_at - rest_at);
            put_formats(&mut rest, &backend_formats(&formats, combine));
        }
        statements::rewrite_bind(&mut bytes, portal, &bound, &rest);
        let at = messages::begin(&mut bytes, b'D');
        bytes.put_u8(b'P');
        messages::put_cstr(&mut bytes, portal);
        messages::finish(&mut bytes, at);
        for (tag, frame) in self.rest_of_batch() {
            match tag {
                b'D' if matches!(messages::target(&frame[5..]), Some((b'S', _))) => {
                    if named.is_some() {
                        statements::rewrite_describe(&mut bytes, original_name);
                    } else {
                        bytes.extend_from_slice(frame);
                    }
                }
                b'E' | b'S' => bytes.extend_from_slice(frame),
                _ => {}
            }
        }
        self.take_rest_of_batch();
        request.bytes = bytes.freeze();
        let batch = ReadBatch { steps, combine };
        Ok((request, Merged::Batch(Box::new(batch))))
    }
}

/// The result formats for the backends' columns: one code (or none) applies to
/// all of them; one per client column is repeated for avg's two columns, and the
/// probes come as text.
fn backend_formats(formats: &[i16], combine: &Combine) -> Vec<i16> {
    if formats.len() <= 1 || formats.len() != combine.columns.len() {
        return formats.to_vec();
    }
    let mut out = Vec::with_capacity(formats.len() + 4);
    for (format, column) in formats.iter().zip(&combine.columns) {
        out.push(*format);
        if *column == Column::Avg {
            out.push(*format);
        }
    }
    out.resize(out.len() + combine.probes().len(), 0);
    out
}

fn put_formats(out: &mut Vec<u8>, formats: &[i16]) {
    out.extend_from_slice(&(formats.len() as i16).to_be_bytes());
    for f in formats {
        out.extend_from_slice(&f.to_be_bytes());
    }
}

/// A Parse's declared parameter types (0: left to the server).
pub(super) fn declared_types(types: &[u8]) -> Option<Vec<u32>> {
    let count = usize::try_from(i16::from_be_bytes(types.get(..2)?.try_into().ok()?)).ok()?;
    (0..count)
        .map(|i| {
            let at = 2 + i * 4;
            Some(u32::from_be_bytes(types.get(at..at + 4)?.try_into().ok()?))
        })
        .collect()
}

/// A Parse's parameter types with `params` declared int8 where the client left
/// them to the server (they were LIMIT/OFFSET parameters, which PostgreSQL types
/// int8, and the rewritten statement no longer uses them).
fn declare_int8(types: &[u8], params: &[usize]) -> Option<Vec<u8>> {
    const INT8: u32 = 20;
    let mut oids = declared_types(types)?;
    for &p in params {
        if p >= oids.len() {
            oids.resize(p + 1, 0);
        }
        if oids[p] == 0 {
            oids[p] = INT8;
        }
    }
    let mut out = Vec::with_capacity(2 + oids.len() * 4);
    out.extend_from_slice(&i16::try_from(oids.len()).ok()?.to_be_bytes());
    for oid in oids {
        out.extend_from_slice(&oid.to_be_bytes());
    }
    Some(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn undeclared_limit_parameters_become_int8() {
        // Two parameters, the first declared int4, the second left to the server.
        let types = b"\0\x02\0\0\0\x17\0\0\0\0";
        assert_eq!(
            declare_int8(types, &[1, 3]).unwrap(),
            b"\0\x04\0\0\0\x17\0\0\0\x14\0\0\0\0\0\0\0\x14".to_vec()
        );
        assert_eq!(declare_int8(b"\0\x01\0", &[0]), None);
    }

    #[test]
    fn result_formats_follow_the_backends_columns() {
        let combine = Combine {
            columns: vec![Column::Group, Column::Avg, Column::Min],
            grouped: true,
            order: Vec::new(),
            limit: None,
            offset: None,
        };
        assert_eq!(backend_formats(&[1], &combine), vec![1]);
        assert_eq!(backend_formats(&[], &combine), Vec::<i16>::new());
        // Group, avg as sum and count, min, then min's probe in text.
        assert_eq!(backend_formats(&[0, 1, 1], &combine), vec![0, 1, 1, 1, 0]);
    }
}
