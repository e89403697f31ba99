//! The routing decision for every statement shape (issue 3's table-driven test).

use super::*;
use crate::router::copy::CopyFormat;
use crate::router::sql::merge::{Bound, Column, Combine, SortKey};
use crate::router::sql::PlanCache;

fn map() -> ShardMap {
    let backends: Vec<_> = (0..4)
        .map(|i| {
            (
                format!("b{i}"),
                format!("postgresql://u@h:{}/d", 5000 + i),
                vec![],
            )
        })
        .collect();
    let text = ShardMap::even_toml(&backends, 1000)
        + r#"
reference_tables = []

[[tables]]
name = "users"
key = "id"

[[tables]]
name = "names"
key = "name"
type = "text"

[[tables]]
name = "tokens"
key = "token"
type = "uuid"
"#;
    // `reference_tables` must come before the tables: put it at the top instead.
    let text = text.replace("reference_tables = []\n", "");
    let text = format!("reference_tables = [\"countries\"]\n{text}");
    ShardMap::parse(&text).unwrap()
}

fn at(map: &ShardMap, key: Key) -> BackendId {
    owner(map, &key)
}

fn run(map: &ShardMap, sql: &str, params: &[Param]) -> Decision {
    let analyzed = PlanCache::default().analyze(sql, map).unwrap();
    decide(&analyzed, params, map)
}

fn check(map: &ShardMap, sql: &str, want: Decision) {
    assert_eq!(run(map, sql, &[]), want, "{sql}");
}

fn check_error(map: &ShardMap, sql: &str, params: &[Param], want: &str) {
    match run(map, sql, params) {
        Decision::Error(e) => assert!(e.contains(want), "{sql}: {e:?} lacks {want:?}"),
        other => panic!("{sql}: {other:?}, want an error with {want:?}"),
    }
}

#[test]
fn keyed_statements_go_to_their_key_s_backend() {
    let m = &map();
    let int = |v: i64| at(m, Key::Int(v));
    check(
        m,
        "SELECT abalance FROM pgbench_accounts WHERE aid = 48217;",
        Decision::One(int(48217)),
    );
    check(
        m,
        "UPDATE pgbench_tellers SET tbalance = tbalance + 5 WHERE tid = 3",
        Decision::One(int(3)),
    );
    check(
        m,
        "DELETE FROM pgbench_accounts WHERE aid = -5",
        Decision::One(int(-5)),
    );
    check(
        m,
        "SELECT * FROM pgbench_accounts a WHERE a.abalance > 0 AND (a.aid = '7')",
        Decision::One(int(7)),
    );
    check(
        m,
        "SELECT * FROM pgbench_accounts WHERE 7::int4 = aid",
        Decision::One(int(7)),
    );
    check(
        m,
        "EXPLAIN SELECT * FROM pgbench_accounts WHERE aid = 9",
        Decision::One(int(9)),
    );
    check(
        m,
        "SELECT * FROM users WHERE id = 5000000000",
        Decision::One(int(5_000_000_000)),
    );
    check(
        m,
        "SELECT * FROM names WHERE name = 'it''s'",
        Decision::One(at(m, Key::Text(b"it's".to_vec()))),
    );
    check(
        m,
        "SELECT * FROM names WHERE name = 42",
        Decision::One(at(m, Key::Text(b"42".to_vec()))),
    );
    let uuid = "{01020304-0506-0708-090a-0b0c0d0e0f10}";
    check(
        m,
        &format!("SELECT * FROM tokens WHERE token = '{uuid}'"),
        Decision::One(at(m, Key::Uuid(std::array::from_fn(|i| i as u8 + 1)))),
    );
    let mut many: Vec<BackendId> = (1..=8).map(int).collect();
    many.sort_unstable();
    many.dedup();
    assert!(many.len() > 1, "keys 1..=8 should span backends");
    check(
        m,
        "SELECT * FROM pgbench_accounts WHERE aid IN (1, 2, 3, 4, 5, 6, 7, 8)",
        Decision::Gather {
            backends: many.clone(),
            merge: Merge::Concat,
        },
    );
    // A read on several backends merges like a keyless one.
    check(
        m,
        "SELECT count(*) FROM pgbench_accounts WHERE aid IN (1, 2, 3, 4, 5, 6, 7, 8) LIMIT $1",
        Decision::Error("LIMIT and OFFSET must be non-negative integers".into()),
    );
    let analyzed = PlanCache::default()
        .analyze(
            "SELECT max(abalance) FROM pgbench_accounts WHERE aid IN ($1, $2, $3, $4, $5, $6, $7, $8)",
            m,
        )
        .unwrap();
    let keys: Vec<String> = (1..=8).map(|k| k.to_string()).collect();
    let params: Vec<Param> = keys.iter().map(|k| Param::text(k)).collect();
    assert_eq!(
        decide(&analyzed, &params, m),
        Decision::Gather {
            backends: many.clone(),
            merge: Merge::Combine(Box::new(Combine {
                columns: vec![Column::Max],
                grouped: true,
                order: vec![],
                limit: None,
                offset: None,
            })),
        }
    );
    match run(
        m,
        "EXPLAIN SELECT * FROM pgbench_accounts WHERE aid IN (1, 2, 3, 4, 5, 6, 7, 8)",
        &[],
    ) {
        Decision::Gather {
            merge: Merge::No(why),
            ..
        } => assert!(why.contains("EXPLAIN"), "{why}"),
        other => panic!("{other:?}"),
    }
    check(
        m,
        "DELETE FROM pgbench_accounts WHERE aid IN (1, 2, 3, 4, 5, 6, 7, 8)",
        Decision::Many { backends: many },
    );
}

#[test]
fn parameters_in_text_and_binary() {
    let m = &map();
    let sql = "SELECT abalance FROM pgbench_accounts WHERE aid = $1";
    let want = Decision::One(at(m, Key::Int(77)));
    assert_eq!(run(m, sql, &[Param::text("77")]), want);
    for bytes in [
        &77i16.to_be_bytes()[..],
        &77i32.to_be_bytes(),
        &77i64.to_be_bytes(),
    ] {
        let p = Param {
            format: 1,
            value: Some(bytes),
        };
        assert_eq!(run(m, sql, &[p]), want);
    }
    let null = Param {
        format: 0,
        value: None,
    };
    assert_eq!(run(m, sql, &[null]), Decision::Any);
    let sql = "SELECT * FROM names WHERE name = $2 AND x = $1";
    assert_eq!(
        run(m, sql, &[Param::text("x"), Param::text("bob")]),
        Decision::One(at(m, Key::Text(b"bob".to_vec())))
    );
    check_error(
        m,
        "SELECT * FROM pgbench_accounts WHERE aid = $1",
        &[],
        "only 0 were bound",
    );
    let odd = Param {
        format: 1,
        value: Some(&[1, 2, 3]),
    };
    check_error(
        m,
        "SELECT * FROM pgbench_accounts WHERE aid = $1",
        &[odd],
        "3 bytes",
    );
    check_error(
        m,
        "SELECT * FROM pgbench_accounts WHERE aid = 'x'",
        &[],
        "not a valid integer key",
    );
    check_error(
        m,
        "SELECT * FROM tokens WHERE token = 'nope'",
        &[],
        "not a valid uuid key",
    );
}

#[test]
fn inserts_split_rows_by_backend() {
    let m = &map();
    let int = |v: i64| at(m, Key::Int(v));
    check(
        m,
        "INSERT INTO pgbench_history (tid, bid, aid, delta, mtime) VALUES (1, 1, 10, 5, CURRENT_TIMESTAMP)",
        Decision::One(int(10)),
    );
    let rows: Vec<String> = (1..=8).map(|aid| format!("({aid}, 0, '')")).collect();
    let sql = format!(
        "INSERT INTO pgbench_accounts (aid, abalance, filler) VALUES {}",
        rows.join(", ")
    );
    let mut want: Vec<(BackendId, Vec<usize>)> = Vec::new();
    for (row, aid) in (1..=8).enumerate() {
        match want.iter_mut().find(|(b, _)| *b == int(aid)) {
            Some((_, rows)) => rows.push(row),
            None => want.push((int(aid), vec![row])),
        }
    }
    want.sort_unstable_by_key(|(b, _)| *b);
    check(m, &sql, Decision::Split(want));
    check_error(
        m,
        "INSERT INTO pgbench_accounts VALUES (1, 1, 0, '')",
        &[],
        "must list its key column \"aid\"",
    );
    check_error(
        m,
        "INSERT INTO pgbench_accounts (aid, bid) SELECT aid, bid FROM other",
        &[],
        "needs VALUES",
    );
    check_error(
        m,
        "INSERT INTO pgbench_accounts (aid) VALUES (1 + 1)",
        &[],
        "must be a constant or a parameter",
    );
    check_error(
        m,
        "INSERT INTO pgbench_accounts (aid) VALUES (NULL)",
        &[],
        "must be a constant or a parameter",
    );
}

#[test]
fn keyless_reads_scatter_and_keyless_writes_go_everywhere() {
    let m = &map();
    let combine = |columns: Vec<Column>,
                   grouped: bool,
                   order: Vec<SortKey>,
                   limit: Option<u64>,
                   offset: Option<u64>| {
        Decision::Scatter(Merge::Combine(Box::new(Combine {
            columns,
            grouped,
            order,
            limit: limit.map(Bound::Value),
            offset: offset.map(Bound::Value),
        })))
    };
    let by = |column: usize, descending: bool| SortKey {
        column,
        position: None,
        descending,
        nulls_first: descending,
        collation: None,
    };
    use Column::{Avg, Count, Group, Max, Min, Sum};
    check(
        m,
        "SELECT count(*) FROM pgbench_accounts",
        combine(vec![Count], true, vec![], None, None),
    );
    check(
        m,
        "SELECT count(*) AS n, sum(abalance), min(aid), max(aid) FROM pgbench_accounts WHERE abalance > 0",
        combine(vec![Count, Sum, Min, Max], true, vec![], None, None),
    );
    check(
        m,
        "SELECT * FROM pgbench_accounts WHERE aid = 7 OR aid = 8",
        Decision::Scatter(Merge::Concat),
    );
    check(
        m,
        "SELECT aid, upper(filler) FROM pgbench_accounts WHERE abalance > 10",
        Decision::Scatter(Merge::Concat),
    );
    check(
        m,
        "SELECT aid, abalance AS b FROM pgbench_accounts ORDER BY b DESC, 1 LIMIT 5 OFFSET 2",
        combine(
            vec![Group, Group],
            false,
            vec![by(1, true), by(0, false)],
            Some(5),
            Some(2),
        ),
    );
    check(
        m,
        "SELECT bid, count(*), sum(abalance) FROM pgbench_accounts GROUP BY bid ORDER BY sum(abalance)",
        combine(vec![Group, Count, Sum], true, vec![by(2, false)], None, None),
    );
    check(
        m,
        "SELECT DISTINCT bid FROM pgbench_accounts",
        combine(vec![Group], true, vec![], None, None),
    );
    check(
        m,
        "SELECT * FROM pgbench_accounts LIMIT 3",
        combine(vec![], false, vec![], Some(3), None),
    );
    check(
        m,
        "SELECT bid, avg(abalance) AS a FROM pgbench_accounts GROUP BY bid ORDER BY a",
        combine(vec![Group, Avg], true, vec![by(1, false)], None, None),
    );
    // ORDER BY with an explicit collation: the key keeps it.
    let mut collated = by(0, true);
    collated.collation = Some("\"C\"".into());
    check(
        m,
        "SELECT filler FROM pgbench_accounts ORDER BY filler COLLATE \"C\" DESC",
        combine(vec![Group], false, vec![collated], None, None),
    );
    // LIMIT and OFFSET from parameters, read at Bind (NULL: no limit, no offset).
    let analyzed = PlanCache::default()
        .analyze(
            "SELECT aid FROM pgbench_accounts ORDER BY aid LIMIT $1 OFFSET $2",
            m,
        )
        .unwrap();
    assert_eq!(
        decide(&analyzed, &[Param::text("5"), Param::text("2")], m),
        combine(vec![Group], false, vec![by(0, false)], Some(5), Some(2))
    );
    let null = Param {
        format: 0,
        value: None,
    };
    assert_eq!(
        decide(&analyzed, &[null, null], m),
        combine(
            vec![Group],
            false,
            vec![by(0, false)],
            Some(u64::MAX),
            Some(0)
        )
    );
    assert!(matches!(
        decide(&analyzed, &[Param::text("-1"), null], m),
        Decision::Error(_)
    ));
    for (sql, why) in [
        (
            "SELECT stddev(abalance) FROM pgbench_accounts",
            "aggregates other than count, sum, avg, min and max",
        ),
        (
            "SELECT avg(abalance) * 2 FROM pgbench_accounts",
            "aggregates inside expressions",
        ),
        (
            "SELECT count(DISTINCT bid) FROM pgbench_accounts",
            "DISTINCT, FILTER or ORDER BY",
        ),
        (
            "SELECT count(*) + 1 FROM pgbench_accounts",
            "aggregates inside expressions",
        ),
        (
            "SELECT aid FROM pgbench_accounts ORDER BY abalance LIMIT 5",
            "ORDER BY an expression not in the select list",
        ),
        (
            "SELECT bid, count(*) FROM pgbench_accounts GROUP BY bid HAVING count(*) > 1",
            "HAVING",
        ),
        (
            "SELECT count(*) FROM pgbench_accounts GROUP BY bid",
            "GROUP BY an expression not in the select list",
        ),
        (
            "SELECT bid, count(*) FROM pgbench_accounts",
            "columns outside aggregates",
        ),
        (
            "SELECT rank() OVER (ORDER BY aid) FROM pgbench_accounts",
            "window function",
        ),
        (
            "SELECT aid FROM pgbench_accounts UNION SELECT 1",
            "set operation",
        ),
        (
            "SELECT DISTINCT ON (bid) bid FROM pgbench_accounts",
            "DISTINCT ON",
        ),
    ] {
        match run(m, sql, &[]) {
            Decision::Scatter(Merge::No(reason)) => {
                assert!(reason.contains(why), "{sql}: {reason}")
            }
            other => panic!("{sql}: {other:?}"),
        }
    }
    check(m, "UPDATE pgbench_accounts SET abalance = 0", Decision::All);
    check(m, "DELETE FROM pgbench_history", Decision::All);
    check(
        m,
        "WITH gone AS (DELETE FROM pgbench_accounts RETURNING *) SELECT count(*) FROM gone",
        Decision::All,
    );
}

#[test]
fn ddl_maintenance_and_reference_tables() {
    let m = &map();
    for sql in [
        "CREATE TABLE foo (a int)",
        "DROP TABLE IF EXISTS pgbench_accounts, pgbench_branches",
        "CREATE INDEX ON pgbench_accounts (bid)",
        "ALTER TABLE pgbench_accounts ADD COLUMN x int",
        "TRUNCATE pgbench_history",
        "ANALYZE pgbench_accounts",
        "CREATE TABLE a (x int); CREATE TABLE b (y int)",
        "INSERT INTO countries VALUES (1, 'x')",
        "UPDATE countries SET name = 'y'",
    ] {
        check(m, sql, Decision::All);
    }
    for sql in [
        "VACUUM pgbench_accounts",
        "vacuum analyze",
        "CREATE INDEX CONCURRENTLY i ON pgbench_accounts (bid)",
        "REINDEX TABLE CONCURRENTLY pgbench_accounts",
        "ALTER SYSTEM SET work_mem = '8MB'",
    ] {
        check(m, sql, Decision::Maintenance);
    }
    check(m, "SELECT * FROM countries", Decision::Any);
    check(m, "SELECT * FROM pg_catalog.pg_class", Decision::Any);
    check(
        m,
        "SELECT * FROM pg_class JOIN information_schema.tables t ON true",
        Decision::Any,
    );
    check(m, "SELECT 1", Decision::Any);
    check(m, "INSERT INTO unknown_table VALUES (1)", Decision::Default);
    check(m, "SELECT * FROM audit", Decision::Default);
    check(m, "UPDATE audit SET x = 1", Decision::Default);
}

#[test]
fn session_statements_copy_and_hints() {
    let m = &map();
    for sql in ["SET work_mem = '8MB'", "SHOW work_mem", "LISTEN x"] {
        check(m, sql, Decision::Session);
    }
    for sql in ["COMMIT", "END", "commit work", "COMMIT AND NO CHAIN"] {
        check(m, sql, Decision::End { commit: true });
    }
    for sql in ["ROLLBACK", "ABORT", "rollback transaction"] {
        check(m, sql, Decision::End { commit: false });
    }
    for sql in [
        "SAVEPOINT a",
        "RELEASE SAVEPOINT a",
        "ROLLBACK TO SAVEPOINT a",
        "ROLLBACK TO a",
        "COMMIT AND CHAIN",
        "ROLLBACK AND CHAIN",
        "PREPARE TRANSACTION 'x'",
        "COMMIT PREPARED 'x'",
        "rollback prepared 'x'",
    ] {
        check(m, sql, Decision::Savepoint);
    }
    check(m, "BEGIN", Decision::Begin);
    check(
        m,
        "start transaction isolation level serializable",
        Decision::Begin,
    );
    let copy = |key_at, format| {
        Decision::CopyIn(CopyInto {
            table: "pgbench_accounts".into(),
            key_at,
            format,
        })
    };
    let text = CopyFormat::text();
    check(
        m,
        "COPY pgbench_accounts FROM STDIN",
        copy(None, text.clone()),
    );
    // pgbench -i
    check(
        m,
        "copy pgbench_accounts from stdin with (freeze on)",
        copy(None, text.clone()),
    );
    let csv = CopyFormat {
        csv: true,
        delimiter: b';',
        null: Vec::new(),
        header: true,
        ..text.clone()
    };
    check(
        m,
        "copy pgbench_accounts (bid, aid) from stdin with (format csv, delimiter ';', header)",
        copy(Some(1), csv),
    );
    check_error(
        m,
        "copy pgbench_accounts (bid) from stdin",
        &[],
        "must include its key column \"aid\"",
    );
    for sql in [
        "copy pgbench_accounts from stdin with (format binary)",
        "copy pgbench_accounts to stdout with (format binary)",
    ] {
        check_error(m, sql, &[], "text and csv only");
    }
    check(
        m,
        "COPY pgbench_accounts TO STDOUT",
        Decision::CopyOut { header: false },
    );
    check_error(m, "COPY countries FROM STDIN", &[], "reference table");
    check(m, "COPY other FROM STDIN", Decision::Default);
    check_error(
        m,
        "COPY pgbench_accounts FROM '/tmp/x'",
        &[],
        "file or program",
    );
    check(
        m,
        "/* pgshard: key=42 */ SELECT count(*) FROM pgbench_accounts",
        Decision::One(at(m, Key::Int(42))),
    );
    check(
        m,
        "/* pgshard: key=bob */ SELECT now()",
        Decision::One(at(m, Key::Text(b"bob".to_vec()))),
    );
}

#[test]
fn shapes_that_cannot_be_routed_get_clear_errors() {
    let m = &map();
    check_error(
        m,
        "SELECT * FROM pgbench_accounts a JOIN pgbench_branches b ON a.bid = b.bid",
        &[],
        "more than one sharded table",
    );
    for sql in [
        "SELECT * FROM pgbench_accounts a JOIN pgbench_accounts b ON a.bid = b.aid",
        "SELECT * FROM pgbench_accounts a JOIN pgbench_accounts b ON a.bid = b.aid WHERE a.aid = 5",
        "SELECT * FROM pgbench_accounts WHERE aid = 5 AND bid IN (SELECT aid FROM pgbench_accounts)",
        "UPDATE pgbench_accounts SET abalance = (SELECT max(abalance) FROM pgbench_accounts) WHERE aid = 1",
    ] {
        check_error(m, sql, &[], "more than once");
    }
    check_error(
        m,
        "SELECT * FROM pgbench_accounts WHERE aid = 1; SELECT * FROM pgbench_accounts",
        &[],
        "several statements",
    );
    check_error(
        m,
        "SELECT * FROM pgbench_accounts WHERE aid = 1 ANY RUBBISH HERE",
        &[],
        "cannot parse this statement",
    );
    check_error(
        m,
        "INSERT INTO other SELECT * FROM pgbench_accounts",
        &[],
        "from a query on a sharded table",
    );
}

#[test]
fn several_statements_for_one_backend_run_together() {
    let m = &map();
    let int = |v: i64| at(m, Key::Int(v));
    check(
        m,
        "BEGIN; UPDATE pgbench_accounts SET abalance = 1 WHERE aid = 7; SELECT now()",
        Decision::One(int(7)),
    );
    check(m, "SET x = 1; SELECT 1", Decision::Any);
    check(
        m,
        "SELECT * FROM audit; SELECT now()",
        Decision::One(m.default_backend),
    );
    let away = (1..100).find(|&a| int(a) != m.default_backend).unwrap();
    check_error(
        m,
        &format!("INSERT INTO audit VALUES (1); UPDATE pgbench_accounts SET abalance = 1 WHERE aid = {away}"),
        &[],
        "need different backends",
    );
    let (a, b) = (1..100)
        .flat_map(|a| (1..100).map(move |b| (a, b)))
        .find(|&(a, b)| int(a) != int(b))
        .unwrap();
    check_error(
        m,
        &format!(
            "UPDATE pgbench_accounts SET abalance = 1 WHERE aid = {a}; \
             UPDATE pgbench_accounts SET abalance = 1 WHERE aid = {b}"
        ),
        &[],
        "need different backends",
    );
}

#[test]
fn one_plan_per_statement_shape() {
    let m = &map();
    let cache = PlanCache::default();
    for aid in 0..100 {
        let sql = format!("SELECT abalance FROM pgbench_accounts WHERE aid = {aid}");
        let analyzed = cache.analyze(&sql, m).unwrap();
        assert_eq!(
            decide(&analyzed, &[], m),
            Decision::One(at(m, Key::Int(aid)))
        );
    }
    assert_eq!(cache.len(), 1);
}

#[test]
fn statements_whose_constants_are_syntax_still_route() {
    let m = &map();
    // Whether or not the normalized form parses, the key is found.
    check(
        m,
        "SELECT * FROM pgbench_accounts WHERE aid = 5 AND mtime > TIMESTAMP '2020-01-01' - INTERVAL '1 day'",
        Decision::One(at(m, Key::Int(5))),
    );
    check(
        m,
        "SELECT * FROM pgbench_accounts WHERE aid = -5 AND d > DATE '2020-01-01'",
        Decision::One(at(m, Key::Int(-5))),
    );
}

#[test]
fn no_input_makes_the_router_panic() {
    let m = &map();
    let cache = PlanCache::default();
    let base =
        "INSERT INTO pgbench_history (tid, bid, aid, delta) VALUES ($1, 'a''b', -3, E'\\n') \
                /* x /* y */ */ -- z\n; SELECT * FROM pgbench_accounts WHERE aid IN ($2, $$q$$)";
    for end in 0..=base.len() {
        if let Ok(analyzed) = cache.analyze(&base[..end], m) {
            let _ = decide(&analyzed, &[Param::text("1"), Param::text("zz")], m);
            let _ = decide(&analyzed, &[], m);
        }
    }
}
