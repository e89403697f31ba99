//! The per-message work pgshard does on the hot path, without sockets.
//!
//! `forward/*` replays a server's reply through the core of
//! `Session::handle_server_input` (`src/frontend/session/replies.rs`): `next_frame`,
//! `flush_synthetic`, `on_server`, copy the frame to the client's buffer when
//! `reply.forward`. Throughput is server bytes handled per second. `statements/new`
//! runs once per named Parse, `statements/rewrite_bind` once per Bind of a named
//! statement, and `params/*` is the SET/RESET sniffing every query string goes through.
//!
//! Run: `cargo bench --bench forward` (about 30 s) or add `-- --quick`.

use std::collections::HashSet;
use std::hint::black_box;
use std::sync::Arc;
use std::time::Duration;

use bytes::{BufMut, BytesMut};
use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion, Throughput};

use pgshard::frontend::params;
use pgshard::frontend::pipeline::{Expect, Pipeline, Req};
use pgshard::frontend::shareable;
use pgshard::frontend::statements::{rewrite_bind, Statement, Statements};
use pgshard::protocol::messages::{begin, bind_names, finish, put_cstr};
use pgshard::protocol::next_frame;

/// The query `pgbench -S` runs, as sent with `-M simple`.
const SELECT_SQL: &str = "SELECT abalance FROM pgbench_accounts WHERE aid = 48217;";
/// The same with a parameter, as `-M extended` / `-M prepared` send it.
const SELECT_PARAM_SQL: &[u8] = b"SELECT abalance FROM pgbench_accounts WHERE aid = $1;";
/// A tpcb-like statement: "SET" in it makes `may_change` answer yes.
const UPDATE_SQL: &str =
    "UPDATE pgbench_accounts SET abalance = abalance + -4211 WHERE aid = 48217;";
/// Row count and DataRow frame size of the large result.
const ROWS_MANY: usize = 1000;
const ROW_BYTES: usize = 100;
const INT4_OID: i32 = 23;
const TEXT_OID: i32 = 25;

/// Appends one message with `payload`.
fn msg(out: &mut BytesMut, tag: u8, payload: &[u8]) {
    let at = begin(out, tag);
    out.put_slice(payload);
    finish(out, at);
}

fn row_description(out: &mut BytesMut, name: &str, type_oid: i32, type_len: i16) {
    let at = begin(out, b'T');
    out.put_i16(1);
    put_cstr(out, name.as_bytes());
    out.put_i32(16_397); // table oid
    out.put_i16(1); // column number
    out.put_i32(type_oid);
    out.put_i16(type_len);
    out.put_i32(-1); // type modifier
    out.put_i16(0); // text format
    finish(out, at);
}

fn data_row(out: &mut BytesMut, value: &[u8]) {
    let at = begin(out, b'D');
    out.put_i16(1);
    out.put_i32(value.len() as i32);
    out.put_slice(value);
    finish(out, at);
}

/// A server reply and the requests the client sent for it.
struct Scenario {
    name: &'static str,
    requests: Vec<Req>,
    server: BytesMut,
}

fn scenarios() -> Vec<Scenario> {
    let select_one = |out: &mut BytesMut| {
        data_row(out, b"-2746");
        msg(out, b'C', b"SELECT 1\0");
        msg(out, b'Z', b"I");
    };
    let mut simple = BytesMut::new();
    row_description(&mut simple, "abalance", INT4_OID, 4);
    select_one(&mut simple);

    // Parse/Bind/Execute/Sync of an unnamed statement.
    let mut extended = BytesMut::new();
    msg(&mut extended, b'1', b"");
    msg(&mut extended, b'2', b"");
    select_one(&mut extended);

    // `pgbench -M prepared` once the statement exists: libpq's PQexecPrepared sends
    // Bind/Describe(portal)/Execute/Sync.
    let mut prepared = BytesMut::new();
    msg(&mut prepared, b'2', b"");
    row_description(&mut prepared, "abalance", INT4_OID, 4);
    select_one(&mut prepared);

    let mut many = BytesMut::new();
    row_description(&mut many, "filler", TEXT_OID, -1);
    let value = vec![b'x'; ROW_BYTES - 11]; // tag, length, count, value length
    for _ in 0..ROWS_MANY {
        data_row(&mut many, &value);
    }
    msg(&mut many, b'C', format!("SELECT {ROWS_MANY}\0").as_bytes());
    msg(&mut many, b'Z', b"I");

    use Req::*;
    vec![
        Scenario {
            name: "simple_select",
            requests: vec![Query],
            server: simple,
        },
        Scenario {
            name: "extended_select",
            requests: vec![Parse(None), Bind, Execute, Sync],
            server: extended,
        },
        Scenario {
            name: "prepared_select",
            requests: vec![Bind, Describe, Execute, Sync],
            server: prepared,
        },
        Scenario {
            name: "rows_1000",
            requests: vec![Query],
            server: many,
        },
    ]
}

/// The proxy's server-to-client loop over one whole reply; returns the pipeline's
/// last ReadyForQuery status.
fn forward(
    pipeline: &mut Pipeline,
    prepared: &mut HashSet<u64>,
    mut server: &[u8],
    client: &mut BytesMut,
) -> Option<u8> {
    let mut ready = None;
    while let Ok(Some(info)) = next_frame(server) {
        pipeline.flush_synthetic(client);
        let frame = &server[..info.len];
        let reply = pipeline.on_server(frame, prepared);
        if reply.forward {
            client.extend_from_slice(frame);
        }
        ready = reply.ready.or(ready);
        server = &server[info.len..];
    }
    ready
}

fn push_requests(pipeline: &mut Pipeline, requests: &[Req]) {
    for &req in requests {
        pipeline.push(Expect::Forward(req));
    }
}

fn bench_forward(c: &mut Criterion) {
    let mut group = c.benchmark_group("forward");
    for s in scenarios() {
        let mut pipeline = Pipeline::default();
        let mut prepared = HashSet::new();
        let mut client = BytesMut::with_capacity(s.server.len());
        // Every message is the client's: the whole reply must come out unchanged.
        push_requests(&mut pipeline, &s.requests);
        let ready = forward(&mut pipeline, &mut prepared, &s.server, &mut client);
        assert_eq!(ready, Some(b'I'), "{}", s.name);
        assert_eq!(client, s.server, "{}", s.name);
        assert!(pipeline.is_idle(), "{}", s.name);

        group.throughput(Throughput::Bytes(s.server.len() as u64));
        group.bench_function(BenchmarkId::from_parameter(s.name), |b| {
            b.iter(|| {
                client.clear();
                push_requests(&mut pipeline, &s.requests);
                let server = black_box(&s.server[..]);
                black_box(forward(&mut pipeline, &mut prepared, server, &mut client))
            })
        });
    }
    group.finish();
}

/// A Bind payload as libpq sends it for one text parameter.
fn bind_payload(statement: &[u8], value: &[u8]) -> BytesMut {
    let mut out = BytesMut::new();
    put_cstr(&mut out, b"");
    put_cstr(&mut out, statement);
    out.put_i16(0); // parameter formats: all text
    out.put_i16(1);
    out.put_i32(value.len() as i32);
    out.put_slice(value);
    out.put_i16(1); // result formats
    out.put_i16(0);
    out
}

fn bench_statements(c: &mut Criterion) {
    let mut group = c.benchmark_group("statements");
    // libpq's PQprepare with nParams = 1 and no types: one unspecified (0) type.
    let types: &[u8] = b"\0\x01\0\0\0\0";
    group.bench_function("new", |b| {
        b.iter(|| Statement::new(black_box(SELECT_PARAM_SQL), black_box(types), Vec::new()))
    });
    // Per Bind of a named statement, as `on_bind` does it: find the client's
    // statement, check the server has it, rewrite the Bind to the global name.
    let mut client_statements = Statements::default();
    client_statements.insert(
        b"P_0",
        Arc::new(Statement::new(SELECT_PARAM_SQL, types, Vec::new())),
    );
    let mut server_prepared = HashSet::new();
    let payload = bind_payload(b"P_0", b"48217");
    let mut out = BytesMut::with_capacity(256);
    group.throughput(Throughput::Bytes(payload.len() as u64 + 5));
    group.bench_function("rewrite_bind", |b| {
        b.iter(|| {
            out.clear();
            let payload = black_box(&payload[..]);
            let Some((portal, name, rest_at)) = bind_names(payload) else {
                return 0;
            };
            let Some(statement) = client_statements.get(name).cloned() else {
                return 0;
            };
            server_prepared.insert(statement.id);
            rewrite_bind(
                &mut out,
                portal,
                &statement.global_name,
                &payload[rest_at..],
            );
            black_box(out.len())
        })
    });
    group.finish();
}

fn bench_params(c: &mut Criterion) {
    let mut group = c.benchmark_group("params");
    for (name, sql) in [("select", SELECT_SQL), ("update", UPDATE_SQL)] {
        group.bench_function(BenchmarkId::new("may_change", name), |b| {
            b.iter(|| params::may_change(black_box(sql.as_bytes())))
        });
    }
    // What a false positive of `may_change` costs: the full parse finds nothing.
    assert!(params::may_change(UPDATE_SQL.as_bytes()));
    assert!(params::changes(UPDATE_SQL).is_empty());
    group.bench_function(BenchmarkId::new("changes", "update"), |b| {
        b.iter(|| params::changes(black_box(UPDATE_SQL)))
    });
    // The check each request makes before it may run on a shared connection.
    for (name, sql) in [("select", SELECT_SQL), ("update", UPDATE_SQL)] {
        assert!(shareable::self_contained(sql.as_bytes()));
        group.bench_function(BenchmarkId::new("self_contained", name), |b| {
            b.iter(|| shareable::self_contained(black_box(sql.as_bytes())))
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
    targets = bench_forward, bench_statements, bench_params
}
criterion_main!(benches);
