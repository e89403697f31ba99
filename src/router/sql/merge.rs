//! How a read of a sharded table without its key merges the backends' replies into
//! the answer one database would give, or why it cannot yet.

use std::ops::ControlFlow;

use sqlparser::ast::{Expr, GroupByExpr, ObjectNamePart, Query, SelectItem, SetExpr};

use super::plan::ident_name;

/// How the replies of a scatter read combine into the one answer PostgreSQL would
/// give.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Merge {
    /// Rows in any order: every backend's rows, one after another.
    Concat,
    /// Only `count(...)` columns and no grouping: each column summed.
    Count,
    /// Not merged (yet): why.
    No(String),
}

/// Aggregate functions PostgreSQL ships (a user-defined aggregate is not known by
/// name, see the README).
const AGGREGATES: &[&str] = &[
    "count",
    "sum",
    "avg",
    "min",
    "max",
    "array_agg",
    "string_agg",
    "bool_and",
    "bool_or",
    "every",
    "bit_and",
    "bit_or",
    "bit_xor",
    "json_agg",
    "jsonb_agg",
    "json_object_agg",
    "jsonb_object_agg",
    "xmlagg",
    "stddev",
    "stddev_pop",
    "stddev_samp",
    "variance",
    "var_pop",
    "var_samp",
    "corr",
    "covar_pop",
    "covar_samp",
    "regr_avgx",
    "regr_avgy",
    "regr_count",
    "regr_intercept",
    "regr_r2",
    "regr_slope",
    "regr_sxx",
    "regr_sxy",
    "regr_syy",
    "mode",
    "percentile_cont",
    "percentile_disc",
    "rank",
    "dense_rank",
    "percent_rank",
    "cume_dist",
    "range_agg",
    "range_intersect_agg",
    "any_value",
];

/// How a keyless read's replies merge.
pub(super) fn merge_of(query: &Query) -> Merge {
    let no = |why: &str| {
        Merge::No(format!(
            "a read without its key needs {why} merged across backends"
        ))
    };
    let SetExpr::Select(select) = query.body.as_ref() else {
        return no("a set operation (UNION ...)");
    };
    if query.with.is_some() {
        return no("a WITH query");
    }
    if query.order_by.is_some() || query.limit_clause.is_some() || query.fetch.is_some() {
        return no("ORDER BY / LIMIT");
    }
    if select.distinct.is_some() {
        return no("DISTINCT");
    }
    if select.having.is_some() {
        return no("HAVING");
    }
    let grouped = !matches!(&select.group_by, GroupByExpr::Expressions(e, _) if e.is_empty());
    if grouped {
        return no("GROUP BY");
    }
    let mut functions = Vec::new();
    let _ = sqlparser::ast::visit_expressions(&select.projection, |e| {
        if let Expr::Function(f) = e {
            let name = f
                .name
                .0
                .last()
                .and_then(ObjectNamePart::as_ident)
                .map(ident_name);
            functions.push((name.unwrap_or_default(), f.over.is_some(), e.clone()));
        }
        ControlFlow::<()>::Continue(())
    });
    if functions.iter().any(|(_, window, _)| *window) {
        return no("a window function");
    }
    let aggregates = functions
        .iter()
        .filter(|(name, _, _)| AGGREGATES.contains(&name.as_str()))
        .count();
    if aggregates == 0 {
        return Merge::Concat;
    }
    // Every column exactly count(...), nothing around it.
    let counts = select.projection.iter().all(|item| {
        let expr = match item {
            SelectItem::UnnamedExpr(e) => e,
            SelectItem::ExprWithAlias { expr, .. } => expr,
            _ => return false,
        };
        matches!(expr, Expr::Function(f)
            if f.over.is_none()
                && f.filter.is_none()
                && f.name.0.last().and_then(ObjectNamePart::as_ident).map(ident_name).as_deref() == Some("count")
                && !format!("{}", f.args).to_ascii_lowercase().starts_with("(distinct"))
    });
    if counts {
        Merge::Count
    } else {
        no("aggregates other than count(*)")
    }
}
