//! An INSERT ... VALUES whose rows belong on several backends, rewritten into one
//! INSERT per backend holding only that backend's rows (the rows come from
//! `Decision::Split`): with the values written out (a simple Query), or with
//! parameters, renumbered for each part (an extended-protocol batch).

use std::collections::BTreeSet;
use std::ops::ControlFlow;

use sqlparser::ast::{Expr, Insert, SetExpr, Statement, Value};
use sqlparser::dialect::PostgreSqlDialect;
use sqlparser::parser::Parser;

use super::shardmap::BackendId;

/// One statement per backend, or `None` when `sql` is not a single INSERT ...
/// VALUES with parameters-free rows matching `split`.
pub fn split_insert(
    sql: &str,
    split: &[(BackendId, Vec<usize>)],
) -> Option<Vec<(BackendId, String)>> {
    if sql.contains('$') {
        // Parameters (see `split_insert_params`), or dollar quoting.
        return None;
    }
    let parts = parts(sql, split)?;
    Some(
        parts
            .into_iter()
            .map(|(backend, insert)| (backend, Statement::Insert(insert).to_string()))
            .collect(),
    )
}

/// One statement per backend for an INSERT whose rows hold parameters: each part
/// keeps its rows, and the parameters it uses (in its rows or anywhere else, as in
/// RETURNING) are renumbered `$1`, `$2` ... in their original order. With each
/// part, the original parameters (0-based) it takes, in their new order.
pub fn split_insert_params(
    sql: &str,
    split: &[(BackendId, Vec<usize>)],
) -> Option<Vec<(BackendId, String, Vec<usize>)>> {
    let mut out = Vec::with_capacity(split.len());
    for (backend, insert) in parts(sql, split)? {
        let mut statement = Statement::Insert(insert);
        let used: Vec<usize> = placeholders(&statement)?.into_iter().collect();
        let _ = sqlparser::ast::visit_expressions_mut(&mut statement, |e| {
            if let Expr::Value(v) = e {
                if let Value::Placeholder(p) = &mut v.value {
                    if let Some(new) = param_index(p).and_then(|i| used.binary_search(&i).ok()) {
                        *p = format!("${}", new + 1);
                    }
                }
            }
            ControlFlow::<()>::Continue(())
        });
        out.push((backend, statement.to_string(), used));
    }
    Some(out)
}

/// The INSERT cut into one per backend, each with its rows only.
fn parts(sql: &str, split: &[(BackendId, Vec<usize>)]) -> Option<Vec<(BackendId, Insert)>> {
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
        out.push((*backend, part));
    }
    Some(out)
}

/// `$n` as a 0-based parameter index.
fn param_index(placeholder: &str) -> Option<usize> {
    placeholder
        .strip_prefix('$')?
        .parse::<usize>()
        .ok()?
        .checked_sub(1)
}

/// The parameters a statement uses; `None` for a placeholder that is not `$n`.
fn placeholders(statement: &Statement) -> Option<BTreeSet<usize>> {
    let mut out = BTreeSet::new();
    let mut bad = false;
    let _ = sqlparser::ast::visit_expressions(statement, |e| {
        if let Expr::Value(v) = e {
            if let Value::Placeholder(p) = &v.value {
                match param_index(p) {
                    Some(i) => {
                        out.insert(i);
                    }
                    None => bad = true,
                }
            }
        }
        ControlFlow::<()>::Continue(())
    });
    (!bad).then_some(out)
}

#[cfg(test)]
mod tests {
    use super::{split_insert, split_insert_params};

    #[test]
    fn parameters_are_renumbered_per_part() {
        let sql = "INSERT INTO t (k, v) VALUES ($1, $2), ($3, $4), ($5, upper($6)) \
                   RETURNING k, $7::text";
        let parts = split_insert_params(sql, &[(0, vec![0, 2]), (2, vec![1])]).unwrap();
        assert_eq!(
            parts[0],
            (
                0,
                "INSERT INTO t (k, v) VALUES ($1, $2), ($3, upper($4)) RETURNING k, $5::TEXT"
                    .to_string(),
                vec![0, 1, 4, 5, 6]
            )
        );
        assert_eq!(
            parts[1],
            (
                2,
                "INSERT INTO t (k, v) VALUES ($1, $2) RETURNING k, $3::TEXT".to_string(),
                vec![2, 3, 6]
            )
        );
        assert!(split_insert_params("SELECT $1", &[(0, vec![0])]).is_none());
        assert!(split_insert_params("INSERT INTO t (k) VALUES ($1)", &[(0, vec![3])]).is_none());
    }

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
