//! Two-phase commit across two real backends: a decided commit survives a
//! participant's lost connection and recovery finishes it; undecided prepared
//! transactions are rolled back; a failed participant aborts everyone; a proxy
//! resolves what it finds at start.

mod common;

use std::sync::Arc;
use std::time::Duration;

use common::{demo, Demo};
use pgshard::backend::pool::Pool;
use pgshard::backend::server::ServerConn;
use pgshard::backend::twophase::{Coordinator, LOG_TABLE};
use pgshard::router::ShardMap;

fn cluster() -> &'static Demo {
    demo(2, 4)
}

/// Recovery resolves every pgshard transaction it finds, so the tests take turns.
static SERIAL: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

fn map() -> ShardMap {
    ShardMap::load(&cluster().dir.join("shardmap.toml")).expect("demo shard map")
}

fn pools(map: &ShardMap) -> Vec<Arc<Pool>> {
    map.backends
        .iter()
        .map(|b| {
            Arc::new(Pool::new(
                &b.name,
                "primary",
                b.primary.clone(),
                4,
                Duration::from_secs(5),
            ))
        })
        .collect()
}

/// A fresh table on both backends.
async fn table(name: &str) {
    for i in 0..2 {
        common::backend_client(cluster(), i)
            .await
            .batch_execute(&format!(
                "DROP TABLE IF EXISTS {name}; CREATE TABLE {name} (id int)"
            ))
            .await
            .unwrap();
    }
}

async fn count(backend: usize, sql: &str) -> i64 {
    let client = common::backend_client(cluster(), backend).await;
    client.query_one(sql, &[]).await.unwrap().get(0)
}

/// Whether `backend` (participant `backend` of the transaction) has `gid` prepared.
async fn prepared(backend: usize, gid: &str) -> i64 {
    let gid = Coordinator::participant_gid(gid, backend);
    let sql = format!("SELECT count(*) FROM pg_prepared_xacts WHERE gid = '{gid}'");
    count(backend, &sql).await
}

/// Connections to both backends, each in a transaction that inserted into `table`.
async fn participants(map: &ShardMap, table: &str) -> (ServerConn, ServerConn) {
    let mut conns = Vec::new();
    for (i, backend) in map.backends.iter().enumerate() {
        let mut conn = ServerConn::connect(&backend.primary).await.unwrap();
        conn.execute(&format!("BEGIN; INSERT INTO {table} VALUES ({})", i + 1))
            .await
            .unwrap();
        conns.push(conn);
    }
    let b = conns.pop().unwrap();
    let a = conns.pop().unwrap();
    (a, b)
}

/// Participants as above, with their transactions prepared under a new gid.
async fn prepare_both(
    coordinator: &Coordinator,
    map: &ShardMap,
    table: &str,
) -> (ServerConn, ServerConn, String) {
    let (mut a, mut b) = participants(map, table).await;
    let gid = Coordinator::new_gid();
    coordinator
        .prepare(&gid, &mut [&mut a, &mut b])
        .await
        .unwrap();
    (a, b, gid)
}

#[tokio::test]
async fn a_decided_commit_is_finished_by_recovery_after_a_lost_participant() {
    let _turn = SERIAL.lock().await;
    let map = map();
    let pools = pools(&map);
    table("tp_decided").await;
    let coordinator = Coordinator::new(pools[0].clone(), Duration::from_secs(3600));
    let (mut a, mut b, gid) = prepare_both(&coordinator, &map, "tp_decided").await;
    coordinator.decide(&gid).await.unwrap();
    // Between the decision and COMMIT PREPARED, b's connection is terminated.
    let terminate = format!("SELECT count(pg_terminate_backend({}))", b.cancel.pid);
    assert_eq!(count(1, &terminate).await, 1);
    let finished = coordinator.finish(&gid, &mut [&mut a, &mut b]).await;
    assert!(
        finished.is_err(),
        "COMMIT PREPARED reached a terminated connection"
    );
    assert_eq!(count(0, "SELECT count(*) FROM tp_decided").await, 1);
    assert_eq!(
        prepared(1, &gid).await,
        1,
        "the prepared transaction was lost"
    );

    // (The demo's own proxy may get there first: either way it ends committed.)
    coordinator.recover(&pools).await.unwrap();
    assert_eq!(count(1, "SELECT count(*) FROM tp_decided").await, 1);
    assert_eq!(prepared(1, &gid).await, 0);
    let logged = format!("SELECT count(*) FROM {LOG_TABLE} WHERE gid = '{gid}'");
    assert_eq!(count(0, &logged).await, 0, "the decision stayed in the log");
}

/// A transaction prepared under a gid without a participant suffix (as proxies
/// before participant ids made them) is still resolved by its logged decision.
#[tokio::test]
async fn recovery_resolves_ids_without_a_participant_suffix() {
    let _turn = SERIAL.lock().await;
    let map = map();
    let pools = pools(&map);
    table("tp_old_ids").await;
    let coordinator = Coordinator::new(pools[0].clone(), Duration::from_secs(3600));
    let (mut a, mut b) = participants(&map, "tp_old_ids").await;
    let gid = Coordinator::new_gid();
    for conn in [&mut a, &mut b] {
        conn.execute(&format!("PREPARE TRANSACTION '{gid}'"))
            .await
            .unwrap();
    }
    coordinator.decide(&gid).await.unwrap();
    drop((a, b));
    coordinator.recover(&pools).await.unwrap();
    let old = format!("SELECT count(*) FROM pg_prepared_xacts WHERE gid = '{gid}'");
    for backend in 0..2 {
        assert_eq!(count(backend, &old).await, 0, "{gid} left prepared");
        assert_eq!(count(backend, "SELECT count(*) FROM tp_old_ids").await, 1);
    }
    let logged = format!("SELECT count(*) FROM {LOG_TABLE} WHERE gid = '{gid}'");
    assert_eq!(count(0, &logged).await, 0, "the decision stayed in the log");
}

#[tokio::test]
async fn undecided_prepared_transactions_are_rolled_back() {
    let _turn = SERIAL.lock().await;
    let map = map();
    let pools = pools(&map);
    table("tp_undecided").await;
    let coordinator = Coordinator::new(pools[0].clone(), Duration::from_secs(3600));
    let (a, b, gid) = prepare_both(&coordinator, &map, "tp_undecided").await;
    // The coordinator dies before deciding.
    drop((a, b));
    // Too young to be presumed aborted.
    let patient = coordinator.recover(&pools).await.unwrap();
    assert_eq!(patient.rolled_back, 0);
    assert_eq!(prepared(0, &gid).await, 1);
    // Another coordinator, for which it is old enough.
    let eager = Coordinator::new(pools[0].clone(), Duration::ZERO);
    let recovered = eager.recover(&pools).await.unwrap();
    assert!(recovered.rolled_back >= 2, "{recovered:?}");
    for backend in 0..2 {
        assert_eq!(prepared(backend, &gid).await, 0);
        assert_eq!(count(backend, "SELECT count(*) FROM tp_undecided").await, 0);
    }
}

#[tokio::test]
async fn a_failed_participant_aborts_everyone() {
    let _turn = SERIAL.lock().await;
    let map = map();
    let pools = pools(&map);
    table("tp_failed").await;
    let coordinator = Coordinator::new(pools[0].clone(), Duration::from_secs(3600));
    let (mut a, mut b) = participants(&map, "tp_failed").await;
    // b's transaction fails; PREPARE then only rolls it back.
    assert!(b.execute("SELECT 1/0").await.is_err());
    let err = coordinator
        .commit(&mut [&mut a, &mut b], None)
        .await
        .unwrap_err();
    assert!(err.to_string().contains("backend 1"), "{err}");
    for backend in 0..2 {
        assert_eq!(count(backend, "SELECT count(*) FROM tp_failed").await, 0);
    }
    let leftover = "SELECT count(*) FROM pg_prepared_xacts WHERE gid LIKE 'pgshard_%'";
    assert_eq!(count(0, leftover).await + count(1, leftover).await, 0);
    // And a clean commit across both works.
    let (mut a, mut b) = participants(&map, "tp_failed").await;
    coordinator
        .commit(&mut [&mut a, &mut b], None)
        .await
        .unwrap();
    for backend in 0..2 {
        assert_eq!(count(backend, "SELECT count(*) FROM tp_failed").await, 1);
    }
}

#[tokio::test]
async fn a_starting_proxy_resolves_decided_transactions() {
    let _turn = SERIAL.lock().await;
    let map = map();
    let pools = pools(&map);
    table("tp_start").await;
    let coordinator = Coordinator::new(pools[0].clone(), Duration::from_secs(3600));
    let (a, b, gid) = prepare_both(&coordinator, &map, "tp_start").await;
    coordinator.decide(&gid).await.unwrap();
    drop((a, b));
    let _proxy = common::start_proxy(
        cluster(),
        "twophase-start",
        "[[users]]\nname = \"app\"\nauth = \"trust\"\n",
    );
    let resolved = common::wait_until(Duration::from_secs(10), || async {
        prepared(0, &gid).await == 0 && prepared(1, &gid).await == 0
    })
    .await;
    assert!(resolved, "the proxy left {gid} prepared");
    for backend in 0..2 {
        assert_eq!(count(backend, "SELECT count(*) FROM tp_start").await, 1);
    }
}

/// Two backends that are databases of one cluster: prepared transaction ids are
/// unique per cluster, so each participant prepares under its own.
#[tokio::test]
async fn backends_sharing_a_cluster_commit_together() {
    let _turn = SERIAL.lock().await;
    let exists = "SELECT count(*) FROM pg_database WHERE datname = 'tp_second'";
    if count(0, exists).await == 0 {
        common::backend_client(cluster(), 0)
            .await
            .batch_execute("CREATE DATABASE tp_second")
            .await
            .unwrap();
    }
    // The demo's map with backend b1 moved into database tp_second of b0's cluster.
    let text = std::fs::read_to_string(cluster().dir.join("shardmap.toml")).unwrap();
    let mut doc: toml::Value = toml::from_str(&text).unwrap();
    let backends = doc["backends"].as_array_mut().unwrap();
    let first_dsn = backends[0]["primary"].as_str().unwrap().to_string();
    assert!(first_dsn.contains("/postgres?"), "{first_dsn}");
    backends[1]["primary"] = first_dsn.replace("/postgres?", "/tp_second?").into();
    let tables = doc["tables"].as_array_mut().unwrap();
    let table: toml::Value =
        toml::from_str("name = \"tp_same\"\nkey = \"id\"\ntype = \"int4\"").unwrap();
    tables.push(table);
    let proxy = common::start_proxy_with_map(
        "twophase-one-cluster",
        &toml::to_string(&doc).unwrap(),
        "[[users]]\nname = \"app\"\nauth = \"trust\"\n",
    );
    let client = common::connect(proxy.addr, "app", "", common::DATABASE)
        .await
        .unwrap();
    // DDL on every backend, a split INSERT and a transaction on both: all three
    // commit with two-phase commit on the one cluster.
    client
        .batch_execute("DROP TABLE IF EXISTS tp_same; CREATE TABLE tp_same (id int PRIMARY KEY)")
        .await
        .unwrap();
    let values: Vec<String> = (1..=10).map(|i| format!("({i})")).collect();
    client
        .batch_execute(&format!(
            "INSERT INTO tp_same (id) VALUES {}",
            values.join(", ")
        ))
        .await
        .unwrap();
    client.batch_execute("BEGIN").await.unwrap();
    for id in 11..=20 {
        client
            .execute("INSERT INTO tp_same (id) VALUES ($1)", &[&id])
            .await
            .unwrap();
    }
    client.batch_execute("COMMIT").await.unwrap();
    let through: i64 = client
        .query_one("SELECT count(*) FROM tp_same", &[])
        .await
        .unwrap()
        .get(0);
    assert_eq!(through, 20);
    let first_cluster = format!("127.0.0.1:{}", cluster().backends[0].1);
    let second = common::connect(
        first_cluster.parse().unwrap(),
        common::USER,
        common::PASSWORD,
        "tp_second",
    )
    .await
    .unwrap();
    let on_second: i64 = second
        .query_one("SELECT count(*) FROM tp_same", &[])
        .await
        .unwrap()
        .get(0);
    let on_first = count(0, "SELECT count(*) FROM tp_same").await;
    assert_eq!(on_first + on_second, 20);
    assert!(on_first > 0 && on_second > 0, "{on_first} + {on_second}");
    let leftover = "SELECT count(*) FROM pg_prepared_xacts WHERE gid LIKE 'pgshard_%'";
    assert_eq!(count(0, leftover).await, 0);
}
