//! An INSERT ... VALUES whose rows belong on several backends, rewritten into one
//! INSERT per backend holding only that backend's rows (the rows come from
//! `Decision::Split`). Only for statements whose values are written in the text (a
//! simple Query); parameters would need renumbering.

use sqlparser::ast::{SetExpr, Statement};
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
