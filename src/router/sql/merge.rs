//! How a read of a sharded table without its key merges the backends' replies into
//! the answer one database would give, or why it cannot yet.

use std::ops::ControlFlow;

use sqlparser::ast::{
    Distinct, Expr, GroupByExpr, LimitClause, ObjectNamePart, OrderByKind, OrderBySort, Query,
    SelectItem, SetExpr, Value,
};

use super::keys::source;
use super::plan::Source;
use super::tables::ident_name;

/// How the replies of a scatter read combine into the one answer PostgreSQL would
/// give.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Merge {
    /// Rows in any order: every backend's rows, one after another.
    Concat,
    /// Rows combined by the proxy: grouped, aggregated, ordered, limited.
    Combine(Box<Combine>),
    /// Not merged (yet): why.
    No(String),
}

/// How rows from every backend become the answer: rows with equal `Group` columns
/// combine (when `grouped`), each aggregate column folding its values; then they
/// are ordered and cut to OFFSET/LIMIT.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Combine {
    pub columns: Vec<Column>,
    /// Rows with equal grouping columns combine into one (aggregates, GROUP BY,
    /// DISTINCT).
    pub grouped: bool,
    pub order: Vec<SortKey>,
    pub limit: Option<Bound>,
    pub offset: Option<Bound>,
}

/// What an output column is, for combining rows.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Column {
    /// A plain value: part of the group.
    Group,
    Count,
    Sum,
    /// `avg(x)`: the backends return `sum(x)` and `count(x)` in its place, and the
    /// proxy divides (two backend columns).
    Avg,
    Min,
    Max,
}

/// A column the backends add at the end of the select list: the collation of a
/// value the proxy orders (`pg_collation_for`), so that text can be ordered as the
/// database orders it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Probe {
    /// Of ORDER BY item `i`.
    Sort(usize),
    /// Of min/max column `i`.
    Extreme(usize),
}

impl Combine {
    /// The collation probes the backends return after the select list, in order:
    /// one per ORDER BY item on a column that may be text, then one per min/max
    /// column. Types are known only from the reply, so any such column gets one.
    pub fn probes(&self) -> Vec<Probe> {
        let may_be_text = |c: usize| {
            matches!(
                self.columns.get(c),
                Some(Column::Group | Column::Min | Column::Max)
            )
        };
        let sorts = (0..self.order.len())
            .filter(|&i| may_be_text(self.order[i].column))
            .map(Probe::Sort);
        let extremes = self
            .columns
            .iter()
            .enumerate()
            .filter(|(_, c)| matches!(c, Column::Min | Column::Max))
            .map(|(i, _)| Probe::Extreme(i));
        sorts.chain(extremes).collect()
    }

    /// Where client column `i` starts among the backends' columns (each avg
    /// takes two).
    pub fn backend_column(&self, i: usize) -> usize {
        i + self.columns[..i.min(self.columns.len())]
            .iter()
            .filter(|c| **c == Column::Avg)
            .count()
    }

    /// How many columns the backends return before the probes.
    pub fn backend_width(&self) -> usize {
        self.backend_column(self.columns.len())
    }
}

/// One ORDER BY item: the output column it sorts by.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SortKey {
    /// Counted from 0 (`ORDER BY 2` is column 1 once decided).
    pub column: usize,
    /// `ORDER BY <position>`: the position, a literal of the statement, until decided.
    pub position: Option<Source>,
    pub descending: bool,
    pub nulls_first: bool,
    /// `ORDER BY x COLLATE c`: the collation as written.
    pub collation: Option<String>,
}

/// A LIMIT or OFFSET count: from the statement's literals until decided.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Bound {
    Source(Source),
    Value(u64),
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
    match combine_of(query) {
        Ok(None) => Merge::Concat,
        Ok(Some(combine)) => Merge::Combine(Box::new(combine)),
        Err(why) => Merge::No(format!(
            "a read without its key, or with keys on several backends, needs {why} merged \
             across backends"
        )),
    }
}

/// `Ok(None)`: plain concatenation will do.
fn combine_of(query: &Query) -> Result<Option<Combine>, &'static str> {
    let SetExpr::Select(select) = query.body.as_ref() else {
        return Err("a set operation (UNION ...)");
    };
    if query.with.is_some() {
        return Err("a WITH query");
    }
    if query.fetch.is_some() {
        return Err("FETCH FIRST");
    }
    if select.having.is_some() {
        return Err("HAVING over aggregates");
    }
    let distinct = match &select.distinct {
        None | Some(Distinct::All) => false,
        Some(Distinct::Distinct) => true,
        Some(Distinct::On(_)) => return Err("DISTINCT ON"),
    };
    let mut window = false;
    let mut aggregates = 0;
    let _ = sqlparser::ast::visit_expressions(&select.projection, |e| {
        if let Expr::Function(f) = e {
            window |= f.over.is_some();
            aggregates += usize::from(AGGREGATES.contains(&function_name(f).as_str()));
        }
        ControlFlow::<()>::Continue(())
    });
    if window {
        return Err("a window function");
    }
    let group_by: &[Expr] = match &select.group_by {
        GroupByExpr::Expressions(e, modifiers) if modifiers.is_empty() => e,
        _ => return Err("GROUP BY ALL or grouping sets"),
    };
    let mut columns = Vec::with_capacity(select.projection.len());
    let mut names = Vec::with_capacity(select.projection.len());
    let mut exprs = Vec::with_capacity(select.projection.len());
    let mut simple_aggregates = 0;
    for item in &select.projection {
        let (expr, alias) = match item {
            SelectItem::UnnamedExpr(e) => (e, None),
            SelectItem::ExprWithAlias { expr, alias } => (expr, Some(ident_name(alias))),
            _ if aggregates > 0 || distinct || !group_by.is_empty() => {
                return Err("`*` with aggregates, GROUP BY or DISTINCT")
            }
            // `*`: concatenation, if nothing has to find a column.
            _ => {
                if query.order_by.is_some() {
                    return Err("ORDER BY with `*` in the select list");
                }
                return Ok(limits(query)?.map(|(limit, offset)| Combine {
                    columns: Vec::new(),
                    grouped: false,
                    order: Vec::new(),
                    limit,
                    offset,
                }));
            }
        };
        let column = aggregate_column(expr)?;
        simple_aggregates += usize::from(column != Column::Group);
        columns.push(column);
        names.push(alias.or_else(|| output_name(expr)));
        exprs.push(expr.to_string());
    }
    if simple_aggregates != aggregates {
        return Err(
            "aggregates inside expressions, or aggregates other than count, sum, avg, min \
             and max",
        );
    }
    // Each grouping value must be in the select list, or rows of different groups
    // would merge.
    for g in group_by {
        if !exprs.contains(&g.to_string()) {
            return Err("GROUP BY an expression not in the select list");
        }
    }
    if aggregates > 0 && columns.contains(&Column::Group) && group_by.is_empty() {
        return Err("columns outside aggregates without GROUP BY");
    }
    let mut order = Vec::new();
    if let Some(order_by) = &query.order_by {
        let OrderByKind::Expressions(items) = &order_by.kind else {
            return Err("ORDER BY ALL");
        };
        for item in items {
            let (expr, collation) = match &item.expr {
                Expr::Collate { expr, collation } => (expr.as_ref(), Some(collation.to_string())),
                e => (e, None),
            };
            let position = match source(expr) {
                Some(s @ (Source::Literal(_) | Source::Constant(_))) => Some(s),
                _ => None,
            };
            let column = match position {
                Some(_) => 0,
                None => sort_column(expr, &names, &exprs)
                    .ok_or("ORDER BY an expression not in the select list")?,
            };
            let descending = match item.options.sort {
                None | Some(OrderBySort::Asc) => false,
                Some(OrderBySort::Desc) => true,
                Some(OrderBySort::Using(_)) => return Err("ORDER BY USING"),
            };
            order.push(SortKey {
                column,
                position,
                descending,
                // PostgreSQL: NULLs sort as if larger than any value.
                nulls_first: item.options.nulls_first.unwrap_or(descending),
                collation,
            });
        }
    }
    let grouped = aggregates > 0 || distinct || !group_by.is_empty();
    let (limit, offset) = limits(query)?.unwrap_or((None, None));
    if !grouped && order.is_empty() && limit.is_none() && offset.is_none() {
        return Ok(None);
    }
    Ok(Some(Combine {
        columns,
        grouped,
        order,
        limit,
        offset,
    }))
}

/// LIMIT and OFFSET, if any: `Ok(None)` when neither is there.
#[allow(clippy::type_complexity)]
fn limits(query: &Query) -> Result<Option<(Option<Bound>, Option<Bound>)>, &'static str> {
    let bound = |e: &Expr| match source(e) {
        Some(s @ (Source::Literal(_) | Source::Constant(_) | Source::Param(_))) => {
            Ok(Bound::Source(s))
        }
        _ => Err("LIMIT or OFFSET other than a number or a parameter"),
    };
    match &query.limit_clause {
        None => Ok(None),
        Some(LimitClause::LimitOffset {
            limit,
            offset,
            limit_by,
        }) if limit_by.is_empty() => {
            // LIMIT ALL / LIMIT NULL mean no limit.
            let limit = match limit {
                Some(Expr::Value(v)) if matches!(v.value, Value::Null) => None,
                Some(e) => Some(bound(e)?),
                None => None,
            };
            let offset = offset.as_ref().map(|o| bound(&o.value)).transpose()?;
            Ok(Some((limit, offset)))
        }
        Some(_) => Err("this LIMIT form"),
    }
}

/// The aggregate a select-list expression is, if it is exactly one of those the
/// proxy can fold (else `Group`).
fn aggregate_column(expr: &Expr) -> Result<Column, &'static str> {
    let Expr::Function(f) = expr else {
        return Ok(Column::Group);
    };
    let column = match function_name(f).as_str() {
        "count" => Column::Count,
        "sum" => Column::Sum,
        "avg" => Column::Avg,
        "min" => Column::Min,
        "max" => Column::Max,
        _ => return Ok(Column::Group),
    };
    let args = f.args.to_string().to_ascii_lowercase();
    if f.filter.is_some() || args.starts_with("(distinct") || args.contains("order by") {
        return Err("aggregates with DISTINCT, FILTER or ORDER BY");
    }
    Ok(column)
}

fn function_name(f: &sqlparser::ast::Function) -> String {
    f.name
        .0
        .last()
        .and_then(ObjectNamePart::as_ident)
        .map(ident_name)
        .unwrap_or_default()
}

/// The name PostgreSQL gives an unaliased output column, when it is a column.
fn output_name(expr: &Expr) -> Option<String> {
    match expr {
        Expr::Identifier(ident) => Some(ident_name(ident)),
        Expr::CompoundIdentifier(parts) => parts.last().map(ident_name),
        _ => None,
    }
}

/// The output column an ORDER BY item names: by output name, or by the same
/// expression.
fn sort_column(expr: &Expr, names: &[Option<String>], exprs: &[String]) -> Option<usize> {
    if let Expr::Identifier(ident) = expr {
        let name = ident_name(ident);
        if let Some(at) = names
            .iter()
            .position(|n| n.as_deref() == Some(name.as_str()))
        {
            return Some(at);
        }
    }
    let text = expr.to_string();
    exprs.iter().position(|e| *e == text)
}
