//! The routing decision's parts, without I/O: key -> vshard (PostgreSQL's hash),
//! statement analysis with and without the plan cache, and the whole decision.
//! See benches/README.md.

use std::hint::black_box;
use std::time::Duration;

use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion};

use pgshard::frontend::statements::Statement;
use pgshard::protocol::messages;
use pgshard::router::decide::{decide, Decision, Param};
use pgshard::router::hash::Key;
use pgshard::router::sql::{lexer, plan, PlanCache};
use pgshard::router::ShardMap;

const SELECT_SQL: &str = "SELECT abalance FROM pgbench_accounts WHERE aid = 48217;";
const SELECT_PARAM_SQL: &str = "SELECT abalance FROM pgbench_accounts WHERE aid = $1";
const INSERT_SQL: &str = "INSERT INTO pgbench_history (tid, bid, aid, delta, mtime) \
                          VALUES (3, 1, 48217, -4211, CURRENT_TIMESTAMP);";

/// Four backends, pgbench's tables sharded (as the demo's map).
fn pgbench_map() -> ShardMap {
    let backends: Vec<_> = (0..4)
        .map(|i| {
            (
                format!("b{i}"),
                format!("postgresql://u@h:{}/d", 5000 + i),
                vec![],
            )
        })
        .collect();
    ShardMap::parse(&ShardMap::even_toml(&backends, 1000)).expect("map")
}

fn bench_route(c: &mut Criterion) {
    let map = pgbench_map();
    let cache = PlanCache::default();
    let mut group = c.benchmark_group("route");
    for (name, sql) in [("select", SELECT_SQL), ("insert", INSERT_SQL)] {
        let normalized = lexer::normalize(sql).expect("lex");
        group.bench_function(BenchmarkId::new("analyze_uncached", name), |b| {
            b.iter(|| plan::plan(black_box(&normalized.text), sql, &map))
        });
        cache.analyze(sql, &map).expect("analyze");
        group.bench_function(BenchmarkId::new("analyze_cached", name), |b| {
            b.iter(|| cache.analyze(black_box(sql), &map))
        });
        // The whole decision for a simple Query: lex, cached plan, key, vshard, backend.
        assert!(matches!(
            decide(&cache.analyze(sql, &map).expect("analyze"), &[], &map),
            Decision::One(_)
        ));
        group.bench_function(BenchmarkId::new("decide", name), |b| {
            b.iter(|| {
                let analyzed = cache.analyze(black_box(sql), &map).expect("analyze");
                decide(&analyzed, &[], &map)
            })
        });
    }
    // A prepared statement's plan is made once; each Bind only decides.
    let analyzed = cache.analyze(SELECT_PARAM_SQL, &map).expect("analyze");
    let params = [Param::text("48217")];
    assert!(matches!(decide(&analyzed, &params, &map), Decision::One(_)));
    group.bench_function(BenchmarkId::new("decide", "bind"), |b| {
        b.iter(|| decide(black_box(&analyzed), black_box(&params), &map))
    });
    // A Bind of a named statement as a session decides it (its parameters read,
    // then the decision): with the analysis kept with the statement, and with its
    // text lexed and looked up in the plan cache at every Bind instead.
    let statement = Statement::new(SELECT_PARAM_SQL.as_bytes(), b"\0\0", vec![]);
    let bind = bind_payload(b"S_1", b"48217");
    group.bench_function(BenchmarkId::new("bind", "kept"), |b| {
        b.iter(|| {
            let params = bind_params(black_box(&bind));
            statement.with_analysis(&map, &cache, |a| decide(a, &params, &map))
        })
    });
    group.bench_function(BenchmarkId::new("bind", "reanalyzed"), |b| {
        b.iter(|| {
            let params = bind_params(black_box(&bind));
            let analyzed = cache.analyze(black_box(SELECT_PARAM_SQL), &map).ok();
            analyzed.map(|a| decide(&a, &params, &map))
        })
    });
    group.finish();
}

/// A Bind payload (after the header) of `statement` with one text parameter.
fn bind_payload(statement: &[u8], value: &[u8]) -> Vec<u8> {
    let mut out = vec![0];
    out.extend_from_slice(statement);
    out.push(0);
    out.extend_from_slice(&0i16.to_be_bytes());
    out.extend_from_slice(&1i16.to_be_bytes());
    out.extend_from_slice(&(value.len() as i32).to_be_bytes());
    out.extend_from_slice(value);
    out.extend_from_slice(&0i16.to_be_bytes());
    out
}

/// A Bind's parameters, as the session reads them.
fn bind_params(payload: &[u8]) -> Vec<Param<'_>> {
    let (_, _, rest_at) = messages::bind_names(payload).expect("bind");
    messages::bind_params(payload, rest_at)
        .expect("parameters")
        .into_iter()
        .map(|(format, value)| Param { format, value })
        .collect()
}

fn bench_hash(c: &mut Criterion) {
    let mut group = c.benchmark_group("hash");
    let keys = [
        ("int8", Key::Int(48_217)),
        ("text_8", Key::Text(b"user_421".to_vec())),
        ("text_36", Key::Text(vec![b'k'; 36])),
        ("uuid", Key::Uuid([7; 16])),
    ];
    for (name, key) in keys {
        assert!(key.vshard(1000) < 1000);
        group.bench_function(BenchmarkId::new("vshard", name), |b| {
            b.iter(|| black_box(&key).vshard(1000))
        });
    }
    group.finish();
}

fn config() -> Criterion {
    Criterion::default()
        .sample_size(20)
        .warm_up_time(Duration::from_millis(500))
        .measurement_time(Duration::from_secs(2))
}

criterion_group! {
    name = benches;
    config = config();
    targets = bench_hash, bench_route
}
criterion_main!(benches);
