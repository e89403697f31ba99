//! A multi-row INSERT whose rows belong on several backends, sent as an
//! extended-protocol batch with its values as parameters: one INSERT per backend
//! (`router::split`), each the unnamed statement bound to the parameters it uses.

use bytes::{BufMut, Bytes, BytesMut};

use super::batch::{declared_types, NOT_PLAIN};
use super::fanout::{Merged, Request};
use super::Session;
use crate::protocol::messages;
use crate::router::BackendId;

impl Session {
    /// An autocommit multi-row INSERT whose rows belong on several backends, its
    /// values parameters: one INSERT per backend, atomically.
    pub(super) async fn run_split_batch(
        &mut self,
        bind: &Bytes,
        split: &[(BackendId, Vec<usize>)],
    ) -> Result<(), String> {
        let parts = self.split_batch(bind, split).await?;
        self.answer(parts, true, Merged::Rows).await;
        self.batch_taken();
        Ok(())
    }

    /// Per backend, the INSERT with its rows only (`router::split`), parsed as the
    /// unnamed statement with its parameters' declared types, bound to the
    /// parameters it uses, then the client's Describe of the portal, Execute and
    /// Sync.
    pub(super) async fn split_batch(
        &mut self,
        bind: &Bytes,
        split: &[(BackendId, Vec<usize>)],
    ) -> Result<Vec<(BackendId, Request)>, String> {
        const NOT_SPLIT: &str = "pgshard could not split this INSERT's rows for their backends";
        if !self.whole_batch().await {
            return Err(NOT_PLAIN.into());
        }
        let payload = &bind[5..];
        let (portal, name, rest_at) = messages::bind_names(payload).ok_or(NOT_PLAIN)?;
        let parse = match name.is_empty() {
            true => self.unnamed.as_ref().ok_or(NOT_PLAIN)?.parse.clone(),
            false => self.statements.get(name).ok_or(NOT_PLAIN)?.parse.clone(),
        };
        let (_, query, types) = messages::parse_message(&parse[5..]).ok_or(NOT_PLAIN)?;
        let sql = std::str::from_utf8(query).map_err(|_| NOT_PLAIN)?;
        let parts = crate::router::split::split_insert_params(sql, split).ok_or(NOT_SPLIT)?;
        let params = messages::bind_params(payload, rest_at).ok_or(NOT_PLAIN)?;
        let (formats_at, _) = messages::bind_result_formats(payload, rest_at).ok_or(NOT_PLAIN)?;
        let declared = declared_types(types).ok_or(NOT_PLAIN)?;
        let rest: Vec<(u8, Vec<u8>)> = self
            .rest_of_batch()
            .into_iter()
            .map(|(tag, frame)| (tag, frame.to_vec()))
            .collect();
        let describes_statement = |(tag, f): &(u8, Vec<u8>)| {
            *tag == b'D' && !matches!(messages::target(&f[5..]), Some((b'P', _)))
        };
        if rest.iter().any(describes_statement) {
            // A Describe of the client's statement: not the one the servers run.
            return Err(NOT_PLAIN.into());
        }
        let mut out = Vec::with_capacity(parts.len());
        for (backend, part_sql, used) in parts {
            let mut bytes = BytesMut::new();
            let at = messages::begin(&mut bytes, b'P');
            bytes.put_u8(0);
            messages::put_cstr(&mut bytes, part_sql.as_bytes());
            bytes.put_i16(i16::try_from(used.len()).map_err(|_| NOT_SPLIT)?);
            for &p in &used {
                bytes.put_u32(declared.get(p).copied().unwrap_or(0));
            }
            messages::finish(&mut bytes, at);
            let at = messages::begin(&mut bytes, b'B');
            messages::put_cstr(&mut bytes, portal);
            bytes.put_u8(0);
            bytes.put_i16(used.len() as i16);
            for &p in &used {
                bytes.put_i16(params.get(p).ok_or(NOT_SPLIT)?.0);
            }
            bytes.put_i16(used.len() as i16);
            for &p in &used {
                match params.get(p).ok_or(NOT_SPLIT)?.1 {
                    Some(v) => {
                        bytes.put_i32(v.len() as i32);
                        bytes.put_slice(v);
                    }
                    None => bytes.put_i32(-1),
                }
            }
            bytes.put_slice(&payload[formats_at..]);
            messages::finish(&mut bytes, at);
            for (tag, frame) in &rest {
                if matches!(tag, b'D' | b'E' | b'S') {
                    bytes.put_slice(frame);
                }
            }
            let mut request = Request::plain(bytes.freeze());
            request.hidden = 1;
            out.push((backend, request));
        }
        self.take_rest_of_batch();
        Ok(out)
    }
}
