//! A parsed statement -> a [`Plan`]: which sharded table it touches and where its
//! key values come from (a literal of the statement, or a Bind parameter). Plans are
//! made from the normalized text (`lexer.rs`), so one plan serves every statement
//! that differs only in its literal values.

use sqlparser::ast::{
    CopySource, Expr, FromTable, ObjectNamePart, Query, SetExpr, Statement, TableObject,
    TableWithJoins,
};
use sqlparser::dialect::PostgreSqlDialect;
use sqlparser::parser::Parser;

use super::keys::{key_sources, source};
use super::merge::merge_of;
pub use super::merge::Merge;
use super::tables::{ident_is, is_catalog, table_name, Tables};
use super::words::{copy_booleans, outside_transactions, unparsed};
use crate::router::copy::CopyFormat;
use crate::router::shardmap::ShardMap;

/// A COPY FROM STDIN into a sharded table.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CopyInto {
    pub table: String,
    /// The key's field in each row; `None`: the table's own column order decides
    /// (no column list).
    pub key_at: Option<usize>,
    pub format: CopyFormat,
}

/// Where a key value comes from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Source {
    /// The statement's literal number `i` (`lexer::Normalized::literals[i]`).
    Literal(usize),
    /// The same, negated (`k = -5`).
    NegLiteral(usize),
    /// Bind parameter `i` (0-based; `$1` is 0).
    Param(usize),
    /// A constant read from the statement itself, when only its original text
    /// parsed (such a plan is not cached: it holds the statement's values).
    Constant(String),
    /// The same, negated.
    NegConstant(String),
}

/// What a statement needs from the backends.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Plan {
    /// Touches no user table, or reads reference tables only: any backend has the
    /// same (catalog queries, `SELECT now()`); alone it goes to the default backend.
    Any,
    /// Touches a table the map does not know: the default backend, which holds it.
    Default,
    /// Every backend, in one distributed transaction: DDL, maintenance, writes to
    /// reference tables, writes to a sharded table without a key.
    All,
    /// A sharded table with its key constrained: the backends owning these keys'
    /// vshards (one, for `k = v`; maybe several, for `k IN (...)`).
    Keyed {
        table: String,
        keys: Vec<Source>,
        write: bool,
        /// For a read whose keys turn out to live on several backends: how their
        /// rows merge.
        merge: Merge,
    },
    /// INSERT ... VALUES into a sharded table: one key per row, rows split by backend.
    Insert { table: String, rows: Vec<Source> },
    /// COPY FROM STDIN into a sharded table: rows split by backend on their key.
    CopyIn(CopyInto),
    /// COPY TO STDOUT from a sharded table: gathered from every backend (`header`:
    /// each backend writes a header line).
    CopyOut { table: String, header: bool },
    /// A read of a sharded table without a key: every backend, results merged.
    Scatter { table: String, merge: Merge },
    /// Maintenance that cannot run inside a transaction block (VACUUM, CREATE INDEX
    /// CONCURRENTLY ...): every backend, one after another.
    Maintenance,
    /// BEGIN / START TRANSACTION.
    Begin,
    /// COMMIT / END (`commit`), ROLLBACK / ABORT: the end of a transaction.
    End { commit: bool },
    /// Savepoints, and COMMIT or ROLLBACK AND CHAIN: transaction control that holds
    /// on one backend only.
    Savepoint,
    /// Session statements (SET, SHOW, LISTEN ...).
    Session,
    /// Several statements in one Query string, each with its plan.
    Multi(Vec<Plan>),
    /// Cannot run correctly across shards; the message says why.
    Unsupported(String),
}

impl Plan {
    /// Several statements in one Query string, one of them transaction control.
    pub fn controls_transaction_among_others(&self) -> bool {
        let Plan::Multi(plans) = self else {
            return false;
        };
        plans.iter().any(|p| {
            matches!(
                p,
                Plan::Begin | Plan::End { .. } | Plan::Savepoint | Plan::Multi(_)
            )
        })
    }
}

/// Plans one statement from its normalized text, or else its original text (some
/// constants are syntax, as in `COPY t FROM 'file'`; such a plan holds values and
/// comes back with `false`: do not cache). A statement that parses neither way goes
/// to the default backend (PostgreSQL will report the error) unless it names a
/// sharded table, or is maintenance that belongs on every backend.
pub fn plan(normalized: &str, original: &str, map: &ShardMap) -> (Plan, bool) {
    if outside_transactions(normalized) {
        return (Plan::Maintenance, true);
    }
    let dialect = PostgreSqlDialect {};
    let parsed = Parser::parse_sql(&dialect, normalized).or_else(|e| {
        // COPY ... WITH (FREEZE ON): the parser knows only TRUE/FALSE there.
        copy_booleans(normalized).map_or(Err(e), |sql| Parser::parse_sql(&dialect, &sql))
    });
    let (statements, cacheable) = match parsed {
        Ok(statements) => (statements, true),
        Err(_) => match Parser::parse_sql(&dialect, original) {
            Ok(statements) => (statements, false),
            Err(_) => return (unparsed(normalized, map), true),
        },
    };
    (plan_statements(&statements, map), cacheable)
}

fn plan_statements(statements: &[Statement], map: &ShardMap) -> Plan {
    match statements {
        [] => Plan::Any,
        [one] => plan_statement(one, map),
        _ => {
            let plans: Vec<Plan> = statements.iter().map(|s| plan_statement(s, map)).collect();
            if plans.iter().all(|p| *p == Plan::All) {
                Plan::All
            } else {
                Plan::Multi(plans)
            }
        }
    }
}

fn plan_statement(statement: &Statement, map: &ShardMap) -> Plan {
    let tables = Tables::of(statement, map);
    match statement {
        Statement::Query(query) => plan_query(query, &tables),
        Statement::Insert(insert) => plan_insert(insert, &tables),
        Statement::Update(update) => {
            let from = std::slice::from_ref(&update.table);
            plan_write(&tables, from, update.selection.as_ref())
        }
        Statement::Delete(delete) => {
            let from = match &delete.from {
                FromTable::WithFromKeyword(t) | FromTable::WithoutKeyword(t) => t.as_slice(),
            };
            plan_write(&tables, from, delete.selection.as_ref())
        }
        Statement::Copy {
            source,
            to,
            target,
            options,
            legacy_options,
            ..
        } => {
            let format = CopyFormat::from_options(options, legacy_options);
            plan_copy(source, *to, target, format, &tables)
        }
        Statement::Explain { statement, .. } => match plan_statement(statement, map) {
            Plan::Keyed {
                table, keys, write, ..
            } => Plan::Keyed {
                table,
                keys,
                write,
                merge: Merge::No("EXPLAIN merged across backends".into()),
            },
            plan @ (Plan::Any | Plan::Default) => plan,
            _ => Plan::Unsupported("EXPLAIN of a statement that spans backends".into()),
        },
        Statement::StartTransaction { .. } => Plan::Begin,
        Statement::Commit { chain: false, .. } => Plan::End { commit: true },
        Statement::Rollback {
            chain: false,
            savepoint: None,
        } => Plan::End { commit: false },
        Statement::Commit { .. }
        | Statement::Rollback { .. }
        | Statement::Savepoint { .. }
        | Statement::ReleaseSavepoint { .. } => Plan::Savepoint,
        s if is_session(s) => Plan::Session,
        // DDL and the rest: the same on every backend, so schemas stay alike.
        _ => Plan::All,
    }
}

fn is_session(s: &Statement) -> bool {
    matches!(
        s,
        Statement::Set(_)
            | Statement::ShowVariable { .. }
            | Statement::ShowVariables { .. }
            | Statement::Discard { .. }
            | Statement::Deallocate { .. }
            | Statement::Prepare { .. }
            | Statement::Execute { .. }
            | Statement::LISTEN { .. }
            | Statement::UNLISTEN { .. }
            | Statement::NOTIFY { .. }
    )
}

fn plan_query(query: &Query, tables: &Tables) -> Plan {
    let table = match tables.single() {
        Ok(Some(t)) => t.to_owned(),
        Ok(None) if has_dml(query) && tables.reference => return Plan::All,
        Ok(None) => return tables.unsharded(),
        Err(plan) => return plan,
    };
    let write = has_dml(query);
    let select = match query.body.as_ref() {
        SetExpr::Select(select) => Some(select),
        _ => None,
    };
    let keys = select.and_then(|s| {
        let key = &tables.map.tables[&table].key;
        key_sources(s.selection.as_ref()?, &table, key, &s.from)
    });
    match keys {
        Some(keys) => Plan::Keyed {
            table,
            keys,
            write,
            merge: match write {
                true => Merge::Concat,
                false => merge_of(query),
            },
        },
        None if write => Plan::All,
        None => Plan::Scatter {
            table,
            merge: merge_of(query),
        },
    }
}

fn plan_insert(insert: &sqlparser::ast::Insert, tables: &Tables) -> Plan {
    let TableObject::TableName(name) = &insert.table else {
        return Plan::Unsupported("INSERT into a table function".into());
    };
    let name = table_name(name);
    let Some(table) = tables.map.tables.get(&name) else {
        if tables.map.reference_tables.contains(&name) {
            return Plan::All;
        }
        return match tables.single() {
            Ok(None) => Plan::Default,
            // Reads a sharded table to insert elsewhere.
            _ => Plan::Unsupported(format!(
                "INSERT into \"{name}\" from a query on a sharded table"
            )),
        };
    };
    if tables.sharded.len() > 1 {
        return Plan::Unsupported(format!(
            "INSERT into sharded table \"{name}\" from a query on another sharded table"
        ));
    }
    let position = insert.columns.iter().position(|c| {
        c.0.last()
            .and_then(ObjectNamePart::as_ident)
            .is_some_and(|i| ident_is(i, &table.key))
    });
    let Some(position) = position else {
        return Plan::Unsupported(format!(
            "INSERT into sharded table \"{name}\" must list its key column \"{}\"",
            table.key
        ));
    };
    let rows = match insert.source.as_deref().map(|q| q.body.as_ref()) {
        Some(SetExpr::Values(values)) => &values.rows,
        _ => {
            return Plan::Unsupported(format!("INSERT into sharded table \"{name}\" needs VALUES"))
        }
    };
    let mut keys = Vec::with_capacity(rows.len());
    for row in rows {
        match row.get(position).and_then(source) {
            Some(key) => keys.push(key),
            None => {
                return Plan::Unsupported(format!(
                    "INSERT into sharded table \"{name}\": each row's key \"{}\" must be a \
                     constant or a parameter",
                    table.key
                ))
            }
        }
    }
    Plan::Insert {
        table: name,
        rows: keys,
    }
}

/// UPDATE or DELETE.
fn plan_write(tables: &Tables, from: &[TableWithJoins], selection: Option<&Expr>) -> Plan {
    let table = match tables.single() {
        Ok(Some(t)) => t.to_owned(),
        Ok(None) if tables.reference => return Plan::All,
        Ok(None) => return tables.unsharded(),
        Err(plan) => return plan,
    };
    let key = &tables.map.tables[&table].key;
    match selection.and_then(|s| key_sources(s, &table, key, from)) {
        Some(keys) => Plan::Keyed {
            table,
            keys,
            write: true,
            merge: Merge::Concat,
        },
        None => Plan::All,
    }
}

fn plan_copy(
    source: &CopySource,
    to: bool,
    target: &sqlparser::ast::CopyTarget,
    format: Result<CopyFormat, String>,
    tables: &Tables,
) -> Plan {
    let CopySource::Table {
        table_name: copied,
        columns,
    } = source
    else {
        // COPY (query) TO ...
        return match tables.single() {
            Ok(None) => tables.unsharded(),
            _ => Plan::Unsupported("COPY (query) on a sharded table".into()),
        };
    };
    let name = table_name(copied);
    if !tables.map.tables.contains_key(&name) {
        if tables.map.reference_tables.contains(&name) && !to {
            return Plan::Unsupported(format!("COPY into reference table \"{name}\" (use INSERT)"));
        }
        return if is_catalog(copied, &name) {
            Plan::Any
        } else {
            Plan::Default
        };
    }
    let stdio = matches!(
        target,
        sqlparser::ast::CopyTarget::Stdin | sqlparser::ast::CopyTarget::Stdout
    );
    if !stdio {
        return Plan::Unsupported(format!(
            "COPY of sharded table \"{name}\" to or from a file or program (use STDIN/STDOUT)"
        ));
    }
    // Binary COPY of a sharded table: each backend's stream has its own header and
    // trailer, so neither splitting nor concatenating works.
    let format = match format {
        Ok(format) => format,
        Err(why) => return Plan::Unsupported(why),
    };
    if to {
        return Plan::CopyOut {
            table: name,
            header: format.header,
        };
    }
    let key = &tables.map.tables[&name].key;
    let key_at = if columns.is_empty() {
        None
    } else {
        match columns.iter().position(|c| ident_is(c, key)) {
            Some(at) => Some(at),
            None => {
                return Plan::Unsupported(format!(
                    "COPY into sharded table \"{name}\" must include its key column \"{key}\""
                ))
            }
        }
    };
    Plan::CopyIn(CopyInto {
        table: name,
        key_at,
        format,
    })
}

/// Whether a query modifies data (a data-modifying WITH, or SELECT ... INTO).
fn has_dml(query: &Query) -> bool {
    let body_writes = |body: &SetExpr| {
        matches!(
            body,
            SetExpr::Insert(_) | SetExpr::Update(_) | SetExpr::Delete(_) | SetExpr::Merge(_)
        )
    };
    let into = matches!(query.body.as_ref(), SetExpr::Select(s) if s.into.is_some());
    into || body_writes(&query.body)
        || query.with.as_ref().is_some_and(|with| {
            with.cte_tables
                .iter()
                .any(|cte| body_writes(&cte.query.body) || has_dml(&cte.query))
        })
}
