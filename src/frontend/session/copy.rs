//! COPY with a sharded table (routing by key only). FROM STDIN: the client's rows
//! are split by key (`router::copy`) over one COPY per backend, atomically (two-phase
//! commit outside a transaction; inside one, the backends join it). TO STDOUT: every
//! backend's rows, one backend after another.

use bytes::{Bytes, BytesMut};
use tokio::io::AsyncReadExt;

use super::servers::{error_reply, release, rollback_all};
use super::Session;
use crate::backend::pool::Guard;
use crate::backend::server::CopyStep;
use crate::error::ClientError;
use crate::frontend::pipeline::Expect;
use crate::limits;
use crate::protocol::messages;
use crate::protocol::next_frame;
use crate::router::copy::Splitter;
use crate::router::decide::CopyInto;
use crate::router::BackendId;

/// Rows buffered for one backend before they are written to it.
const COPY_FLUSH_BYTES: usize = 64 * 1024;

/// How the COPY ended.
enum Outcome {
    /// Every backend's CommandComplete tag.
    Done(Vec<String>),
    /// A backend's ErrorResponse (at `at`, if a backend said it), or the proxy's.
    Failed(Option<usize>, Bytes),
    /// A server connection failed, or the client left.
    Lost(ClientError),
    /// Refused before the COPY started anywhere.
    Refused(ClientError),
}

impl Session {
    /// Runs `query` (a COPY FROM STDIN) split by key, inside the client's
    /// transaction if one is open, else in its own distributed one.
    pub(super) async fn copy_in(&mut self, copy: CopyInto, query: &Bytes) {
        let in_transaction = self.pipeline.tx_status != b'I' || self.deferred_begin.is_some();
        let backends: Vec<BackendId> = (0..self.topology().pools.len()).collect();
        let servers = if in_transaction {
            self.join_all(&backends).await
        } else {
            self.begin_all(&backends).await
        };
        let mut servers = match servers {
            Ok(servers) => servers,
            Err(e) if in_transaction => return self.fail_transaction(e),
            Err(e) => return self.reply_error(e),
        };
        let outcome = self.run_copy_in(&copy, query, &mut servers).await;
        let reply = match outcome {
            Outcome::Done(tags) => {
                let tags: Vec<&[u8]> = tags.iter().map(|t| t.as_bytes()).collect();
                let tag = super::fanout::sum_tags(&tags);
                let committed = if in_transaction {
                    self.park_all(servers, None);
                    Ok(())
                } else {
                    let committed = self.commit_all(&mut servers).await;
                    release(&mut servers);
                    committed
                };
                match committed {
                    Ok(()) => {
                        let mut reply = BytesMut::new();
                        messages::command_complete(&mut reply, &tag);
                        reply
                    }
                    Err(e) => error_reply(e),
                }
            }
            Outcome::Failed(at, error) => {
                if in_transaction {
                    // The failed server (or any) is attached: the transaction fails.
                    self.park_all(servers, Some(at.unwrap_or(0)));
                    self.fail_transaction_here(error);
                    return;
                }
                rollback_all(&mut servers).await;
                release(&mut servers);
                BytesMut::from(&error[..])
            }
            Outcome::Lost(e) => {
                drop(servers);
                if in_transaction {
                    self.abandon_transaction();
                }
                error_reply(e)
            }
            Outcome::Refused(e) => {
                if in_transaction {
                    self.park_all(servers, None);
                    return self.fail_transaction(e);
                }
                rollback_all(&mut servers).await;
                release(&mut servers);
                error_reply(e)
            }
        };
        let mut reply = reply;
        messages::ready_for_query(&mut reply, self.pipeline.tx_status);
        self.pipeline.push(Expect::Synthetic(reply.freeze()));
    }

    /// The COPY on every server, fed with the client's data.
    async fn run_copy_in(
        &mut self,
        copy: &CopyInto,
        query: &Bytes,
        servers: &mut [(BackendId, Guard)],
    ) -> Outcome {
        let topology = self.topology();
        let map = &topology.map;
        let key_at = match copy.key_at {
            Some(at) => Some(at),
            None => key_position(&mut servers[0].1, &copy.table, map).await,
        };
        let Some(key_at) = key_at else {
            let why = format!(
                "pgshard could not find the key column of \"{}\" on backend \"{}\"",
                copy.table, map.backends[servers[0].0].name
            );
            return Outcome::Refused(ClientError::Unsupported(why));
        };
        let key_type = map.tables.get(&copy.table).map(|t| t.key_type);
        let Some(key_type) = key_type else {
            let why = format!("table \"{}\" is no longer in the shard map", copy.table);
            return Outcome::Refused(ClientError::Unsupported(why));
        };
        // The COPY starts everywhere, or nowhere.
        let mut response = None;
        for (i, (_, server)) in servers.iter_mut().enumerate() {
            match server.copy_step(query).await {
                Ok(CopyStep::Started(frame)) => {
                    response.get_or_insert(frame);
                }
                Ok(CopyStep::Failed(error)) => {
                    end_all(&mut servers[..i], &copy_fail("another backend refused it")).await;
                    return Outcome::Failed(Some(i), error);
                }
                Ok(CopyStep::Done(_)) | Err(_) => {
                    return Outcome::Lost(ClientError::ServerLost(
                        server.pool().backend.to_string(),
                    ))
                }
            }
        }
        self.pipeline.flush_synthetic(&mut self.conn.wbuf);
        if let Some(frame) = response {
            self.conn.wbuf.extend_from_slice(&frame);
        }
        let mut splitter = Splitter::new(copy.format.clone(), key_at, key_type, map);
        let mut out = vec![BytesMut::new(); servers.len()];
        let mut failure: Option<String> = None;
        let client_end = loop {
            if self.conn.flush().await.is_err() {
                break None;
            }
            let info = match next_frame(&self.conn.rbuf) {
                Ok(Some(info)) => info,
                Ok(None) => match self.conn.stream.read_buf(&mut self.conn.rbuf).await {
                    Ok(0) | Err(_) => break None,
                    Ok(_) => continue,
                },
                Err(e) => break Some(Err(e.to_string())),
            };
            let frame = self.conn.rbuf.split_to(info.len);
            match info.tag {
                b'd' if failure.is_none() => {
                    if let Err(e) = splitter.push(&frame[5..], &mut out) {
                        failure = Some(e);
                    } else if let Err(e) = flush_rows(servers, &mut out, COPY_FLUSH_BYTES).await {
                        return Outcome::Lost(e);
                    }
                }
                b'd' | b'H' | b'S' => {}
                b'c' => break Some(Ok(())),
                b'f' => {
                    let why = String::from_utf8_lossy(&frame[5..]);
                    let why = why.trim_end_matches('\0');
                    break Some(Err(format!("COPY from stdin failed: {why}")));
                }
                other => {
                    let why = format!(
                        "unexpected message type {} during COPY from stdin",
                        other as char
                    );
                    break Some(Err(why));
                }
            }
        };
        let Some(client_end) = client_end else {
            end_all(servers, &copy_fail("the client left")).await;
            return Outcome::Lost(ClientError::Protocol("the client left during COPY".into()));
        };
        let ended = match (client_end, failure) {
            (Ok(()), None) => splitter.finish(&mut out),
            (Ok(()), Some(why)) | (Err(why), _) => Err(why),
        };
        if let Err(why) = ended {
            end_all(servers, &copy_fail(&why)).await;
            return failed(None, ClientError::Unsupported(why));
        }
        if let Err(e) = flush_rows(servers, &mut out, 0).await {
            return Outcome::Lost(e);
        }
        let mut done = BytesMut::new();
        messages::empty(&mut done, b'c');
        let mut tags = Vec::with_capacity(servers.len());
        let mut failure = None;
        for (i, (_, server)) in servers.iter_mut().enumerate() {
            match server.copy_step(&done).await {
                Ok(CopyStep::Done(tag)) => tags.push(tag),
                Ok(CopyStep::Failed(error)) => {
                    failure.get_or_insert((i, error));
                }
                Ok(CopyStep::Started(_)) | Err(_) => {
                    return Outcome::Lost(ClientError::ServerLost(
                        server.pool().backend.to_string(),
                    ))
                }
            }
        }
        match failure {
            Some((at, error)) => Outcome::Failed(Some(at), error),
            None => Outcome::Done(tags),
        }
    }

    /// Streams `query` (a COPY TO STDOUT) from every backend, one after another,
    /// outside a transaction or inside the client's.
    pub(super) async fn copy_out(&mut self, query: &Bytes, header: bool) {
        let in_transaction = self.pipeline.tx_status != b'I' || self.deferred_begin.is_some();
        let backends: Vec<BackendId> = (0..self.topology().pools.len()).collect();
        let servers = if in_transaction {
            self.join_all(&backends).await
        } else {
            self.checkout_all(&backends).await
        };
        let mut servers = match servers {
            Ok(servers) => servers,
            Err(e) if in_transaction => return self.fail_transaction(e),
            Err(e) => return self.reply_error(e),
        };
        let outcome = self.run_copy_out(query, header, &mut servers).await;
        let mut reply = match outcome {
            Outcome::Failed(at, error) if in_transaction => {
                self.park_all(servers, Some(at.unwrap_or(0)));
                return self.fail_transaction_here(error);
            }
            Outcome::Lost(e) => {
                drop(servers);
                if in_transaction {
                    self.abandon_transaction();
                }
                error_reply(e)
            }
            other => {
                if in_transaction {
                    self.park_all(servers, None);
                } else {
                    release(&mut servers);
                }
                match other {
                    Outcome::Done(tags) => {
                        let tags: Vec<&[u8]> = tags.iter().map(|t| t.as_bytes()).collect();
                        let mut reply = BytesMut::new();
                        messages::empty(&mut reply, b'c');
                        messages::command_complete(&mut reply, &super::fanout::sum_tags(&tags));
                        reply
                    }
                    Outcome::Failed(_, error) => BytesMut::from(&error[..]),
                    Outcome::Lost(e) | Outcome::Refused(e) => error_reply(e),
                }
            }
        };
        messages::ready_for_query(&mut reply, self.pipeline.tx_status);
        self.pipeline.push(Expect::Synthetic(reply.freeze()));
    }

    async fn run_copy_out(
        &mut self,
        query: &Bytes,
        header: bool,
        servers: &mut [(BackendId, Guard)],
    ) -> Outcome {
        let mut tags = Vec::with_capacity(servers.len());
        self.pipeline.flush_synthetic(&mut self.conn.wbuf);
        for (i, (_, server)) in servers.iter_mut().enumerate() {
            let name = server.pool().backend.to_string();
            let lost = || Outcome::Lost(ClientError::ServerLost(name.clone()));
            match server.copy_step(query).await {
                Ok(CopyStep::Started(frame)) if i == 0 => self.conn.wbuf.extend_from_slice(&frame),
                Ok(CopyStep::Started(_)) => {}
                Ok(CopyStep::Failed(error)) => return Outcome::Failed(Some(i), error),
                Ok(CopyStep::Done(_)) | Err(_) => return lost(),
            }
            // The other backends' header lines are dropped.
            let mut skip_header = header && i > 0;
            loop {
                let Ok(info) = server.read_frame().await else {
                    server.broken = true;
                    return lost();
                };
                let frame = server.rbuf.split_to(info.len);
                match info.tag {
                    b'd' if std::mem::take(&mut skip_header) => {}
                    b'd' => self.conn.wbuf.extend_from_slice(&frame),
                    b'c' => break,
                    b'N' | b'S' | b'A' => {}
                    b'E' => {
                        // Read on to ReadyForQuery.
                        return match server.copy_step(&[]).await {
                            Ok(_) => Outcome::Failed(Some(i), frame.freeze()),
                            Err(_) => lost(),
                        };
                    }
                    _ => {
                        server.broken = true;
                        return lost();
                    }
                }
                if self.conn.wbuf.len() >= limits::BUFFER_BYTES_FLUSH
                    && self.conn.flush().await.is_err()
                {
                    server.broken = true;
                    return Outcome::Lost(ClientError::Protocol(
                        "the client left during COPY".into(),
                    ));
                }
            }
            match server.copy_step(&[]).await {
                Ok(CopyStep::Done(tag)) => tags.push(tag),
                Ok(CopyStep::Failed(error)) => return Outcome::Failed(Some(i), error),
                _ => return lost(),
            }
        }
        Outcome::Done(tags)
    }

    /// An error outside a transaction, with ReadyForQuery.
    pub(super) fn reply_error(&mut self, e: ClientError) {
        let mut reply = error_reply(e);
        messages::ready_for_query(&mut reply, b'I');
        self.pipeline.push(Expect::Synthetic(reply.freeze()));
    }

    /// The attached server's transaction failed with `error` (its reply is done):
    /// the client gets the error and a failed transaction.
    fn fail_transaction_here(&mut self, error: Bytes) {
        self.pipeline.tx_status = b'E';
        let mut reply = BytesMut::from(&error[..]);
        messages::ready_for_query(&mut reply, b'E');
        self.pipeline.push(Expect::Synthetic(reply.freeze()));
    }
}

/// The key column's position in `table` (its columns in order), asked of `server`.
async fn key_position(
    server: &mut Guard,
    table: &str,
    map: &crate::router::ShardMap,
) -> Option<usize> {
    let key = &map.tables.get(table)?.key;
    let quoted = format!("\"{}\"", table.replace('"', "\"\""));
    let sql = format!(
        "SELECT attname FROM pg_catalog.pg_attribute WHERE attrelid = '{}'::regclass \
         AND attnum > 0 AND NOT attisdropped ORDER BY attnum",
        quoted.replace('\'', "''")
    );
    let columns = server.query_column(&sql).await.ok()?;
    columns
        .iter()
        .position(|c| c.as_deref() == Some(key.as_str()))
}

/// Writes each backend's buffered rows of at least `min` bytes as one CopyData.
async fn flush_rows(
    servers: &mut [(BackendId, Guard)],
    out: &mut [BytesMut],
    min: usize,
) -> Result<(), ClientError> {
    use tokio::io::AsyncWriteExt;
    for ((_, server), rows) in servers.iter_mut().zip(out.iter_mut()) {
        if rows.is_empty() || rows.len() < min {
            continue;
        }
        let mut message = BytesMut::with_capacity(rows.len() + 5);
        let at = messages::begin(&mut message, b'd');
        message.extend_from_slice(rows);
        messages::finish(&mut message, at);
        rows.clear();
        if server.stream.write_all(&message).await.is_err() {
            server.broken = true;
            return Err(ClientError::ServerLost(server.pool().backend.to_string()));
        }
    }
    Ok(())
}

/// Ends the COPY on `servers` with `message` (CopyDone or CopyFail), reading each
/// to ReadyForQuery; a server that fails to answer is discarded.
async fn end_all(servers: &mut [(BackendId, Guard)], message: &[u8]) {
    for (_, server) in servers.iter_mut() {
        if server.copy_step(message).await.is_err() {
            server.broken = true;
        }
    }
}

fn copy_fail(why: &str) -> Bytes {
    let mut out = BytesMut::new();
    let at = messages::begin(&mut out, b'f');
    messages::put_cstr(&mut out, why.as_bytes());
    messages::finish(&mut out, at);
    out.freeze()
}

/// A failure the proxy found itself, as the client's ErrorResponse.
fn failed(at: Option<usize>, e: ClientError) -> Outcome {
    Outcome::Failed(at, error_reply(e).freeze())
}
