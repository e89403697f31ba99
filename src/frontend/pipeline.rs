//! What the server owes the client, in order. Extended-protocol messages are answered
//! one by one; the proxy adds messages of its own (a Parse it injects, the session
//! parameter sync) whose replies the client must not see, and answers some client
//! messages itself (a Parse of a statement the server already has, Close of a
//! statement), which must reach the client at the right place in the reply stream.

use std::collections::{HashSet, VecDeque};

use bytes::{Bytes, BytesMut};

/// A client request forwarded to the server.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Req {
    /// Parse; the statement id when it is a named (global) statement.
    Parse(Option<u64>),
    Bind,
    Describe,
    Execute,
    Close,
    Sync,
    Query,
    FunctionCall,
}

impl Req {
    /// Requests whose replies run through ReadyForQuery even after an error.
    fn ends_at_ready(self) -> bool {
        matches!(self, Req::Sync | Req::Query | Req::FunctionCall)
    }

    fn is_last_reply(self, tag: u8) -> bool {
        match self {
            Req::Parse(_) => tag == b'1',
            Req::Bind => tag == b'2',
            Req::Describe => matches!(tag, b'T' | b'n'),
            Req::Execute => matches!(tag, b'C' | b'I' | b's'),
            Req::Close => tag == b'3',
            Req::Sync | Req::Query | Req::FunctionCall => tag == b'Z',
        }
    }
}

#[derive(Debug)]
pub enum Expect {
    Forward(Req),
    /// A Parse the proxy sent so a statement exists on this server (the id of a named
    /// statement; `None` for the client's unnamed one); its ParseComplete is dropped.
    InjectedParse(Option<u64>),
    /// A reply the proxy made up, sent once everything before it is answered.
    Synthetic(Bytes),
}

/// What to do with one server message.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Reply {
    pub forward: bool,
    /// ReadyForQuery's transaction status, when this message is one the client sees.
    pub ready: Option<u8>,
    /// An ErrorResponse to a client request.
    pub error: bool,
    /// A named statement a server accepted.
    pub parsed: Option<u64>,
}

#[derive(Debug)]
pub struct Pipeline {
    queue: VecDeque<Expect>,
    /// After an error in the extended protocol, client messages are skipped until Sync.
    pub skip_until_sync: bool,
    /// Extended-protocol messages were sent since the last Sync.
    pub unsynced: bool,
    /// The server failed a message of the current extended batch and skips the rest
    /// up to Sync.
    pub batch_failed: bool,
    /// Transaction status from the last ReadyForQuery.
    pub tx_status: u8,
    /// Named statements of the client whose Parse failed or was skipped: the client
    /// must forget them, as PostgreSQL never created them. Drained by the session.
    pub unparsed: Vec<u64>,
}

impl Default for Pipeline {
    fn default() -> Self {
        Pipeline {
            queue: VecDeque::new(),
            skip_until_sync: false,
            unsynced: false,
            batch_failed: false,
            tx_status: b'I',
            unparsed: Vec::new(),
        }
    }
}

impl Pipeline {
    pub fn push(&mut self, expect: Expect) {
        self.queue.push_back(expect);
    }

    /// Nothing owed, no open transaction, no half-sent extended batch.
    pub fn is_idle(&self) -> bool {
        self.queue.is_empty() && !self.unsynced && self.tx_status == b'I'
    }

    pub fn is_empty(&self) -> bool {
        self.queue.is_empty()
    }

    /// Requests the client still waits a ReadyForQuery for.
    pub fn pending_ready(&self) -> usize {
        let waits = |e: &&Expect| matches!(e, Expect::Forward(r) if r.ends_at_ready());
        self.queue.iter().filter(waits).count()
    }

    /// Moves the replies the proxy made up, now due, to `out`.
    pub fn flush_synthetic(&mut self, out: &mut BytesMut) {
        while let Some(Expect::Synthetic(_)) = self.queue.front() {
            if let Some(Expect::Synthetic(bytes)) = self.queue.pop_front() {
                out.extend_from_slice(&bytes);
            }
        }
    }

    /// Decides the fate of one server message (`frame` is the whole message).
    /// `prepared` is the server's set of statements, corrected when a Parse fails.
    pub fn on_server(&mut self, frame: &[u8], prepared: &mut HashSet<u64>) -> Reply {
        let tag = frame[0];
        let status = || frame.get(5).copied();
        let forward = Reply {
            forward: true,
            ..Reply::default()
        };
        if matches!(tag, b'N' | b'A' | b'S') {
            return forward;
        }
        match self.queue.front() {
            None | Some(Expect::Synthetic(_)) => forward,
            Some(&Expect::InjectedParse(id)) => match tag {
                b'1' => {
                    self.queue.pop_front();
                    Reply {
                        parsed: id,
                        ..Reply::default()
                    }
                }
                b'E' => {
                    if let Some(id) = id {
                        prepared.remove(&id);
                    }
                    self.fail(prepared);
                    Reply {
                        error: true,
                        ..forward
                    }
                }
                _ => forward,
            },
            Some(&Expect::Forward(req)) => {
                if tag == b'E' && !req.ends_at_ready() {
                    self.fail(prepared);
                    return Reply {
                        error: true,
                        ..forward
                    };
                }
                if tag == b'G' && req == Req::Execute {
                    self.enter_copy_in();
                }
                if req.is_last_reply(tag) {
                    self.queue.pop_front();
                }
                if let (Req::Parse(Some(id)), b'1') = (req, tag) {
                    return Reply {
                        parsed: Some(id),
                        ..forward
                    };
                }
                if tag == b'Z' {
                    self.tx_status = status().unwrap_or(b'I');
                    return Reply {
                        ready: Some(self.tx_status),
                        ..forward
                    };
                }
                Reply {
                    error: tag == b'E',
                    ..forward
                }
            }
        }
    }

    /// An Execute started COPY FROM STDIN. The server ignores Sync while copying, so
    /// a Sync the client pipelined behind the Execute gets no reply; the client sends
    /// another after CopyDone, and until then the batch is open.
    fn enter_copy_in(&mut self) {
        while matches!(self.queue.get(1), Some(Expect::Forward(Req::Sync))) {
            self.queue.remove(1);
        }
        self.unsynced = true;
    }

    /// The front request failed: the server skips everything up to the next Sync, so
    /// those entries will get no reply (and made-up replies must not be sent either).
    fn fail(&mut self, prepared: &mut HashSet<u64>) {
        while let Some(front) = self.queue.front() {
            if matches!(front, Expect::Forward(Req::Sync)) {
                return;
            }
            match self.queue.pop_front() {
                Some(Expect::InjectedParse(Some(id))) => {
                    prepared.remove(&id);
                }
                Some(Expect::Forward(Req::Parse(Some(id)))) => {
                    prepared.remove(&id);
                    self.unparsed.push(id);
                }
                _ => {}
            }
        }
        self.skip_until_sync = true;
        self.batch_failed = true;
    }

    /// The server connection is gone: nothing more will be answered.
    pub fn reset(&mut self) {
        self.queue.clear();
        self.tx_status = b'I';
        self.skip_until_sync = self.unsynced;
        self.unsynced = false;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn msg(tag: u8, payload: &[u8]) -> Vec<u8> {
        let mut out = vec![tag];
        out.extend_from_slice(&((payload.len() + 4) as i32).to_be_bytes());
        out.extend_from_slice(payload);
        out
    }

    /// Feeds server messages; returns the tags the client gets (made-up ones included).
    fn run(p: &mut Pipeline, prepared: &mut HashSet<u64>, server: &[&[u8]]) -> String {
        let mut out = BytesMut::new();
        let mut seen = String::new();
        for frame in server {
            p.flush_synthetic(&mut out);
            if p.on_server(frame, prepared).forward {
                out.extend_from_slice(frame);
            }
        }
        p.flush_synthetic(&mut out);
        let mut rest = &out[..];
        while let Ok(Some(info)) = crate::protocol::next_frame(rest) {
            seen.push(rest[0] as char);
            rest = &rest[info.len..];
        }
        seen
    }

    #[test]
    fn injected_parse_is_hidden_and_skipped_parse_is_answered() {
        let mut p = Pipeline::default();
        let mut prepared = HashSet::from([7]);
        // Client: Parse(already on server) Bind Execute Sync; proxy answers the Parse.
        p.push(Expect::Synthetic(Bytes::from(msg(b'1', b""))));
        p.push(Expect::InjectedParse(Some(8)));
        p.push(Expect::Forward(Req::Bind));
        p.push(Expect::Forward(Req::Execute));
        p.push(Expect::Forward(Req::Sync));
        let server = [
            &msg(b'1', b"")[..],
            &msg(b'2', b""),
            &msg(b'D', b"\0\0"),
            &msg(b'C', b"SELECT 1\0"),
            &msg(b'Z', b"I"),
        ];
        assert_eq!(run(&mut p, &mut prepared, &server), "12DCZ");
        assert!(p.is_idle());
    }

    #[test]
    fn error_skips_to_sync_and_forgets_failed_statements() {
        let mut p = Pipeline::default();
        let mut prepared = HashSet::from([1, 2]);
        p.push(Expect::Forward(Req::Bind));
        p.push(Expect::InjectedParse(Some(2)));
        p.push(Expect::Synthetic(Bytes::from(msg(b'3', b""))));
        p.push(Expect::Forward(Req::Execute));
        p.push(Expect::Forward(Req::Sync));
        let server = [&msg(b'E', b"CXX000\0\0")[..], &msg(b'Z', b"I")];
        assert_eq!(run(&mut p, &mut prepared, &server), "EZ");
        assert!(!prepared.contains(&2) && prepared.contains(&1));
        assert!(!p.skip_until_sync);
    }

    #[test]
    fn error_before_sync_was_sent_sets_skip() {
        let mut p = Pipeline::default();
        let mut prepared = HashSet::new();
        p.push(Expect::Forward(Req::Parse(Some(5))));
        prepared.insert(5);
        let reply = p.on_server(&msg(b'E', b"\0"), &mut prepared);
        assert!(reply.forward && reply.error);
        assert_eq!(p.unparsed, vec![5]);
        assert!(p.skip_until_sync);
        assert!(prepared.is_empty());
    }

    #[test]
    fn injected_unnamed_parse_is_hidden_and_notices_pass() {
        let mut p = Pipeline::default();
        let mut prepared = HashSet::new();
        p.push(Expect::InjectedParse(None));
        p.push(Expect::Forward(Req::Bind));
        p.push(Expect::Forward(Req::Execute));
        p.push(Expect::Forward(Req::Sync));
        let server = [
            &msg(b'1', b"")[..],
            &msg(b'N', b"\0"),
            &msg(b'2', b""),
            &msg(b'C', b"SELECT 0\0"),
            &msg(b'Z', b"T"),
        ];
        assert_eq!(run(&mut p, &mut prepared, &server), "N2CZ");
        assert_eq!(p.tx_status, b'T');
        assert!(!p.is_idle());
    }

    #[test]
    fn sync_pipelined_before_copy_in_gets_no_reply() {
        let mut p = Pipeline::default();
        let mut prepared = HashSet::new();
        p.push(Expect::Forward(Req::Bind));
        p.push(Expect::Forward(Req::Execute));
        p.push(Expect::Forward(Req::Sync));
        assert_eq!(
            run(
                &mut p,
                &mut prepared,
                &[&msg(b'2', b"")[..], &msg(b'G', b"\0\0\0")]
            ),
            "2G"
        );
        assert!(
            p.unsynced,
            "the batch stays open until the client's next Sync"
        );
        // Client: CopyData, CopyDone, Sync, Close(statement, answered by the proxy), Sync.
        p.unsynced = false;
        p.push(Expect::Forward(Req::Sync));
        p.push(Expect::Synthetic(Bytes::from(msg(b'3', b""))));
        p.push(Expect::Forward(Req::Sync));
        let server = [
            &msg(b'C', b"COPY 1\0")[..],
            &msg(b'Z', b"I"),
            &msg(b'Z', b"I"),
        ];
        assert_eq!(run(&mut p, &mut prepared, &server), "CZ3Z");
        assert!(p.is_idle());
    }

    #[test]
    fn simple_query_error_runs_to_ready() {
        let mut p = Pipeline::default();
        let mut prepared = HashSet::new();
        p.push(Expect::Forward(Req::Query));
        assert_eq!(p.pending_ready(), 1);
        let server = [&msg(b'E', b"\0")[..], &msg(b'Z', b"I")];
        assert_eq!(run(&mut p, &mut prepared, &server), "EZ");
        assert!(!p.skip_until_sync && p.is_idle());
    }
}
