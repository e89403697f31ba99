//! Keyless reads rewritten for the backends.

use super::*;
use crate::router::decide::{decide, Decision, Merge, Param};
use crate::router::sql::PlanCache;
use crate::router::ShardMap;

fn map() -> ShardMap {
    ShardMap::even_for_tests(2)
}

/// The backends' statement for `sql`, with text parameters `params`.
fn check(sql: &str, params: &[&str], want: Option<&str>, unused: &[usize]) {
    let map = map();
    let analyzed = PlanCache::default().analyze(sql, &map).unwrap();
    let params: Vec<Param> = params.iter().map(|p| Param::text(p)).collect();
    let Decision::Scatter(Merge::Combine(combine)) = decide(&analyzed, &params, &map) else {
        panic!("{sql}: not a merged read");
    };
    let got = scatter_sql(sql, &combine).unwrap_or_else(|| panic!("{sql}: not rewritten"));
    match (got, want) {
        (None, None) => {}
        (Some(s), Some(want)) => {
            assert_eq!(s.sql, want, "{sql}");
            assert_eq!(s.unused_params, unused, "{sql}");
        }
        (got, want) => panic!("{sql}: {got:?}, want {want:?}"),
    }
}

#[test]
fn reads_are_rewritten_for_the_merge() {
    check(
        "SELECT count(*), sum(abalance) FROM pgbench_accounts",
        &[],
        None,
        &[],
    );
    check("SELECT * FROM pgbench_accounts LIMIT 3", &[], None, &[]);
    check(
        "SELECT * FROM pgbench_accounts LIMIT 3 OFFSET 1",
        &[],
        Some("SELECT * FROM pgbench_accounts LIMIT 4"),
        &[],
    );
    check(
        "SELECT avg(abalance), bid FROM pgbench_accounts GROUP BY bid ORDER BY 2 LIMIT 3",
        &[],
        Some(
            "SELECT sum(abalance) AS avg, count(abalance), bid, \
             pg_collation_for(CAST((bid) AS TEXT)) FROM pgbench_accounts GROUP BY bid",
        ),
        &[],
    );
    check(
        "SELECT bid, AVG(abalance) AS a FROM pgbench_accounts GROUP BY bid",
        &[],
        Some("SELECT bid, sum(abalance) AS a, count(abalance) FROM pgbench_accounts GROUP BY bid"),
        &[],
    );
    check(
        "SELECT filler FROM pgbench_accounts ORDER BY filler COLLATE \"C\" DESC LIMIT 5 OFFSET 2",
        &[],
        Some(
            "SELECT filler, pg_collation_for(CAST((filler) AS TEXT) COLLATE \"C\") FROM \
             pgbench_accounts ORDER BY filler COLLATE \"C\" DESC LIMIT 7",
        ),
        &[],
    );
    check(
        "SELECT min(filler) AS m, max(aid) FROM pgbench_accounts",
        &[],
        Some(
            "SELECT min(filler) AS m, max(aid), pg_collation_for(CAST((min(filler)) AS TEXT)), \
             pg_collation_for(CAST((max(aid)) AS TEXT)) FROM pgbench_accounts",
        ),
        &[],
    );
}

#[test]
fn parameters_stay_or_are_declared() {
    // LIMIT and OFFSET parameters: the raised limit still uses them.
    check(
        "SELECT aid FROM pgbench_accounts WHERE bid = $1 ORDER BY aid LIMIT $2 OFFSET $3",
        &["1", "5", "2"],
        Some(
            "SELECT aid, pg_collation_for(CAST((aid) AS TEXT)) FROM pgbench_accounts WHERE \
             bid = $1 ORDER BY aid LIMIT CAST(($2) AS BIGINT) + CAST(($3) AS BIGINT)",
        ),
        &[],
    );
    // A grouped read loses its LIMIT: its parameter must be declared.
    check(
        "SELECT bid, count(*) FROM pgbench_accounts WHERE abalance > $1 GROUP BY bid LIMIT $2",
        &["0", "2"],
        Some("SELECT bid, count(*) FROM pgbench_accounts WHERE abalance > $1 GROUP BY bid"),
        &[1],
    );
    check(
        "SELECT aid FROM pgbench_accounts OFFSET $1",
        &["3"],
        Some("SELECT aid FROM pgbench_accounts"),
        &[0],
    );
}
