//! Rows of a keyless read from every backend made into the one answer PostgreSQL
//! would give (`router::sql::merge::Combine`): grouped, aggregates folded (count,
//! sum, avg, min, max), ordered on output columns, cut to OFFSET/LIMIT. Pure:
//! frames in, frames out; a value the proxy cannot compare or add is an error,
//! never a guess.
//!
//! Values come in text or binary format, as the client asked (the RowDescription
//! says which). Ordering compares by each column's type (`values.rs`); text under
//! a collation other than "C", and dates and times in text, are ranked by a
//! backend (`rank.rs`) between `Gathered::new` and `Gathered::finish`.

use std::cmp::Ordering;
use std::collections::HashMap;

use bytes::{Bytes, BytesMut};

use crate::protocol::messages;
use crate::router::sql::merge::{Column, Combine, Probe};

mod avg;
mod frames;
mod numeric;
mod rank;
mod values;

use avg::{avg, avg_type};
use frames::{data_row, describe, fields, retyped};
pub use rank::RankRequest;
use values::{Kind, Type};

type Row = Vec<Option<Bytes>>;

/// Every backend's rows of a merged read, read and checked.
pub struct Gathered<'a> {
    spec: &'a Combine,
    /// The backends' columns: each field's bytes (of the first RowDescription)
    /// and type.
    fields: Vec<(Bytes, Type)>,
    rows: Vec<Row>,
    /// How each probe's column orders (`Combine::probes` order).
    orders: Vec<Order>,
    requests: Vec<RankRequest>,
}

/// How the values of one column order.
#[derive(Debug, Clone, Copy)]
enum Order {
    Local(Type),
    Bytes,
    /// By the ranks of rank request `i`.
    Ranked(usize),
    /// Not at all (the type is not one the proxy compares).
    Not,
}

/// The merged answer: the RowDescription the client sees, the DataRows, and
/// their count.
pub struct Combined {
    pub description: Bytes,
    pub rows: BytesMut,
    pub count: usize,
}

impl Combined {
    /// RowDescription, DataRows and CommandComplete, as a simple Query answers.
    pub fn into_reply(self) -> BytesMut {
        let mut out = BytesMut::from(&self.description[..]);
        out.extend_from_slice(&self.rows);
        messages::command_complete(&mut out, &format!("SELECT {}", self.count));
        out
    }
}

impl<'a> Gathered<'a> {
    /// From each backend's reply frames: the first RowDescription (the backends'
    /// columns: the client's, with avg as sum and count, then the probes) and every
    /// DataRow.
    pub fn new(replies: &[Vec<Bytes>], spec: &'a Combine) -> Result<Gathered<'a>, String> {
        let description = replies
            .iter()
            .flatten()
            .find(|f| f.first() == Some(&b'T'))
            .ok_or("a backend returned no rows description")?;
        let fields = fields(description).ok_or("a malformed row description")?;
        let mut rows: Vec<Row> = Vec::new();
        for frame in replies
            .iter()
            .flatten()
            .filter(|f| f.first() == Some(&b'D'))
        {
            let values = messages::data_row_values(frame.get(5..).unwrap_or_default())
                .ok_or("a malformed data row")?;
            if values.len() != fields.len() {
                return Err("rows of different widths".into());
            }
            rows.push(
                values
                    .into_iter()
                    .map(|v| v.map(|v| frame.slice_ref(v)))
                    .collect(),
            );
        }
        let probes = spec.probes();
        if spec.grouped {
            let groups = spec.columns.iter().enumerate();
            for (c, _) in groups.filter(|(_, c)| **c == Column::Group) {
                let ty = fields.get(spec.backend_column(c)).map(|(_, t)| *t);
                if let Some(ty) = ty.filter(|t| !t.groups()) {
                    return Err(format!(
                        "GROUP BY or DISTINCT on a column of a type (oid {}) whose equal \
                         values may differ in form across backends",
                        ty.oid
                    ));
                }
            }
        }
        let expected = match spec.columns.is_empty() {
            true => fields.len(),
            false => spec.backend_width() + probes.len(),
        };
        if fields.len() != expected {
            return Err("a select list of unexpected width".into());
        }
        let mut gathered = Gathered {
            spec,
            fields,
            rows,
            orders: Vec::with_capacity(probes.len()),
            requests: Vec::new(),
        };
        let mut asked: HashMap<(usize, Option<String>), usize> = HashMap::new();
        for (i, probe) in probes.iter().enumerate() {
            let column = match *probe {
                Probe::Sort(k) => spec.order[k].column,
                Probe::Extreme(c) => c,
            };
            let order = gathered.order_of(spec.backend_column(column), i, &mut asked)?;
            gathered.orders.push(order);
        }
        Ok(gathered)
    }

    /// How backend column `at` orders, asking for ranks where a backend must
    /// order it (`probe`: the probe column giving its collation).
    fn order_of(
        &mut self,
        at: usize,
        probe: usize,
        asked: &mut HashMap<(usize, Option<String>), usize>,
    ) -> Result<Order, String> {
        let ty = self.fields[at].1;
        if ty.compares() {
            return Ok(Order::Local(ty));
        }
        if !ty.ranked() {
            return Ok(Order::Not);
        }
        let collation = match ty.kind {
            Kind::Collated => {
                let probe_at = self.spec.backend_width() + probe;
                let mut names = self.rows.iter().filter_map(|r| r[probe_at].as_ref());
                let Some(first) = names.next() else {
                    // No rows: nothing to order.
                    return Ok(Order::Bytes);
                };
                if names.any(|n| n != first) {
                    return Err("backends disagree on a column's collation".into());
                }
                let name = rank::collation_name(first).ok_or("an unexpected collation name")?;
                if rank::bytewise(&name) {
                    return Ok(Order::Bytes);
                }
                Some(name)
            }
            _ => None,
        };
        let key = (at, collation.clone());
        if let Some(&i) = asked.get(&key) {
            return Ok(Order::Ranked(i));
        }
        let type_name = values::rank_type_name(ty.oid).ok_or("a type pgshard cannot rank")?;
        let mut seen = std::collections::HashSet::new();
        let distinct: Vec<Bytes> = self
            .rows
            .iter()
            .filter_map(|r| r[at].clone())
            .filter(|v| seen.insert(v.clone()))
            .collect();
        self.requests
            .push(RankRequest::new(type_name, collation, distinct)?);
        asked.insert(key, self.requests.len() - 1);
        Ok(Order::Ranked(self.requests.len() - 1))
    }

    /// What a backend must rank before `finish` (in this order).
    pub fn rank_requests(&self) -> &[RankRequest] {
        &self.requests
    }

    /// The merged answer, given the ranks of each rank request, cut to
    /// OFFSET/LIMIT.
    pub fn finish(
        mut self,
        ranks: Vec<Vec<u64>>,
        limit: Option<u64>,
        offset: u64,
    ) -> Result<Combined, String> {
        if ranks.len() != self.requests.len() {
            return Err("values were not ranked".into());
        }
        let ranks: Vec<HashMap<Bytes, u64>> = self
            .requests
            .iter()
            .zip(ranks)
            .map(|(request, ranks)| request.values.iter().cloned().zip(ranks).collect())
            .collect();
        let cmp = Compare { ranks: &ranks };
        let spec = self.spec;
        let roles = self.roles();
        let mut rows = std::mem::take(&mut self.rows);
        if spec.grouped {
            rows = group(rows, &roles, &self.fields, &cmp)?;
        }
        let (description, types, mut rows) = self.client_rows(rows)?;
        if !spec.order.is_empty() {
            let probes = spec.probes();
            let mut orders = Vec::with_capacity(spec.order.len());
            for (k, key) in spec.order.iter().enumerate() {
                let order = match probes.iter().position(|p| *p == Probe::Sort(k)) {
                    Some(p) => self.orders[p],
                    None => Order::Local(*types.get(key.column).ok_or("ORDER BY past the end")?),
                };
                if matches!(order, Order::Not) {
                    return Err(
                        "ORDER BY on a column of a type pgshard cannot compare across backends"
                            .into(),
                    );
                }
                orders.push(order);
            }
            let mut failed = false;
            rows.sort_by(|a, b| {
                let mut result = Ordering::Equal;
                for (key, order) in spec.order.iter().zip(&orders) {
                    let o = match (&a[key.column], &b[key.column]) {
                        (None, None) => Ordering::Equal,
                        (None, Some(_)) if key.nulls_first => Ordering::Less,
                        (None, Some(_)) => Ordering::Greater,
                        (Some(_), None) if key.nulls_first => Ordering::Greater,
                        (Some(_), None) => Ordering::Less,
                        (Some(x), Some(y)) => match cmp.compare(order, x, y) {
                            Some(o) if key.descending => o.reverse(),
                            Some(o) => o,
                            None => {
                                failed = true;
                                Ordering::Equal
                            }
                        },
                    };
                    if o != Ordering::Equal {
                        result = o;
                        break;
                    }
                }
                result
            });
            if failed {
                return Err("a value that does not read as its type".into());
            }
        }
        let start = usize::try_from(offset)
            .unwrap_or(usize::MAX)
            .min(rows.len());
        let end = match limit {
            Some(n) => start
                .saturating_add(usize::try_from(n).unwrap_or(usize::MAX))
                .min(rows.len()),
            None => rows.len(),
        };
        let mut out = BytesMut::new();
        for row in &rows[start..end] {
            data_row(&mut out, row);
        }
        Ok(Combined {
            description,
            rows: out,
            count: end - start,
        })
    }

    /// What each backend column is to grouping.
    fn roles(&self) -> Vec<Role> {
        let mut roles = Vec::with_capacity(self.fields.len());
        let probes = self.spec.probes();
        for (c, column) in self.spec.columns.iter().enumerate() {
            let extreme = || {
                let p = probes.iter().position(|p| *p == Probe::Extreme(c));
                p.map_or(Order::Not, |p| self.orders[p])
            };
            match column {
                Column::Group => roles.push(Role::Group),
                Column::Count | Column::Sum => roles.push(Role::Add),
                Column::Avg => roles.extend([Role::Add, Role::Add]),
                Column::Min => roles.push(Role::Extreme(extreme(), false)),
                Column::Max => roles.push(Role::Extreme(extreme(), true)),
            }
        }
        roles.resize(self.fields.len(), Role::Group);
        if self.spec.columns.is_empty() {
            roles.fill(Role::Group);
        } else {
            // Probes: constant per column, never part of a group's identity.
            for role in roles.iter_mut().skip(self.spec.backend_width()) {
                *role = Role::Probe;
            }
        }
        roles
    }

    /// Rows as the client sees them (avg divided, probes dropped), with their
    /// RowDescription and column types.
    fn client_rows(&self, rows: Vec<Row>) -> Result<(Bytes, Vec<Type>, Vec<Row>), String> {
        let spec = self.spec;
        if spec.columns.is_empty() {
            let types = self.fields.iter().map(|(_, t)| *t).collect();
            return Ok((
                describe(self.fields.iter().map(|(f, _)| f.clone())),
                types,
                rows,
            ));
        }
        let mut fields = Vec::with_capacity(spec.columns.len());
        let mut types = Vec::with_capacity(spec.columns.len());
        for (c, column) in spec.columns.iter().enumerate() {
            let (field, ty) = &self.fields[spec.backend_column(c)];
            if *column == Column::Avg {
                let out = avg_type(ty)?;
                fields.push(retyped(field, out).ok_or("a malformed row description")?);
                types.push(out);
            } else {
                fields.push(field.clone());
                types.push(*ty);
            }
        }
        let mut out = Vec::with_capacity(rows.len());
        for row in rows {
            let mut client = Vec::with_capacity(spec.columns.len());
            for (c, column) in spec.columns.iter().enumerate() {
                let at = spec.backend_column(c);
                if *column == Column::Avg {
                    let sum_type = self.fields[at].1;
                    let count_type = self.fields[at + 1].1;
                    client.push(avg(sum_type, count_type, &row[at], &row[at + 1], types[c])?);
                } else {
                    client.push(row[at].clone());
                }
            }
            out.push(client);
        }
        Ok((describe(fields.into_iter()), types, out))
    }
}

/// What a backend column is when rows combine.
#[derive(Debug, Clone, Copy)]
enum Role {
    /// Part of the group's identity.
    Group,
    /// Partial counts or sums, added.
    Add,
    /// min (`false`) or max, ordered so.
    Extreme(Order, bool),
    /// A collation probe: kept from the first row.
    Probe,
}

struct Compare<'a> {
    ranks: &'a [HashMap<Bytes, u64>],
}

impl Compare<'_> {
    fn compare(&self, order: &Order, a: &Bytes, b: &Bytes) -> Option<Ordering> {
        match order {
            Order::Local(ty) => ty.compare(a, b),
            Order::Bytes => Some(a.cmp(b)),
            Order::Ranked(i) => {
                let ranks = self.ranks.get(*i)?;
                Some(ranks.get(a)?.cmp(ranks.get(b)?))
            }
            Order::Not => None,
        }
    }
}

/// Rows with equal grouping values combined, aggregates folded; first-seen order.
fn group(
    rows: Vec<Row>,
    roles: &[Role],
    fields: &[(Bytes, Type)],
    cmp: &Compare,
) -> Result<Vec<Row>, String> {
    let mut out: Vec<Row> = Vec::new();
    let mut index: HashMap<Vec<Option<Bytes>>, usize> = HashMap::new();
    for row in rows {
        let key: Vec<Option<Bytes>> = roles
            .iter()
            .zip(&row)
            .zip(fields)
            .filter(|((role, _), _)| matches!(role, Role::Group))
            .map(|((_, v), (_, ty))| v.as_ref().map(|v| ty.group_key(v)))
            .collect();
        let Some(&at) = index.get(&key) else {
            index.insert(key, out.len());
            out.push(row);
            continue;
        };
        let target = &mut out[at];
        for (i, role) in roles.iter().enumerate() {
            let folded = fold(*role, fields[i].1, target[i].take(), row[i].clone(), cmp)?;
            target[i] = folded;
        }
    }
    Ok(out)
}

/// Two partial values of one column folded into one.
fn fold(
    role: Role,
    ty: Type,
    a: Option<Bytes>,
    b: Option<Bytes>,
    cmp: &Compare,
) -> Result<Option<Bytes>, String> {
    let (a, b) = match (a, b) {
        (None, other) | (other, None) => return Ok(other),
        (Some(a), Some(b)) => (a, b),
    };
    match role {
        Role::Group | Role::Probe => Ok(Some(a)),
        Role::Add => ty.add(&a, &b).map(|v| Some(Bytes::from(v))).ok_or_else(|| {
            "pgshard could not add up an aggregate's partial values (a type it does not \
             add, or a sum out of range)"
                .to_string()
        }),
        Role::Extreme(order, max) => {
            let ordering = cmp.compare(&order, &a, &b).ok_or_else(|| {
                "min/max of a type pgshard cannot compare across backends".to_string()
            })?;
            let a_wins = (ordering == Ordering::Greater) == max;
            Ok(Some(if a_wins || ordering == Ordering::Equal {
                a
            } else {
                b
            }))
        }
    }
}

#[cfg(test)]
mod tests;
