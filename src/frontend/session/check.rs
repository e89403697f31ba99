//! With a server attached (routing by key): whether the next Query, Bind or Parse
//! may go to it, must wait, or takes the transaction elsewhere: another backend
//! (`span.rs`), several at once, or its end. What holds on one backend only (a
//! savepoint, a SET, COMMIT mixed with other statements) keeps a transaction from
//! spanning backends.

use super::several::{needs_several, spreads, spreads_batch};
use super::Session;
use crate::frontend::params::ParamChange;
use crate::protocol::messages;
use crate::router::decide::Decision;
use crate::router::{BackendId, ShardMap};

/// Whether a message may go to the attached server.
pub(super) enum Attached {
    Fits,
    /// Not yet: earlier requests must be answered first.
    Hold,
    /// The server is idle: let it go and route the message afresh.
    Release,
    /// It cannot run in this transaction or batch: why.
    Mismatch(String),
    /// At a request boundary in a transaction: another backend's server is attached
    /// (`span.rs`).
    Switch(BackendId),
    /// A simple Query that runs on several backends inside the transaction.
    Spread(Decision),
    /// The same, an extended batch (its Bind at the front).
    SpreadBatch(Decision),
    /// COMMIT (`true`) or ROLLBACK of a transaction spanning backends.
    End(bool),
    /// A Parse that starts a batch inside a transaction: kept until its Bind says
    /// where the batch goes.
    DeferParse,
}

impl Session {
    /// With a server attached: whether the message buffered at the front (`len`
    /// bytes: a Query, Bind or Parse) may go to it.
    pub(super) fn check_attached(&mut self, tag: u8, len: usize, map: &ShardMap) -> Attached {
        let backend = self.backend.unwrap_or(map.default_backend);
        if self.pipeline.skip_until_sync {
            // Skipped up to Sync, as the server would.
            return Attached::Fits;
        }
        if tag == b'P' {
            if self.pipeline.tx_status == b'T' && (!self.pipeline.unsynced || self.batch_deferred) {
                return Attached::DeferParse;
            }
            // A Parse that starts a new batch outside a transaction: its Bind decides,
            // so it waits for the server to be let go and is then kept (`defer_parse`).
            if self.pipeline.unsynced || self.pipeline.tx_status != b'I' {
                return Attached::Fits;
            }
            self.pipeline.flush_synthetic(&mut self.conn.wbuf);
            return if self.pipeline.is_empty() {
                Attached::Release
            } else {
                Attached::Hold
            };
        }
        let decision = self.decision(tag, &self.conn.rbuf[..len], map);
        if let Some(Decision::End { commit }) = decision {
            if !self.spanning() {
                return Attached::Fits;
            }
            return match self.boundary() {
                Ok(()) => Attached::End(commit),
                Err(wait) => wait,
            };
        }
        let savepoint = decision == Some(Decision::Savepoint);
        if savepoint && self.spanning() {
            // Even in a failed transaction: ROLLBACK TO would recover one backend only.
            return Attached::Mismatch(savepoints_refused());
        }
        // In a failed transaction the server refuses everything itself.
        if self.pipeline.tx_status == b'E' {
            return Attached::Fits;
        }
        // Only a transaction that spans backends, or is about to, pays for this.
        if self.spanning() {
            if let Some(why) = self.one_backend_only(tag, len, map) {
                return Attached::Mismatch(why);
            }
        }
        let fits = match &decision {
            None
            | Some(Decision::Any | Decision::Session | Decision::Begin | Decision::Savepoint) => {
                true
            }
            Some(Decision::Default) => backend == map.default_backend,
            Some(Decision::One(b)) => *b == backend,
            Some(_) => false,
        };
        if fits {
            if self.pipeline.tx_status == b'T' && self.pinned.is_none() {
                self.pinned = self.pins_transaction(tag, len, savepoint);
            }
            return Attached::Fits;
        }
        self.pipeline.flush_synthetic(&mut self.conn.wbuf);
        let new_batch = !self.pipeline.unsynced;
        if new_batch && !self.pipeline.is_empty() {
            return Attached::Hold;
        }
        if new_batch && self.pipeline.tx_status == b'I' {
            return Attached::Release;
        }
        // Inside a transaction: the transaction takes in more backends.
        if let Err(wait) = self.boundary() {
            return wait;
        }
        // (Checked above when it spans already.)
        if !self.spanning() {
            if let Some(why) = self.one_backend_only(tag, len, map) {
                return Attached::Mismatch(why);
            }
        }
        let pinned = match (&self.pinned, &self.begin) {
            _ if !self.pending.is_empty() => Some("changed settings"),
            (Some(why), _) => Some(*why),
            (None, None) => Some("began inside a multi-statement query"),
            (None, Some(_)) => None,
        };
        if let Some(why) = pinned {
            return Attached::Mismatch(format!(
                "this transaction {why} on backend \"{}\", which would not hold on the other \
                 backends a statement now needs: it cannot span backends",
                map.backends[backend].name
            ));
        }
        match decision {
            Some(Decision::One(b)) => Attached::Switch(b),
            Some(Decision::Default) => Attached::Switch(map.default_backend),
            Some(Decision::Error(why)) => Attached::Mismatch(why),
            Some(d) if tag == b'Q' && spreads(&d) => Attached::Spread(d),
            Some(d) if tag == b'B' && spreads_batch(&d) => Attached::SpreadBatch(d),
            Some(other) => Attached::Mismatch(needs_several(&other)),
            // Fits, handled above.
            None => Attached::Fits,
        }
    }

    /// Whether the transaction is at a request boundary: everything sent answered,
    /// and nothing of the current batch sent yet. Otherwise what to do instead.
    fn boundary(&mut self) -> Result<(), Attached> {
        self.pipeline.flush_synthetic(&mut self.conn.wbuf);
        let unsent = !self.pipeline.unsynced || self.batch_deferred;
        if self.pipeline.is_empty() && unsent {
            return Ok(());
        }
        if !self.pipeline.unsynced {
            return Err(Attached::Hold);
        }
        Err(Attached::Mismatch(
            "in a transaction that spans backends, a statement for another backend than \
             the statements before it in the same extended-protocol batch needs a Sync \
             before it"
                .into(),
        ))
    }

    /// What in this transaction (a statement that fits the attached server) keeps
    /// it on that backend: a savepoint, or a SET of any kind (SET LOCAL, SET
    /// TRANSACTION, SET CONSTRAINTS hold for the transaction on one server).
    fn pins_transaction(&self, tag: u8, len: usize, savepoint: bool) -> Option<&'static str> {
        if savepoint {
            return Some("has a savepoint");
        }
        let sql = match tag {
            b'Q' => std::str::from_utf8(self.conn.rbuf.get(5..len)?).ok()?,
            _ => self.bound_sql(self.conn.rbuf.get(5..len)?, None)?,
        };
        let first = sql
            .trim_start()
            .split(|c: char| !c.is_ascii_alphabetic())
            .next()?;
        first.eq_ignore_ascii_case("set").then_some("ran SET")
    }

    /// Why a statement cannot run in a transaction that spans backends (or is about
    /// to), if so.
    fn one_backend_only(&self, tag: u8, len: usize, map: &ShardMap) -> Option<String> {
        if tag != b'Q' {
            let statement = self.bound_statement(&self.conn.rbuf[5..len])?;
            return (!statement.is_empty()).then(changes_settings);
        }
        let payload = self.conn.rbuf.get(5..len)?;
        if !self.param_changes(payload).is_empty() {
            return Some(changes_settings());
        }
        let sql = std::str::from_utf8(payload.strip_suffix(b"\0")?).ok()?;
        let analyzed = self.analyze(sql, map)?;
        analyzed.plan.controls_transaction_among_others().then(|| {
            "in a transaction that spans backends, COMMIT and ROLLBACK must be sent alone, \
             not with other statements in one query string"
                .into()
        })
    }

    /// The setting changes of the statement a Bind (`payload`) runs.
    fn bound_statement(&self, payload: &[u8]) -> Option<Vec<ParamChange>> {
        let (_, name, _) = messages::bind_names(payload)?;
        if name.is_empty() {
            return Some(self.unnamed.as_ref()?.changes.clone());
        }
        Some(self.statements.get(name)?.changes.clone())
    }
}

fn savepoints_refused() -> String {
    "savepoints and COMMIT/ROLLBACK AND CHAIN are not supported in a transaction that \
     spans backends"
        .into()
}

fn changes_settings() -> String {
    "settings changed inside a transaction that spans backends would hold on one backend \
     only; change them outside the transaction"
        .into()
}
