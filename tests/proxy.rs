//! The core proxy through tokio-postgres, against real PostgreSQL started by the demo.

mod common;

use std::time::{Duration, Instant};

use common::{demo, proxy_client, Demo};
use futures_util::{SinkExt, TryStreamExt};

/// Pool size of this binary's demo: below the client counts used here.
const POOL_SIZE: usize = 4;

fn shared() -> &'static Demo {
    demo(1, POOL_SIZE)
}

#[tokio::test]
async fn simple_and_extended_queries() {
    let client = proxy_client(shared()).await;
    let messages = client
        .simple_query("SELECT 1 AS a; SELECT 'two' AS b")
        .await
        .unwrap();
    let rows: Vec<String> = messages
        .iter()
        .filter_map(|m| match m {
            tokio_postgres::SimpleQueryMessage::Row(r) => r.get(0).map(str::to_owned),
            _ => None,
        })
        .collect();
    assert_eq!(rows, vec!["1", "two"]);
    let row = client
        .query_one("SELECT $1::int4 + 1, $2::text", &[&41i32, &"x"])
        .await
        .unwrap();
    assert_eq!(
        (row.get::<_, i32>(0), row.get::<_, String>(1)),
        (42, "x".to_string())
    );
    let err = client.simple_query("SELEC 1").await.unwrap_err();
    assert_eq!(err.code().map(|c| c.code()), Some("42601"));
    // The session still works after an error.
    let row = client.query_one("SELECT 7", &[]).await.unwrap();
    assert_eq!(row.get::<_, i32>(0), 7);
}

#[tokio::test]
async fn prepared_statements_with_more_clients_than_pool_connections() {
    let demo = shared();
    let clients = POOL_SIZE * 4;
    let mut tasks = Vec::new();
    for c in 0..clients {
        let client = proxy_client(demo).await;
        tasks.push(tokio::spawn(async move {
            let add = client.prepare("SELECT $1::int8 + $2::int8").await.unwrap();
            let echo = client.prepare("SELECT $1::text || '!'").await.unwrap();
            for i in 0..50i64 {
                let row = client.query_one(&add, &[&i, &(c as i64)]).await.unwrap();
                assert_eq!(row.get::<_, i64>(0), i + c as i64);
                let row = client
                    .query_one(&echo, &[&format!("{c}-{i}")])
                    .await
                    .unwrap();
                assert_eq!(row.get::<_, String>(0), format!("{c}-{i}!"));
            }
        }));
    }
    for task in tasks {
        task.await.unwrap();
    }
}

#[tokio::test]
async fn statements_survive_failed_parse_and_close() {
    let client = proxy_client(shared()).await;
    let err = client
        .prepare("SELECT FROM nowhere_at_all")
        .await
        .unwrap_err();
    assert_eq!(err.code().map(|c| c.code()), Some("42P01"));
    let ok = client.prepare("SELECT 5").await.unwrap();
    assert_eq!(common::one_i32(&client, &ok, &[]).await, 5);
    drop(ok); // tokio-postgres sends Close for the statement
    let again = client.prepare("SELECT 5").await.unwrap();
    assert_eq!(common::one_i32(&client, &again, &[]).await, 5);
}

#[tokio::test]
async fn copy_in_and_out() {
    let client = proxy_client(shared()).await;
    client
        .batch_execute("DROP TABLE IF EXISTS copy_t; CREATE TABLE copy_t (id int, name text)")
        .await
        .unwrap();
    let sink = client.copy_in("COPY copy_t FROM STDIN").await.unwrap();
    let mut sink = Box::pin(sink);
    let data: String = (0..1000).map(|i| format!("{i}\tname {i}\n")).collect();
    sink.send(bytes::Bytes::from(data.clone())).await.unwrap();
    assert_eq!(sink.as_mut().finish().await.unwrap(), 1000);
    let stream = client.copy_out("COPY copy_t TO STDOUT").await.unwrap();
    let chunks: Vec<bytes::Bytes> = stream.try_collect().await.unwrap();
    let out: Vec<u8> = chunks.concat();
    assert_eq!(String::from_utf8(out).unwrap(), data);
    let n: i64 = client
        .query_one("SELECT count(*) FROM copy_t", &[])
        .await
        .unwrap()
        .get(0);
    assert_eq!(n, 1000);
}

#[tokio::test]
async fn cancel_stops_a_running_query_quickly() {
    let demo = shared();
    let client = proxy_client(demo).await;
    let token = client.cancel_token();
    let running = tokio::spawn(async move { client.simple_query("SELECT pg_sleep(10)").await });
    let backend = common::backend_client(demo, 0).await;
    let started = common::wait_until(Duration::from_secs(5), || async {
        let q = "SELECT count(*) FROM pg_stat_activity WHERE query = 'SELECT pg_sleep(10)' AND state = 'active'";
        backend.query_one(q, &[]).await.unwrap().get::<_, i64>(0) == 1
    })
    .await;
    assert!(started, "the sleep never started on the backend");
    let sent = Instant::now();
    token.cancel_query(tokio_postgres::NoTls).await.unwrap();
    let err = running.await.unwrap().unwrap_err();
    assert_eq!(err.code().map(|c| c.code()), Some("57014"), "{err}");
    assert!(
        sent.elapsed() < Duration::from_secs(1),
        "cancel took {:?}",
        sent.elapsed()
    );
}

#[tokio::test]
async fn dropped_client_leaves_no_open_transaction() {
    let demo = shared();
    let marker = "dropped_mid_tx";
    let client = common::connect(demo.proxy, common::USER, common::PASSWORD, common::DATABASE)
        .await
        .unwrap();
    client
        .batch_execute(&format!("SET application_name = '{marker}'"))
        .await
        .unwrap();
    client.batch_execute("BEGIN; SELECT 1").await.unwrap();
    let backend = common::backend_client(demo, 0).await;
    let q = format!("SELECT count(*) FROM pg_stat_activity WHERE application_name = '{marker}' AND state = 'idle in transaction'");
    assert_eq!(
        backend.query_one(&q, &[]).await.unwrap().get::<_, i64>(0),
        1
    );
    drop(client);
    let gone = common::wait_until(Duration::from_secs(5), || async {
        backend.query_one(&q, &[]).await.unwrap().get::<_, i64>(0) == 0
    })
    .await;
    assert!(
        gone,
        "a server stayed idle in transaction after its client left"
    );
}

#[tokio::test]
async fn unknown_database_is_refused() {
    let demo = shared();
    let err = common::connect(demo.proxy, common::USER, common::PASSWORD, "nosuchdb")
        .await
        .unwrap_err();
    assert_eq!(err.code().map(|c| c.code()), Some("3D000"), "{err}");
}

#[tokio::test]
async fn broken_server_connection_is_replaced() {
    let demo = shared();
    let victim = proxy_client(demo).await;
    victim.batch_execute("BEGIN").await.unwrap();
    let pid: i32 = victim
        .query_one("SELECT pg_backend_pid()", &[])
        .await
        .unwrap()
        .get(0);
    let backend = common::backend_client(demo, 0).await;
    backend
        .query_one("SELECT pg_terminate_backend($1)", &[&pid])
        .await
        .unwrap();
    // The victim hears of it at its next statement, with a clear error...
    let err = victim.simple_query("SELECT 1").await.unwrap_err();
    assert_eq!(err.code().map(|c| c.code()), Some("08006"), "{err}");
    let message = err
        .as_db_error()
        .map(|e| e.message().to_string())
        .unwrap_or_default();
    assert!(message.contains("was lost"), "{err:?}");
    // ...and then goes on, on another server connection; others never noticed.
    let row = victim.query_one("SELECT 2", &[]).await.unwrap();
    assert_eq!(row.get::<_, i32>(0), 2);
    let other = proxy_client(demo).await;
    assert_eq!(common::one_i32(&other, "SELECT 3", &[]).await, 3);
}

#[tokio::test]
async fn admin_console_shows_shards_pools_clients_stats_version() {
    let demo = shared();
    let admin = common::connect(demo.proxy, common::USER, common::PASSWORD, "pgshard")
        .await
        .unwrap();
    let rows = |msgs: Vec<tokio_postgres::SimpleQueryMessage>| -> Vec<Vec<String>> {
        msgs.into_iter()
            .filter_map(|m| match m {
                tokio_postgres::SimpleQueryMessage::Row(r) => Some(
                    (0..r.len())
                        .map(|i| r.get(i).unwrap_or("").to_string())
                        .collect(),
                ),
                _ => None,
            })
            .collect()
    };
    let shards = rows(admin.simple_query("SHOW SHARDS").await.unwrap());
    assert_eq!(shards.len(), 1);
    assert_eq!(shards[0][0], "b0");
    assert_eq!(shards[0][1], "primary");
    assert_eq!(shards[0][3], demo.backends[0].1.to_string());
    assert_eq!(shards[0][4], "1000");
    let pools = rows(admin.simple_query("show pools;").await.unwrap());
    assert_eq!(pools[0][4], POOL_SIZE.to_string());
    let clients = rows(admin.simple_query("SHOW CLIENTS").await.unwrap());
    assert!(clients.iter().any(|c| c[2] == "pgshard"), "{clients:?}");
    let stats = rows(admin.simple_query("SHOW STATS").await.unwrap());
    assert_eq!(stats[0][0], "b0");
    let version = rows(admin.simple_query("SHOW VERSION").await.unwrap());
    assert!(version[0][0].starts_with("pgshard "));
    let err = admin.simple_query("SHOW NONSENSE").await.unwrap_err();
    assert_eq!(err.code().map(|c| c.code()), Some("42601"));
    let message = err
        .as_db_error()
        .map(|e| e.message().to_string())
        .unwrap_or_default();
    assert!(message.contains("unknown admin command"), "{err:?}");
}

#[tokio::test]
async fn metrics_are_served_over_http() {
    let demo = shared();
    let client = proxy_client(demo).await;
    client.simple_query("SELECT 1").await.unwrap();
    client.query_one("SELECT $1::int4", &[&1i32]).await.unwrap();
    let body = common::http_get(demo.http, "/metrics").await;
    for name in [
        "pgshard_client_connections",
        "pgshard_queries_total{kind=\"simple\"}",
        "pgshard_queries_total{kind=\"extended\"}",
        "pgshard_query_duration_seconds_bucket",
    ] {
        assert!(body.contains(name), "/metrics lacks {name}:\n{body}");
    }
    let shards = common::http_get(demo.http, "/api/shards").await;
    assert!(shards.contains("\"vshards\":\"1000\""), "{shards}");
}

/// A big COPY whose rows each raise a NOTICE: server output flows while the proxy
/// writes COPY data. FIXME: this passes with a write-only proxy too (the driver sends
/// COPY data in chunks, so the proxy reads in between); it guards the path but does
/// not reproduce the write/write deadlock that `write_server` avoids.
#[tokio::test]
async fn large_copy_whose_rows_raise_notices_completes() {
    let client = proxy_client(shared()).await;
    client
        .batch_execute(
            "DROP TABLE IF EXISTS noisy; CREATE TABLE noisy (id int, pad text);
             CREATE OR REPLACE FUNCTION noisy_row() RETURNS trigger LANGUAGE plpgsql AS
               $$ BEGIN RAISE NOTICE 'row % with a notice long enough to fill buffers quickly', NEW.id; RETURN NEW; END $$;
             CREATE TRIGGER noisy_row BEFORE INSERT ON noisy FOR EACH ROW EXECUTE FUNCTION noisy_row();",
        )
        .await
        .unwrap();
    let rows = 100_000;
    let data: String = (0..rows)
        .map(|i| format!("{i}\t{}\n", "x".repeat(40)))
        .collect();
    let copy = async {
        let sink = client.copy_in("COPY noisy FROM STDIN").await.unwrap();
        let mut sink = Box::pin(sink);
        sink.send(bytes::Bytes::from(data)).await.unwrap();
        sink.as_mut().finish().await.unwrap()
    };
    let copied = tokio::time::timeout(Duration::from_secs(60), copy)
        .await
        .expect("COPY finished");
    assert_eq!(copied, rows);
}
