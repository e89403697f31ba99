//! Where a statement pins its sharding key: `key = v`, `v = key` or `key IN (...)`
//! under ANDs, on the table or its alias, the value a literal or a parameter.

use sqlparser::ast::{
    BinaryOperator, Expr, InTarget, TableFactor, TableWithJoins, UnaryOperator, Value,
};

use super::lexer::LITERAL_BASE;
use super::plan::Source;
use super::tables::{ident_is, ident_name, table_name};

/// The key values `selection` pins `table.key` to: `key = v`, `v = key` or
/// `key IN (v, ...)`, possibly inside ANDs. `None`: not pinned.
pub(super) fn key_sources(
    selection: &Expr,
    table: &str,
    key: &str,
    from: &[TableWithJoins],
) -> Option<Vec<Source>> {
    let names = names_of(table, from);
    find_keys(selection, key, &names)
}

fn find_keys(expr: &Expr, key: &str, names: &[String]) -> Option<Vec<Source>> {
    match expr {
        Expr::Nested(inner) => find_keys(inner, key, names),
        Expr::BinaryOp {
            left,
            op: BinaryOperator::And,
            right,
        } => find_keys(left, key, names).or_else(|| find_keys(right, key, names)),
        Expr::BinaryOp {
            left,
            op: BinaryOperator::Eq,
            right,
        } => {
            if is_key(left, key, names) {
                source(right).map(|s| vec![s])
            } else if is_key(right, key, names) {
                source(left).map(|s| vec![s])
            } else {
                None
            }
        }
        Expr::In {
            expr,
            target: InTarget::List(list),
            negated: false,
            ..
        } if is_key(expr, key, names) && !list.is_empty() => {
            list.iter().map(source).collect::<Option<Vec<_>>>()
        }
        _ => None,
    }
}

/// The names a column of `table` may be qualified with: the table and its aliases.
fn names_of(table: &str, from: &[TableWithJoins]) -> Vec<String> {
    let mut names = vec![table.to_owned()];
    let factors = from
        .iter()
        .flat_map(|t| std::iter::once(&t.relation).chain(t.joins.iter().map(|j| &j.relation)));
    for factor in factors {
        if let TableFactor::Table {
            name,
            alias: Some(alias),
            ..
        } = factor
        {
            if table_name(name) == table {
                names.push(ident_name(&alias.name));
            }
        }
    }
    names
}

fn is_key(expr: &Expr, key: &str, names: &[String]) -> bool {
    match expr {
        Expr::Nested(inner) => is_key(inner, key, names),
        Expr::Identifier(ident) => ident_is(ident, key),
        Expr::CompoundIdentifier(parts) => match parts.as_slice() {
            [.., qualifier, column] => {
                ident_is(column, key) && names.contains(&ident_name(qualifier))
            }
            [column] => ident_is(column, key),
            [] => false,
        },
        _ => false,
    }
}

/// A key value the router can read: a literal or parameter, maybe cast or negated.
pub(super) fn source(expr: &Expr) -> Option<Source> {
    match expr {
        Expr::Nested(inner) | Expr::Cast { expr: inner, .. } => source(inner),
        Expr::UnaryOp {
            op: UnaryOperator::Minus,
            expr,
        } => match source(expr)? {
            Source::Literal(i) => Some(Source::NegLiteral(i)),
            Source::Constant(c) => Some(Source::NegConstant(c)),
            _ => None,
        },
        Expr::Value(v) => match &v.value {
            Value::Number(n, _) => Some(Source::Constant(n.to_string())),
            Value::SingleQuotedString(s) | Value::EscapedStringLiteral(s) => {
                Some(Source::Constant(s.clone()))
            }
            Value::Placeholder(p) => {
                let n: u32 = p.strip_prefix('$')?.parse().ok()?;
                if n >= LITERAL_BASE {
                    Some(Source::Literal((n - LITERAL_BASE) as usize))
                } else {
                    n.checked_sub(1).map(|i| Source::Param(i as usize))
                }
            }
            _ => None,
        },
        _ => None,
    }
}
