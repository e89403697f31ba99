//! An INSERT ... VALUES whose rows belong on several backends, rewritten into one
//! INSERT per backend holding only that backend's rows (the rows come from
//! `Decision::Split`). Only for statements whose values are written in the text (a
//! simple Query); parameters would need renumbering.

use sqlparser::ast::{Expr, LimitClause, SetExpr, Statement, Value};
use sqlparser::dialect::PostgreSqlDialect;
use sqlparser::parser::Parser;

use super::shardmap::BackendId;
use super::sql::merge::{Bound, Combine};

/// One statement per backend, or `None` when `sql` is not a single INSERT ...
/// VALUES with parameters-free rows matching `split`.
pub fn split_insert(
    sql: &str,
    split: &[(BackendId, Vec<usize>)],
) -> Option<Vec<(BackendId, String)>> {
    if sql.contains('$') {
        // Parameters, or dollar quoting that would not survive re-rendering.
        return None;
    }
    let statements = Parser::parse_sql(&PostgreSqlDialect {}, sql).ok()?;
    let [Statement::Insert(insert)] = statements.as_slice() else {
        return None;
    };
    let SetExpr::Values(values) = insert.source.as_ref()?.body.as_ref() else {
        return None;
    };
    let total = values.rows.len();
    let mut out = Vec::with_capacity(split.len());
    for (backend, rows) in split {
        if rows.iter().any(|&r| r >= total) {
            return None;
        }
        let mut part = insert.clone();
        let mut query = part.source.take()?;
        let SetExpr::Values(mut subset) = *query.body else {
            return None;
        };
        subset.rows = rows.iter().map(|&r| values.rows[r].clone()).collect();
        query.body = Box::new(SetExpr::Values(subset));
        part.source = Some(query);
        out.push((*backend, Statement::Insert(part).to_string()));
    }
    Some(out)
}

/// A keyless read for every backend when the proxy applies its OFFSET and LIMIT:
/// `Ok(None)`-like `Some(None)` when it can go as is; `Some(Some(sql))` rewritten
/// (no OFFSET, LIMIT raised to LIMIT + OFFSET, or none at all when rows combine
/// by group); `None` when it cannot be rewritten.
pub fn scatter_limit(sql: &str, combine: &Combine) -> Option<Option<String>> {
    let value = |b: &Option<Bound>| match b {
        Some(Bound::Value(n)) => Some(Some(*n)),
        None => Some(None),
        Some(Bound::Source(_)) => None,
    };
    let (limit, offset) = (value(&combine.limit)?, value(&combine.offset)?);
    let needed = match (limit, offset.unwrap_or(0)) {
        _ if combine.grouped => None,
        (Some(n), m) => Some(n.saturating_add(m)),
        (None, _) => None,
    };
    if offset.unwrap_or(0) == 0 && needed == limit {
        return Some(None);
    }
    if sql.contains('$') {
        // Dollar quoting would not survive re-rendering.
        return None;
    }
    let statements = Parser::parse_sql(&PostgreSqlDialect {}, sql).ok()?;
    let [Statement::Query(query)] = statements.as_slice() else {
        return None;
    };
    let mut query = query.clone();
    query.limit_clause = needed.map(|n| LimitClause::LimitOffset {
        limit: Some(Expr::value(Value::Number(n.to_string(), false))),
        offset: None,
        limit_by: Vec::new(),
    });
    Some(Some(Statement::Query(query).to_string()))
}

#[cfg(test)]
mod tests {
    use super::split_insert;

    #[test]
    fn rows_go_to_their_backends() {
        let sql = "INSERT INTO t (k, v) VALUES (1, 'a'), (2, 'it''s'), (3, E'x\\ny') RETURNING k";
        let parts = split_insert(sql, &[(0, vec![0, 2]), (3, vec![1])]).unwrap();
        assert_eq!(parts.len(), 2);
        assert_eq!(parts[0].0, 0);
        assert!(
            parts[0].1.contains("(1, 'a')") && parts[0].1.contains("(3, "),
            "{}",
            parts[0].1
        );
        assert!(!parts[0].1.contains("(2, "), "{}", parts[0].1);
        assert!(parts[1].1.contains("(2, 'it''s')"), "{}", parts[1].1);
        assert!(parts[1].1.ends_with("RETURNING k"), "{}", parts[1].1);
        assert!(split_insert("INSERT INTO t (k) VALUES ($1), ($2)", &[(0, vec![0])]).is_none());
        assert!(split_insert("UPDATE t SET k = 1", &[(0, vec![0])]).is_none());
        assert!(split_insert("INSERT INTO t (k) VALUES (1)", &[(0, vec![5])]).is_none());
    }
}
