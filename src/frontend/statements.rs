//! Prepared statements under transaction pooling. A client's named statement gets a
//! global name derived from its text and parameter types; the proxy prepares that
//! global name on whichever server connection runs it, at most once per connection.

use std::collections::HashMap;
use std::hash::{Hash, Hasher};
use std::sync::Arc;

use arc_swap::ArcSwapOption;
use bytes::{BufMut, Bytes, BytesMut};

use super::params::ParamChange;
use crate::protocol::messages::{self, put_cstr};
use crate::router::sql::{Analyzed, PlanCache};
use crate::router::ShardMap;

/// A client's prepared statement.
#[derive(Debug)]
pub struct Statement {
    /// Identity of the statement across clients and server connections.
    pub id: u64,
    /// `pgshard_<id>`, NUL-terminated.
    pub global_name: Vec<u8>,
    /// The Parse message, rewritten to the global name, ready to send.
    pub parse: Bytes,
    /// The session-parameter changes running it makes (tracked at each Bind).
    pub changes: Vec<ParamChange>,
    /// It may run on a shared server connection (see `shareable`).
    pub shareable: bool,
    /// Its analysis for routing, made at its first routed Bind (see `with_analysis`).
    analysis: ArcSwapOption<Kept>,
}

/// A statement's analysis and the map tables it was made for (`ShardMap::tables_id`).
#[derive(Debug)]
struct Kept {
    tables_id: u64,
    analyzed: Analyzed,
}

impl Statement {
    /// From a Parse payload's query and parameter-type section.
    pub fn new(query: &[u8], types: &[u8], changes: Vec<ParamChange>) -> Statement {
        let mut h = std::collections::hash_map::DefaultHasher::new();
        query.hash(&mut h);
        types.hash(&mut h);
        let id = h.finish();
        let global_name = format!("pgshard_{id:016x}\0").into_bytes();
        let mut parse = BytesMut::with_capacity(query.len() + types.len() + 32);
        let at = messages::begin(&mut parse, b'P');
        parse.put_slice(&global_name);
        put_cstr(&mut parse, query);
        parse.put_slice(types);
        messages::finish(&mut parse, at);
        Statement {
            id,
            global_name,
            parse: parse.freeze(),
            shareable: changes.is_empty() && super::shareable::self_contained(query),
            changes,
            analysis: ArcSwapOption::empty(),
        }
    }

    /// `f` of the statement's analysis for `map`. A prepared statement is analyzed
    /// once (through `plans`) and the analysis kept for every Bind, until the map's
    /// sharded tables change. `None` when its text cannot be lexed.
    pub fn with_analysis<T>(
        &self,
        map: &ShardMap,
        plans: &PlanCache,
        f: impl FnOnce(&Analyzed) -> T,
    ) -> Option<T> {
        let kept = self.analysis.load();
        if let Some(kept) = kept.as_deref().filter(|k| k.tables_id == map.tables_id) {
            return Some(f(&kept.analyzed));
        }
        let (_, query, _) = messages::parse_message(self.parse.get(5..)?)?;
        let analyzed = plans.analyze(std::str::from_utf8(query).ok()?, map).ok()?;
        let out = f(&analyzed);
        self.analysis.store(Some(Arc::new(Kept {
            tables_id: map.tables_id,
            analyzed,
        })));
        Some(out)
    }
}

/// The named statements of one client.
#[derive(Debug, Default)]
pub struct Statements {
    by_name: HashMap<Vec<u8>, Arc<Statement>>,
}

impl Statements {
    pub fn get(&self, name: &[u8]) -> Option<&Arc<Statement>> {
        self.by_name.get(name)
    }

    pub fn contains(&self, name: &[u8]) -> bool {
        self.by_name.contains_key(name)
    }

    pub fn len(&self) -> usize {
        self.by_name.len()
    }

    pub fn is_empty(&self) -> bool {
        self.by_name.is_empty()
    }

    pub fn insert(&mut self, name: &[u8], statement: Arc<Statement>) {
        self.by_name.insert(name.to_vec(), statement);
    }

    pub fn remove(&mut self, name: &[u8]) {
        self.by_name.remove(name);
    }

    /// Drops every name bound to statement `id` (its Parse failed on the server).
    pub fn forget(&mut self, id: u64) {
        self.by_name.retain(|_, s| s.id != id);
    }
}

/// Statements some server has accepted, shared by all clients. Read on every named
/// Parse outside a transaction; written once per new statement.
#[derive(Debug, Default)]
pub struct KnownStatements {
    ids: std::sync::RwLock<std::collections::HashSet<u64>>,
}

impl KnownStatements {
    pub fn contains(&self, id: u64) -> bool {
        self.ids
            .read()
            .map(|ids| ids.contains(&id))
            .unwrap_or(false)
    }

    pub fn insert(&self, id: u64) {
        if self.contains(id) {
            return;
        }
        if let Ok(mut ids) = self.ids.write() {
            if ids.len() < crate::limits::KNOWN_STATEMENTS_MAX {
                ids.insert(id);
            }
        }
    }
}

/// Rewrites a Bind whose statement name ends at `rest_at` to use `global_name`.
pub fn rewrite_bind(out: &mut BytesMut, portal: &[u8], global_name: &[u8], rest: &[u8]) {
    let at = messages::begin(out, b'B');
    put_cstr(out, portal);
    out.put_slice(global_name);
    out.put_slice(rest);
    messages::finish(out, at);
}

/// Rewrites a Describe of a statement to use `global_name`.
pub fn rewrite_describe(out: &mut BytesMut, global_name: &[u8]) {
    let at = messages::begin(out, b'D');
    out.put_u8(b'S');
    out.put_slice(global_name);
    messages::finish(out, at);
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::protocol::{messages::parse_message, next_frame};

    #[test]
    fn same_text_same_global_name() {
        let a = Statement::new(b"select $1", b"\0\x01\0\0\0\x17", vec![]);
        let b = Statement::new(b"select $1", b"\0\x01\0\0\0\x17", vec![]);
        let c = Statement::new(b"select $1", b"\0\0", vec![]);
        assert_eq!(a.global_name, b.global_name);
        assert_ne!(a.global_name, c.global_name);
        let info = next_frame(&a.parse).unwrap().unwrap();
        assert_eq!(info.len, a.parse.len());
        let (name, query, types) = parse_message(&a.parse[info.payload()]).unwrap();
        assert_eq!(&a.global_name[..a.global_name.len() - 1], name);
        assert_eq!(query, b"select $1");
        assert_eq!(types, b"\0\x01\0\0\0\x17");
    }

    fn map(extra_tables: &str) -> ShardMap {
        let text = ShardMap::even_for_tests(2).text.0.to_string();
        ShardMap::parse(&(text + extra_tables)).unwrap()
    }

    #[test]
    fn analysis_is_made_once_per_map_tables() {
        let statement = Statement::new(
            b"SELECT * FROM pgbench_accounts WHERE aid = $1",
            b"\0\0",
            vec![],
        );
        let plans = PlanCache::default();
        let pgbench = map("");
        let keyed = |a: &Analyzed| matches!(*a.plan, crate::router::sql::plan::Plan::Keyed { .. });
        assert_eq!(statement.with_analysis(&pgbench, &plans, keyed), Some(true));
        assert_eq!(plans.len(), 1);
        // Kept: a plan cache of its own is not asked again.
        let untouched = PlanCache::default();
        assert_eq!(
            statement.with_analysis(&pgbench, &untouched, keyed),
            Some(true)
        );
        assert!(untouched.is_empty());
        // Other sharded tables: analyzed again, and kept for those.
        let more = map("\n[[tables]]\nname = \"users\"\nkey = \"id\"\ntype = \"int8\"\n");
        assert_ne!(more.tables_id, pgbench.tables_id);
        assert_eq!(
            statement.with_analysis(&more, &untouched, keyed),
            Some(true)
        );
        assert_eq!(untouched.len(), 1);
        assert_eq!(
            statement.with_analysis(&more, &PlanCache::default(), keyed),
            Some(true)
        );
    }

    #[test]
    fn analysis_of_text_that_does_not_lex() {
        let statement = Statement::new(b"SELECT 'unterminated", b"\0\0", vec![]);
        assert_eq!(
            statement.with_analysis(&map(""), &PlanCache::default(), |_| ()),
            None
        );
    }

    #[test]
    fn bind_rewrite_keeps_parameters() {
        let mut out = BytesMut::new();
        rewrite_bind(&mut out, b"", b"pgshard_1\0", b"\0\0\0\x01\0\0\0\x01x\0\0");
        let info = next_frame(&out).unwrap().unwrap();
        assert_eq!(info.len, out.len());
        let (portal, stmt, rest_at) = messages::bind_names(&out[info.payload()]).unwrap();
        assert_eq!((portal, stmt), (&b""[..], &b"pgshard_1"[..]));
        assert_eq!(&out[5 + rest_at..], b"\0\0\0\x01\0\0\0\x01x\0\0");
    }
}
