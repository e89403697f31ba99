//! A keyless read rewritten for the backends when the proxy merges it
//! (`merge::Combine`): each `avg(x)` becomes `sum(x), count(x)`; the collation
//! probes (`pg_collation_for`) go at the end of the select list; a grouped read
//! loses ORDER BY, LIMIT and OFFSET (the proxy applies them to the merged groups);
//! any other read loses its OFFSET and gets LIMIT limit + offset.

use std::collections::BTreeSet;
use std::ops::ControlFlow;

use sqlparser::ast::{
    Expr, Ident, LimitClause, ObjectName, ObjectNamePart, SelectItem, SetExpr, Statement, Value,
};
use sqlparser::dialect::PostgreSqlDialect;
use sqlparser::parser::Parser;

use super::sql::merge::{Column, Combine, Probe};

/// A keyless read as the backends run it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Scatter {
    pub sql: String,
    /// Parameters (0-based) only the removed LIMIT/OFFSET used: the server must be
    /// told their type (int8, as LIMIT gives them) when the client did not say.
    pub unused_params: Vec<usize>,
}

/// `Some(None)`: the read goes as it is; `Some(Some(_))`: rewritten; `None`: it
/// cannot be rewritten (the caller refuses it).
pub fn scatter_sql(sql: &str, combine: &Combine) -> Option<Option<Scatter>> {
    let probes = combine.probes();
    let avg = combine.columns.contains(&Column::Avg);
    let cut = match combine.grouped {
        true => combine.limit.is_some() || combine.offset.is_some() || !combine.order.is_empty(),
        false => combine.offset.is_some(),
    };
    if !avg && probes.is_empty() && !cut {
        return Some(None);
    }
    let statements = Parser::parse_sql(&PostgreSqlDialect {}, sql).ok()?;
    let [Statement::Query(original)] = statements.as_slice() else {
        return None;
    };
    let mut query = original.clone();
    let SetExpr::Select(select) = query.body.as_mut() else {
        return None;
    };
    if avg || !probes.is_empty() {
        if select.projection.len() != combine.columns.len() {
            return None;
        }
        let exprs: Vec<Expr> = select
            .projection
            .iter()
            .map(|item| match item {
                SelectItem::UnnamedExpr(e) | SelectItem::ExprWithAlias { expr: e, .. } => {
                    Some(e.clone())
                }
                _ => None,
            })
            .collect::<Option<_>>()?;
        let mut items = Vec::with_capacity(select.projection.len() + probes.len() + 1);
        for (item, column) in select.projection.iter().zip(&combine.columns) {
            match (column, item) {
                (Column::Avg, SelectItem::UnnamedExpr(e)) => {
                    items.extend(avg_parts(e, Ident::new("avg"))?)
                }
                (Column::Avg, SelectItem::ExprWithAlias { expr, alias }) => {
                    items.extend(avg_parts(expr, alias.clone())?)
                }
                (Column::Avg, _) => return None,
                _ => items.push(item.clone()),
            }
        }
        for probe in probes {
            let (column, collation) = match probe {
                Probe::Sort(i) => {
                    let key = combine.order.get(i)?;
                    (key.column, key.collation.as_deref())
                }
                Probe::Extreme(c) => (c, None),
            };
            items.push(SelectItem::UnnamedExpr(probe_expr(
                exprs.get(column)?,
                collation,
            )?));
        }
        select.projection = items;
    }
    if combine.grouped {
        query.order_by = None;
        query.limit_clause = None;
    } else if combine.offset.is_some() {
        query.limit_clause = raised_limit(query.limit_clause.as_ref())?;
    }
    let before = placeholders_of(original);
    let rewritten = Statement::Query(query);
    let after = placeholders_of(&rewritten);
    let in_limits = original
        .limit_clause
        .as_ref()
        .map(placeholders_of)
        .unwrap_or_default();
    let unused: Vec<usize> = before.difference(&after).copied().collect();
    if unused.iter().any(|p| !in_limits.contains(p)) {
        // Only LIMIT/OFFSET parameters may go (their type is known).
        return None;
    }
    Some(Some(Scatter {
        sql: rewritten.to_string(),
        unused_params: unused,
    }))
}

/// `sum(x) AS name, count(x)` for `avg(x)`.
fn avg_parts(expr: &Expr, alias: Ident) -> Option<[SelectItem; 2]> {
    let Expr::Function(f) = expr else {
        return None;
    };
    let renamed = |name: &str| {
        let mut g = f.clone();
        g.name = ObjectName(vec![ObjectNamePart::Identifier(Ident::new(name))]);
        Expr::Function(g)
    };
    Some([
        SelectItem::ExprWithAlias {
            expr: renamed("sum"),
            alias,
        },
        SelectItem::UnnamedExpr(renamed("count")),
    ])
}

/// `pg_collation_for(CAST((e) AS TEXT) [COLLATE c])`: the collation a value of `e`
/// sorts by (the cast keeps a text value's collation and makes any other type's
/// value collatable, so the probe never fails).
fn probe_expr(expr: &Expr, collation: Option<&str>) -> Option<Expr> {
    let collate = collation
        .map(|c| format!(" COLLATE {c}"))
        .unwrap_or_default();
    let text = format!("pg_collation_for(CAST(({expr}) AS TEXT){collate})");
    Parser::new(&PostgreSqlDialect {})
        .try_with_sql(&text)
        .ok()?
        .parse_expr()
        .ok()
}

/// The LIMIT for backends when the proxy applies the OFFSET: limit + offset, no
/// OFFSET (and no LIMIT when there was none, or LIMIT ALL / NULL).
fn raised_limit(clause: Option<&LimitClause>) -> Option<Option<LimitClause>> {
    let Some(LimitClause::LimitOffset {
        limit,
        offset: Some(offset),
        limit_by,
    }) = clause
    else {
        return None;
    };
    let limit = match limit {
        Some(Expr::Value(v)) if v.value == Value::Null => return Some(None),
        Some(limit) => limit,
        None => return Some(None),
    };
    let number = |e: &Expr| match e {
        Expr::Value(v) => match &v.value {
            Value::Number(n, _) => n.parse::<u64>().ok(),
            _ => None,
        },
        _ => None,
    };
    let raised = match (number(limit), number(&offset.value)) {
        (Some(l), Some(o)) => Expr::value(Value::Number(l.saturating_add(o).to_string(), false)),
        // Parameters stay referenced, so the statement reads the same every time
        // (NULL + n is NULL: no limit, which is still right).
        _ => {
            let text = format!(
                "CAST(({limit}) AS BIGINT) + CAST(({}) AS BIGINT)",
                offset.value
            );
            Parser::new(&PostgreSqlDialect {})
                .try_with_sql(&text)
                .ok()?
                .parse_expr()
                .ok()?
        }
    };
    Some(Some(LimitClause::LimitOffset {
        limit: Some(raised),
        offset: None,
        limit_by: limit_by.clone(),
    }))
}

/// The parameters (`$n`, 0-based) an AST node uses.
fn placeholders_of<V: sqlparser::ast::Visit>(node: &V) -> BTreeSet<usize> {
    let mut out = BTreeSet::new();
    let _ = sqlparser::ast::visit_expressions(node, |e| {
        if let Expr::Value(v) = e {
            if let Value::Placeholder(p) = &v.value {
                if let Some(n) = p.strip_prefix('$').and_then(|n| n.parse::<usize>().ok()) {
                    out.insert(n.saturating_sub(1));
                }
            }
        }
        ControlFlow::<()>::Continue(())
    });
    out
}

#[cfg(test)]
#[path = "scatter_tests.rs"]
mod tests;
