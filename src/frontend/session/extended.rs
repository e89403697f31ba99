//! The extended-protocol messages that name prepared statements: Parse, Bind,
//! Describe and Close, rewritten to global statement names (see `statements.rs`).

use std::sync::Arc;

use bytes::{Bytes, BytesMut};

use super::{Session, Unnamed, CLOSE_COMPLETE, PARSE_COMPLETE};
use crate::error::ClientError;
use crate::frontend::pipeline::{Expect, Req};
use crate::frontend::statements::{self, Statement};
use crate::limits;
use crate::protocol::messages;
use crate::stats::Stats;

impl Session {
    /// A reply the proxy makes up, after an error the proxy found itself; the rest of
    /// the batch is skipped up to Sync, as PostgreSQL would.
    pub(super) fn synthetic_error(&mut self, e: ClientError) {
        Stats::client_error(e.kind());
        let mut buf = BytesMut::new();
        e.write(&mut buf);
        self.pipeline.push(Expect::Synthetic(buf.freeze()));
        self.pipeline.skip_until_sync = true;
    }

    pub(super) fn on_parse(&mut self, frame: &Bytes) -> Result<(), ClientError> {
        let malformed = || ClientError::Protocol("malformed Parse message".into());
        let (name, query, types) = messages::parse_message(&frame[5..]).ok_or_else(malformed)?;
        if name.is_empty() {
            // Kept so that a Bind in a later transaction, on another server
            // connection, still finds it (see `ensure_unnamed`).
            let changes = self.param_changes(query);
            self.unnamed = Some(Unnamed {
                parse: frame.clone(),
                changes,
            });
            self.unnamed_here = true;
            self.forward(frame, Req::Parse(None));
            return Ok(());
        }
        let name_text = String::from_utf8_lossy(name).into_owned();
        if self.statements.contains(name) {
            self.synthetic_error(ClientError::DuplicateStatement(name_text));
            return Ok(());
        }
        if self.statements.len() >= limits::CLIENT_PREPARED_MAX {
            self.synthetic_error(ClientError::TooMany(
                "prepared statements on one connection",
            ));
            return Ok(());
        }
        let statement = Arc::new(Statement::new(query, types, self.param_changes(query)));
        self.statements.insert(name, statement.clone());
        let Some(server) = self.server.as_mut() else {
            return Ok(());
        };
        if server.prepared.insert(statement.id) {
            self.swbuf.extend_from_slice(&statement.parse);
            self.push(Req::Parse(Some(statement.id)));
        } else {
            self.pipeline
                .push(Expect::Synthetic(Bytes::from_static(PARSE_COMPLETE)));
            self.pipeline.unsynced = true;
        }
        Ok(())
    }

    /// A named Parse of a statement some server has already accepted is answered by
    /// the proxy, and the statement is prepared where it is first used. Without this a
    /// client that prepares synchronously outside a transaction (pgbench -M prepared
    /// runs PQprepare on a thread shared with other connections) could wait for a pool
    /// that its own other connections hold, until the checkout timeout.
    pub(super) fn parse_without_server(&mut self, frame: &[u8]) -> Result<bool, ClientError> {
        let malformed = || ClientError::Protocol("malformed Parse message".into());
        let (name, query, types) = messages::parse_message(&frame[5..]).ok_or_else(malformed)?;
        if name.is_empty()
            || self.statements.contains(name)
            || self.statements.len() >= limits::CLIENT_PREPARED_MAX
        {
            return Ok(false);
        }
        let statement = Statement::new(query, types, self.param_changes(query));
        if !self.app.known_statements.contains(statement.id) {
            return Ok(false);
        }
        self.statements.insert(name, Arc::new(statement));
        self.pipeline
            .push(Expect::Synthetic(Bytes::from_static(PARSE_COMPLETE)));
        Ok(true)
    }

    /// Makes sure the server has `statement`, injecting a Parse when it does not.
    pub(super) fn ensure_prepared(&mut self, statement: &Statement) {
        let Some(server) = self.server.as_mut() else {
            return;
        };
        if server.prepared.insert(statement.id) {
            self.swbuf.extend_from_slice(&statement.parse);
            self.pipeline
                .push(Expect::InjectedParse(Some(statement.id)));
        }
    }

    /// Makes sure the server has the client's unnamed statement: it may have been
    /// parsed in an earlier transaction, on another server connection.
    fn ensure_unnamed(&mut self) {
        if self.unnamed_here || self.server.is_none() {
            return;
        }
        if let Some(unnamed) = &self.unnamed {
            self.swbuf.extend_from_slice(&unnamed.parse);
            self.pipeline.push(Expect::InjectedParse(None));
            self.unnamed_here = true;
        }
    }

    pub(super) fn on_bind(&mut self, payload: &[u8]) -> Result<(), ClientError> {
        let malformed = || ClientError::Protocol("malformed Bind message".into());
        let (portal, name, rest_at) = messages::bind_names(payload).ok_or_else(malformed)?;
        if name.is_empty() {
            self.ensure_unnamed();
            if let Some(unnamed) = &self.unnamed {
                let changes = unnamed.changes.clone();
                self.track_params(changes);
            }
            let at = messages::begin(&mut self.swbuf, b'B');
            self.swbuf.extend_from_slice(payload);
            messages::finish(&mut self.swbuf, at);
            self.push(Req::Bind);
            return Ok(());
        }
        let Some(statement) = self.statements.get(name).cloned() else {
            let name = String::from_utf8_lossy(name).into_owned();
            self.synthetic_error(ClientError::UnknownStatement(name));
            return Ok(());
        };
        self.ensure_prepared(&statement);
        self.track_params(statement.changes.iter().cloned());
        statements::rewrite_bind(
            &mut self.swbuf,
            portal,
            &statement.global_name,
            &payload[rest_at..],
        );
        self.push(Req::Bind);
        Ok(())
    }

    pub(super) fn on_describe(&mut self, frame: &[u8]) -> Result<(), ClientError> {
        let malformed = || ClientError::Protocol("malformed Describe message".into());
        match messages::target(&frame[5..]).ok_or_else(malformed)? {
            (b'S', name) if !name.is_empty() => {
                let Some(statement) = self.statements.get(name).cloned() else {
                    let name = String::from_utf8_lossy(name).into_owned();
                    self.synthetic_error(ClientError::UnknownStatement(name));
                    return Ok(());
                };
                self.ensure_prepared(&statement);
                statements::rewrite_describe(&mut self.swbuf, &statement.global_name);
                self.push(Req::Describe);
            }
            (b'S', _) => {
                self.ensure_unnamed();
                self.forward(frame, Req::Describe);
            }
            _ => self.forward(frame, Req::Describe),
        }
        Ok(())
    }

    pub(super) fn on_close(&mut self, frame: &[u8]) -> Result<(), ClientError> {
        let malformed = || ClientError::Protocol("malformed Close message".into());
        match messages::target(&frame[5..]).ok_or_else(malformed)? {
            (b'S', name) if !name.is_empty() => {
                // The server keeps the statement for other clients; only this
                // client's name goes away.
                self.statements.remove(name);
                self.pipeline
                    .push(Expect::Synthetic(Bytes::from_static(CLOSE_COMPLETE)));
            }
            _ if self.server.is_some() => self.forward(frame, Req::Close),
            // Without a server there is no portal or unnamed statement to close.
            _ => self
                .pipeline
                .push(Expect::Synthetic(Bytes::from_static(CLOSE_COMPLETE))),
        }
        Ok(())
    }
}
