//! What a shard map swap costs the proxy, without I/O: reading and checking the new
//! document, building the topology (pools of unchanged backends reused) and storing
//! it; and the map a vshard move makes. See benches/README.md.

use std::hint::black_box;
use std::sync::Arc;
use std::time::Duration;

use arc_swap::ArcSwap;
use criterion::{criterion_group, criterion_main, Criterion};

use pgshard::backend::Topology;
use pgshard::maps::check;
use pgshard::router::ShardMap;

/// The demo's map over `n` backends: 1000 vshards in ranges, pgbench's tables.
fn map_text(n: usize) -> String {
    let backends: Vec<_> = (0..n)
        .map(|i| {
            (
                format!("b{i}"),
                format!("postgresql://u:p@h:{}/d", 5000 + i),
                vec![],
            )
        })
        .collect();
    ShardMap::even_toml(&backends, 1000)
}

fn bench_swap(c: &mut Criterion) {
    let running = ShardMap::parse(&map_text(4)).expect("map");
    let timeout = Duration::from_secs(1);
    let live = ArcSwap::from_pointee(Topology::new(running.clone(), None, 20, timeout));
    // The next version with a fifth backend, as `map apply` gets it.
    let next = map_text(5)
        .replace("version = 1", "version = 2")
        .replace("\"0-199\" = \"b0\"\n\"200-399\" = \"b1\"\n\"400-599\" = \"b2\"\n\"600-799\" = \"b3\"\n\"800-999\" = \"b4\"\n", "\"0-249\" = \"b0\"\n\"250-499\" = \"b1\"\n\"500-749\" = \"b2\"\n\"750-999\" = \"b3\"\n");
    let parsed = ShardMap::parse(&next).expect("next map");
    assert_eq!(check::compare(&running, &parsed, false), Ok(()));
    let mut group = c.benchmark_group("swap");
    group.bench_function("parse_and_check", |b| {
        b.iter(|| {
            let map = ShardMap::parse(black_box(&next)).expect("map");
            check::compare(&running, &map, false).expect("accepted");
            map
        })
    });
    group.bench_function("install", |b| {
        b.iter(|| {
            let previous = live.load_full();
            let topology = Topology::new(parsed.clone(), Some(&previous), 20, timeout);
            live.store(Arc::new(topology));
        })
    });
    group.bench_function("whole", |b| {
        b.iter(|| {
            let map = ShardMap::parse(black_box(&next)).expect("map");
            check::compare(&running, &map, false).expect("accepted");
            let previous = live.load_full();
            live.store(Arc::new(Topology::new(map, Some(&previous), 20, timeout)));
        })
    });
    group.bench_function("move_map", |b| {
        b.iter(|| {
            running
                .with_assignment(2, black_box(&[(7, 1)]))
                .expect("map")
        })
    });
    group.finish();
}

criterion_group!(benches, bench_swap);
criterion_main!(benches);
