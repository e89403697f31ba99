//! Which vshards a statement touches, and whether it writes them. A vshard move
//! (`moves::gate`) holds the writes of the vshard it moves, and a transaction whose
//! map snapshot is older than the running map follows a vshard that moved since.
//! Pure: no I/O, no lock.

use super::decide::{key_type, parse_text, Param, Values};
use super::hash::KeyType;
use super::shardmap::ShardMap;
use super::sql::plan::{CopyInto, Plan};
use super::sql::Analyzed;

/// The rows of sharded tables a statement reads or writes.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Touch {
    /// Vshards named by key, sorted and distinct.
    pub vshards: Vec<u32>,
    /// Rows anywhere (a keyless read or write, DDL, COPY): every vshard.
    pub everywhere: bool,
    /// It may change rows (or the table itself).
    pub write: bool,
}

impl Touch {
    pub fn is_empty(&self) -> bool {
        self.vshards.is_empty() && !self.everywhere
    }

    /// Whether it touches `vshard`.
    pub fn covers(&self, vshard: u32) -> bool {
        self.everywhere || self.vshards.binary_search(&vshard).is_ok()
    }

    fn add(&mut self, other: Touch) {
        self.vshards.extend(other.vshards);
        self.vshards.sort_unstable();
        self.vshards.dedup();
        self.everywhere |= other.everywhere;
        self.write |= other.write;
    }
}

/// What `analyzed` touches, given its Bind parameters (empty for a simple Query).
/// Keys that do not parse touch nothing: the statement is refused anyway.
pub fn touch(analyzed: &Analyzed, params: &[Param], map: &ShardMap) -> Touch {
    let values = Values {
        literals: &analyzed.literals,
        params,
    };
    if let Some(hint) = &analyzed.key_hint {
        return by_hint(hint, &analyzed.plan, map);
    }
    touch_plan(&analyzed.plan, &values, map)
}

fn touch_plan(plan: &Plan, values: &Values, map: &ShardMap) -> Touch {
    let everywhere = |write| Touch {
        vshards: Vec::new(),
        everywhere: true,
        write,
    };
    match plan {
        Plan::Keyed {
            table, keys, write, ..
        } => keyed(map, table, keys, values, *write),
        Plan::Insert { table, rows } => keyed(map, table, rows, values, true),
        Plan::All | Plan::CopyIn(_) => everywhere(true),
        Plan::Scatter { .. } | Plan::CopyOut { .. } => everywhere(false),
        Plan::Multi(plans) => {
            let mut out = Touch::default();
            for plan in plans {
                out.add(touch_plan(plan, values, map));
            }
            out
        }
        Plan::Any
        | Plan::Default
        | Plan::Maintenance
        | Plan::Begin
        | Plan::End { .. }
        | Plan::Savepoint
        | Plan::Session
        | Plan::Unsupported(_) => Touch::default(),
    }
}

fn keyed(
    map: &ShardMap,
    table: &str,
    sources: &[super::sql::plan::Source],
    values: &Values,
    write: bool,
) -> Touch {
    let key_type = key_type(map, table);
    let mut vshards: Vec<u32> = sources
        .iter()
        .filter_map(|s| values.key(s, key_type).ok().flatten())
        .map(|key| key.vshard(map.vshards()))
        .collect();
    vshards.sort_unstable();
    vshards.dedup();
    Touch {
        vshards,
        everywhere: false,
        write,
    }
}

/// `/* pgshard: key=VALUE */` or `SET pgshard.key`: the statement runs as written
/// with that key's backend, so it may write there unless it is a known read.
fn by_hint(hint: &str, plan: &Plan, map: &ShardMap) -> Touch {
    let table = match plan {
        Plan::Keyed { table, .. }
        | Plan::Insert { table, .. }
        | Plan::Scatter { table, .. }
        | Plan::CopyIn(CopyInto { table, .. })
        | Plan::CopyOut { table, .. } => Some(table),
        Plan::Session | Plan::Begin | Plan::End { .. } | Plan::Savepoint => {
            return Touch::default()
        }
        _ => None,
    };
    let key_type = match table {
        Some(t) => key_type(map, t),
        None if hint.parse::<i64>().is_ok() => KeyType::Int,
        None => KeyType::Text,
    };
    let write = !matches!(
        plan,
        Plan::Keyed { write: false, .. } | Plan::Scatter { .. } | Plan::CopyOut { .. }
    );
    match parse_text(hint.as_bytes(), key_type) {
        Ok(key) => Touch {
            vshards: vec![key.vshard(map.vshards())],
            everywhere: false,
            write,
        },
        Err(_) => Touch::default(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::router::hash::Key;
    use crate::router::sql::PlanCache;

    fn map() -> ShardMap {
        ShardMap::even_for_tests(2)
    }

    fn check(sql: &str, params: &[&str], expect: (&[i64], bool, bool)) {
        let map = map();
        let analyzed = PlanCache::default().analyze(sql, &map).unwrap();
        let params: Vec<Param> = params.iter().map(|p| Param::text(p)).collect();
        let got = touch(&analyzed, &params, &map);
        let mut vshards: Vec<u32> = expect.0.iter().map(|k| Key::Int(*k).vshard(1000)).collect();
        vshards.sort_unstable();
        vshards.dedup();
        let want = Touch {
            vshards,
            everywhere: expect.1,
            write: expect.2,
        };
        assert_eq!(got, want, "{sql}");
    }

    #[test]
    fn statements_touch_their_keys() {
        check(
            "SELECT abalance FROM pgbench_accounts WHERE aid = 7",
            &[],
            (&[7], false, false),
        );
        check(
            "UPDATE pgbench_accounts SET abalance = 1 WHERE aid = $1",
            &["42"],
            (&[42], false, true),
        );
        check(
            "INSERT INTO pgbench_history (aid, delta) VALUES (1, 2), (3, 4)",
            &[],
            (&[1, 3], false, true),
        );
        check(
            "DELETE FROM pgbench_accounts WHERE aid IN (5, 6)",
            &[],
            (&[5, 6], false, true),
        );
        check(
            "SELECT count(*) FROM pgbench_accounts",
            &[],
            (&[], true, false),
        );
        check(
            "UPDATE pgbench_accounts SET abalance = 0",
            &[],
            (&[], true, true),
        );
        check("CREATE TABLE t (a int)", &[], (&[], true, true));
        check("COPY pgbench_accounts FROM STDIN", &[], (&[], true, true));
        check("SELECT 1", &[], (&[], false, false));
        check("BEGIN", &[], (&[], false, false));
        check(
            "/* pgshard: key=9 */ SELECT my_function()",
            &[],
            (&[9], false, true),
        );
        check(
            "/* pgshard: key=9 */ SELECT * FROM pgbench_accounts",
            &[],
            (&[9], false, false),
        );
    }
}
