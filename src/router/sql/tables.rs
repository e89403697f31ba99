//! The tables a statement names, as the shard map sees them (sharded, reference,
//! catalog or unlisted), and table and column names compared as PostgreSQL does.

use std::collections::BTreeSet;
use std::ops::ControlFlow;

use sqlparser::ast::{visit_relations, Ident, ObjectName, ObjectNamePart, Statement};

use super::plan::Plan;
use crate::router::shardmap::ShardMap;

/// The sharded and reference tables a statement names.
pub(super) struct Tables<'m> {
    pub(super) map: &'m ShardMap,
    pub(super) sharded: BTreeSet<String>,
    /// How many times sharded tables are named (a self-join names one twice).
    pub(super) sharded_refs: usize,
    pub(super) reference: bool,
    /// A user table the map does not list (it lives on the default backend).
    pub(super) unmapped: bool,
}

impl<'m> Tables<'m> {
    pub(super) fn of(statement: &Statement, map: &'m ShardMap) -> Tables<'m> {
        let mut tables = Tables {
            map,
            sharded: BTreeSet::new(),
            sharded_refs: 0,
            reference: false,
            unmapped: false,
        };
        let _ = visit_relations(statement, |object| {
            let name = table_name(object);
            if map.tables.contains_key(&name) {
                tables.sharded.insert(name);
                tables.sharded_refs += 1;
            } else if map.reference_tables.contains(&name) {
                tables.reference = true;
            } else if !is_catalog(object, &name) {
                tables.unmapped = true;
            }
            ControlFlow::<()>::Continue(())
        });
        tables
    }

    /// Where a statement touching no sharded table goes.
    pub(super) fn unsharded(&self) -> Plan {
        if self.unmapped {
            Plan::Default
        } else {
            Plan::Any
        }
    }

    /// The one sharded table, or why there is not exactly one.
    pub(super) fn single(&self) -> Result<Option<&str>, Plan> {
        let mut it = self.sharded.iter();
        match (it.next(), it.next()) {
            (None, _) => Ok(None),
            (Some(t), None) if self.sharded_refs > 1 => Err(Plan::Unsupported(format!(
                "a statement that names sharded table \"{t}\" more than once (a self-join or \
                 a subquery on it) is not supported: its rows would have to meet across \
                 backends"
            ))),
            (Some(t), None) => Ok(Some(t)),
            (Some(a), Some(b)) => Err(Plan::Unsupported(format!(
                "a statement on more than one sharded table (\"{a}\", \"{b}\") is not \
                 supported yet"
            ))),
        }
    }
}

/// A table's name as the map knows it: the last part, lowercased unless quoted.
pub(super) fn table_name(name: &ObjectName) -> String {
    name.0
        .last()
        .and_then(ObjectNamePart::as_ident)
        .map(ident_name)
        .unwrap_or_default()
}

/// PostgreSQL's own tables and views (they are alike on every backend).
pub(super) fn is_catalog(object: &ObjectName, name: &str) -> bool {
    let schema = object
        .0
        .iter()
        .rev()
        .nth(1)
        .and_then(ObjectNamePart::as_ident)
        .map(ident_name);
    match schema.as_deref() {
        Some("pg_catalog" | "information_schema") => true,
        Some(_) => false,
        None => name.starts_with("pg_"),
    }
}

pub(super) fn ident_name(ident: &Ident) -> String {
    match ident.quote_style {
        Some(_) => ident.value.clone(),
        None => ident.value.to_ascii_lowercase(),
    }
}

pub(super) fn ident_is(ident: &Ident, name: &str) -> bool {
    ident_name(ident) == name
}
