//! The routing decision's parts, without I/O: key -> vshard (PostgreSQL's hash).
//! See benches/README.md.

use std::hint::black_box;
use std::time::Duration;

use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion};

use pgshard::router::hash::Key;

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
    targets = bench_hash
}
criterion_main!(benches);
