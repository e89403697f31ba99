//! Requests pipelined on shared server connections (`backend::mux`): every answer
//! reaches its own client, prepared statements follow, a failed or lost connection
//! is handled, cancel works, and a long request does not hold up other clients.

mod common;

use std::time::Duration;

use common::{connect, demo, start_proxy, Demo, Proxy};
use tokio_postgres::{Client, SimpleQueryMessage};

fn cluster() -> &'static Demo {
    demo(1, 4)
}

/// Six server connections, two of them shared.
const CONFIG: &str = "pool_size = 6\npipeline_connections = 2\n[[users]]\nname = \"app\"\nauth = \"trust\"\nadmin = true\n";

async fn app(proxy: &Proxy) -> Client {
    connect(proxy.addr, "app", "", common::DATABASE)
        .await
        .expect("connect as app")
}

fn code(err: &tokio_postgres::Error) -> Option<&str> {
    err.code().map(|c| c.code())
}

/// Requests the proxy ran on shared connections so far (`SHOW STATS`).
async fn shared_requests(proxy: &Proxy) -> u64 {
    let admin = connect(proxy.addr, "app", "", "pgshard")
        .await
        .expect("admin console");
    let rows = admin.simple_query("SHOW STATS").await.expect("SHOW STATS");
    rows.iter()
        .find_map(|m| match m {
            SimpleQueryMessage::Row(r) => r.get("shared_requests").map(str::to_owned),
            _ => None,
        })
        .and_then(|v| v.parse().ok())
        .expect("a shared_requests count")
}

/// Runs requests until a shared connection serves them (the pool opens them in the
/// background); returns the shared request count then.
async fn warm_up(proxy: &Proxy) -> u64 {
    let client = app(proxy).await;
    let warm = common::wait_until(Duration::from_secs(5), || async {
        client.simple_query("SELECT 1").await.unwrap();
        shared_requests(proxy).await > 0
    })
    .await;
    assert!(warm, "no request ever ran on a shared connection");
    shared_requests(proxy).await
}

async fn active_count(backend: &Client, query: &str) -> i64 {
    let q = "SELECT count(*) FROM pg_stat_activity WHERE query = $1 AND state = 'active'";
    backend.query_one(q, &[&query]).await.unwrap().get(0)
}

#[tokio::test]
async fn many_clients_each_get_their_own_answers() {
    // Two worker threads, so sessions and the connection's driver run in parallel
    // (the default is one thread on 2 cores).
    let workers = [("PGSHARD_WORKERS", "2")];
    let proxy = common::start_proxy_env(cluster(), "shared-answers", CONFIG, &workers);
    let mut tasks = Vec::new();
    for c in 0..16i32 {
        let client = app(&proxy).await;
        tasks.push(tokio::spawn(async move {
            let statement = client
                .prepare("SELECT $1::int4 * 1000 + $2::int4")
                .await
                .unwrap();
            for i in 0..100i32 {
                let simple = client
                    .simple_query(&format!("SELECT {c} * 1000 + {i}"))
                    .await
                    .unwrap();
                let value = simple.iter().find_map(|m| match m {
                    SimpleQueryMessage::Row(r) => r.get(0).map(str::to_owned),
                    _ => None,
                });
                assert_eq!(value, Some((c * 1000 + i).to_string()));
                let row = client.query_one(&statement, &[&c, &i]).await.unwrap();
                assert_eq!(row.get::<_, i32>(0), c * 1000 + i);
                // Unnamed statements, parsed in the same batch.
                let row = client
                    .query_one("SELECT $1::int4 - $2::int4", &[&c, &i])
                    .await
                    .unwrap();
                assert_eq!(row.get::<_, i32>(0), c - i);
            }
        }));
    }
    for task in tasks {
        task.await.expect("client task");
    }
    let shared = shared_requests(&proxy).await;
    assert!(shared >= 100, "only {shared} requests ran shared");
}

#[tokio::test]
async fn a_statement_whose_parse_failed_is_prepared_again() {
    let proxy = start_proxy(cluster(), "shared-parse", CONFIG);
    warm_up(&proxy).await;
    let backend = common::backend_client(cluster(), 0).await;
    backend
        .batch_execute("DROP TABLE IF EXISTS shared_parse; CREATE TABLE shared_parse (k int); INSERT INTO shared_parse VALUES (1)")
        .await
        .unwrap();
    let client = app(&proxy).await;
    let statement = client.prepare("SELECT k FROM shared_parse").await.unwrap();
    backend
        .batch_execute("DROP TABLE shared_parse")
        .await
        .unwrap();
    let err = client.query(&statement, &[]).await.unwrap_err();
    assert_eq!(code(&err), Some("42P01"), "{err}");
    backend
        .batch_execute(
            "CREATE TABLE shared_parse (k int); INSERT INTO shared_parse VALUES (1), (2)",
        )
        .await
        .unwrap();
    let before = shared_requests(&proxy).await;
    // Enough runs to reach each shared connection; each must find the statement.
    for _ in 0..20 {
        let rows = client.query(&statement, &[]).await.unwrap();
        assert_eq!(rows.len(), 2);
    }
    let after = shared_requests(&proxy).await;
    assert!(after >= before + 20, "shared requests {before} -> {after}");
    backend
        .batch_execute("DROP TABLE shared_parse")
        .await
        .unwrap();
}

#[tokio::test]
async fn a_long_request_holds_up_no_one_and_can_be_cancelled() {
    let proxy = start_proxy(cluster(), "shared-long", CONFIG);
    let before = warm_up(&proxy).await;
    let backend = common::backend_client(cluster(), 0).await;
    let sleeper = app(&proxy).await;
    let token = sleeper.cancel_token();
    let sleep = "SELECT pg_sleep(30), 'shared-long'";
    let running = tokio::spawn(async move { sleeper.simple_query(sleep).await });
    let started = common::wait_until(Duration::from_secs(5), || async {
        active_count(&backend, sleep).await == 1
    })
    .await;
    assert!(started, "the sleep never started");
    let shared = shared_requests(&proxy).await;
    assert_eq!(shared, before + 1, "the sleep did not run shared");
    // Others keep being served while it runs.
    let other = app(&proxy).await;
    for i in 0..20i32 {
        let row = other.query_one("SELECT $1::int4", &[&i]).await.unwrap();
        assert_eq!(row.get::<_, i32>(0), i);
    }
    assert!(!running.is_finished(), "the sleep ended early");
    token.cancel_query(tokio_postgres::NoTls).await.unwrap();
    let err = running.await.unwrap().unwrap_err();
    assert_eq!(code(&err), Some("57014"), "{err}");
    // The connection it ran on serves again.
    for _ in 0..10 {
        other.simple_query("SELECT 1").await.unwrap();
    }
}

#[tokio::test]
async fn a_client_that_leaves_mid_request_has_it_cancelled() {
    let proxy = start_proxy(cluster(), "shared-leave", CONFIG);
    let before = warm_up(&proxy).await;
    let backend = common::backend_client(cluster(), 0).await;
    let mut leaver = common::RawClient::login(proxy.addr, "app").await;
    let sleep = "SELECT pg_sleep(30), 'shared-leave'";
    leaver
        .send(&common::message(b'Q', format!("{sleep}\0").as_bytes()))
        .await;
    let started = common::wait_until(Duration::from_secs(5), || async {
        active_count(&backend, sleep).await == 1
    })
    .await;
    assert!(started, "the sleep never started");
    let shared = shared_requests(&proxy).await;
    assert_eq!(shared, before + 1, "the sleep did not run shared");
    drop(leaver);
    let stopped = common::wait_until(Duration::from_secs(5), || async {
        active_count(&backend, sleep).await == 0
    })
    .await;
    assert!(stopped, "the request of a client that left kept running");
}

#[tokio::test]
async fn a_terminated_shared_connection_is_replaced() {
    let proxy = start_proxy(cluster(), "shared-lost", CONFIG);
    let before = warm_up(&proxy).await;
    let backend = common::backend_client(cluster(), 0).await;
    let client = app(&proxy).await;
    let marker = "SELECT 'shared-lost-marker'";
    client.simple_query(marker).await.unwrap();
    assert_eq!(shared_requests(&proxy).await, before + 1);
    let q = "SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity WHERE query = $1";
    let killed: i64 = backend.query_one(q, &[&marker]).await.unwrap().get(0);
    assert_eq!(killed, 1, "the shared connection was not found");
    // A request that raced the loss gets 08006; the client then carries on.
    let errors = std::sync::Mutex::new(Vec::new());
    let recovered = common::wait_until(Duration::from_secs(5), || async {
        match client.query_one("SELECT $1::int4", &[&7i32]).await {
            Ok(row) => row.get::<_, i32>(0) == 7,
            Err(e) => {
                errors.lock().unwrap().push(code(&e).map(str::to_owned));
                false
            }
        }
    })
    .await;
    let errors = errors.into_inner().unwrap();
    assert!(recovered, "no answer after the loss: {errors:?}");
    assert!(
        errors.iter().all(|c| c.as_deref() == Some("08006")),
        "{errors:?}"
    );
    for _ in 0..20 {
        client.simple_query("SELECT 1").await.unwrap();
    }
}

#[tokio::test]
async fn clients_with_different_settings_never_share_a_connection() {
    let proxy = start_proxy(cluster(), "shared-settings", CONFIG);
    let mut tasks = Vec::new();
    for work_mem in ["5MB", "7MB", "9MB", ""] {
        let options = if work_mem.is_empty() {
            String::new()
        } else {
            format!("options='-c work_mem={work_mem}'")
        };
        let conn_str = format!(
            "host={} port={} user=app dbname={} {options}",
            proxy.addr.ip(),
            proxy.addr.port(),
            common::DATABASE
        );
        let (client, connection) = tokio_postgres::connect(&conn_str, tokio_postgres::NoTls)
            .await
            .expect("connect");
        tokio::spawn(connection);
        tasks.push(tokio::spawn(async move {
            let want = if work_mem.is_empty() { "4MB" } else { work_mem };
            for _ in 0..50 {
                let row = client
                    .query_one("SELECT current_setting('work_mem')", &[])
                    .await
                    .unwrap();
                assert_eq!(row.get::<_, String>(0), want);
            }
        }));
    }
    for task in tasks {
        task.await.expect("client task");
    }
    assert!(shared_requests(&proxy).await > 0);
}

#[tokio::test]
async fn session_changes_never_reach_other_clients() {
    let proxy = start_proxy(cluster(), "shared-session", CONFIG);
    let before = warm_up(&proxy).await;
    let backend = common::backend_client(cluster(), 0).await;
    // A function whose call looks self-contained but changes a setting.
    backend
        .batch_execute(
            "CREATE OR REPLACE FUNCTION shared_setter() RETURNS text LANGUAGE sql \
             AS $$ SELECT set_config('application_name', 'leaked', false) $$",
        )
        .await
        .unwrap();
    let a = app(&proxy).await;
    let b = app(&proxy).await;
    let c = app(&proxy).await;
    // It runs on a shared connection, which is then retired.
    c.simple_query("SELECT shared_setter()").await.unwrap();
    assert_eq!(shared_requests(&proxy).await, before + 1);
    // PostgreSQL nests comments: this is a SET, whatever the first word looks like.
    a.simple_query("/* /* */ select */ SET search_path = shared_evil")
        .await
        .unwrap();
    for _ in 0..20 {
        let row = b
            .query_one(
                "SELECT current_setting('search_path'), current_setting('application_name')",
                &[],
            )
            .await
            .unwrap();
        assert_eq!(row.get::<_, String>(0), "\"$user\", public");
        assert_ne!(row.get::<_, String>(1), "leaked");
    }
    let row = a.query_one("SHOW search_path", &[]).await.unwrap();
    assert_eq!(row.get::<_, String>(0), "shared_evil");
    backend
        .batch_execute("DROP FUNCTION shared_setter()")
        .await
        .unwrap();
}

#[tokio::test]
async fn a_client_leaving_mid_batch_leaves_statements_usable() {
    let proxy = start_proxy(cluster(), "shared-mid-batch", CONFIG);
    warm_up(&proxy).await;
    let backend = common::backend_client(cluster(), 0).await;
    let statement = "SELECT 42 AS shared_mid_batch";
    let mut leaver = common::RawClient::login(proxy.addr, "app").await;
    leaver.send(&common::raw::parse("s1", statement)).await;
    leaver.send(&common::raw::sync()).await;
    leaver.until_ready().await;
    // A sleep, then the named statement new to the shared connection; then gone.
    let sleep = "SELECT pg_sleep(30), 'shared-mid-batch'";
    let mut batch = common::raw::parse("", sleep);
    for part in [
        common::raw::bind(""),
        common::raw::execute(),
        common::raw::bind("s1"),
        common::raw::execute(),
        common::raw::sync(),
    ] {
        batch.extend_from_slice(&part);
    }
    leaver.send(&batch).await;
    let started = common::wait_until(Duration::from_secs(5), || async {
        active_count(&backend, sleep).await == 1
    })
    .await;
    assert!(started, "the sleep never started");
    drop(leaver);
    let stopped = common::wait_until(Duration::from_secs(5), || async {
        active_count(&backend, sleep).await == 0
    })
    .await;
    assert!(stopped, "the sleep kept running");
    // Another client's use of the same statement works, wherever it runs.
    let client = app(&proxy).await;
    let prepared = client.prepare(statement).await.unwrap();
    for _ in 0..20 {
        let row = client.query_one(&prepared, &[]).await.unwrap();
        assert_eq!(row.get::<_, i32>(0), 42);
    }
}
