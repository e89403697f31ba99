//! A BEGIN answered before its backend is known (the backend comes with the
//! transaction's first statement, `route.rs`), and how such a transaction ends or
//! fails when nothing of it ran yet.

use bytes::{Bytes, BytesMut};

use super::Session;
use crate::error::ClientError;
use crate::frontend::pipeline::Expect;
use crate::protocol::messages;

impl Session {
    /// Answers a BEGIN whose backend is not known yet.
    pub(super) fn defer_begin(&mut self, frame: Bytes) {
        self.deferred_begin = Some(frame);
        self.pipeline.tx_status = b'T';
        let mut reply = BytesMut::new();
        messages::command_complete(&mut reply, "BEGIN");
        messages::ready_for_query(&mut reply, b'T');
        self.pipeline.push(Expect::Synthetic(reply.freeze()));
    }

    /// COMMIT or ROLLBACK of a deferred transaction in which nothing ran: answered
    /// here. `false` when `sql` is something else.
    pub(super) fn end_deferred(&mut self, sql: &[u8]) -> bool {
        let words: Vec<String> = String::from_utf8_lossy(sql)
            .trim_end_matches(['\0', ';', ' ', '\n'])
            .split_whitespace()
            .take(3)
            .map(str::to_ascii_lowercase)
            .collect();
        let ends = match words.first().map(String::as_str) {
            Some("commit" | "end") => words.len() <= 2,
            Some("rollback" | "abort") => words.len() <= 2,
            _ => false,
        };
        if !ends {
            return false;
        }
        // A failed transaction's COMMIT rolls back, as in PostgreSQL.
        let committed =
            matches!(words[0].as_str(), "commit" | "end") && self.pipeline.tx_status != b'E';
        self.deferred_begin = None;
        self.pipeline.tx_status = b'I';
        let mut reply = BytesMut::new();
        messages::command_complete(&mut reply, if committed { "COMMIT" } else { "ROLLBACK" });
        messages::ready_for_query(&mut reply, b'I');
        self.pipeline.push(Expect::Synthetic(reply.freeze()));
        true
    }

    /// Refuses the first statement of a deferred transaction: the transaction fails,
    /// as it would in PostgreSQL.
    pub(super) fn refuse_deferred(&mut self, tag: u8, e: ClientError) {
        if tag == b'Q' {
            crate::stats::Stats::client_error(e.kind());
            self.pipeline.tx_status = b'E';
            let mut reply = BytesMut::new();
            e.write(&mut reply);
            messages::ready_for_query(&mut reply, b'E');
            self.pipeline
                .push(crate::frontend::pipeline::Expect::Synthetic(reply.freeze()));
        } else {
            self.pipeline.tx_status = b'E';
            self.synthetic_error(e);
        }
    }
}
