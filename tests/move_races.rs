//! Vshard moves against statements caught at awkward moments: a write waiting for a
//! server connection when the move starts, a locking read and a portal bound before
//! the move and used during it, and a table whose columns are ordered differently
//! on the two backends. Each write lands exactly once.

mod common;

use std::time::Duration;

use common::{demo, through_proxy, wait_until, Proxy};
use pgshard::router::hash::Key;
use serde_json::Value;

/// Rows of each table: about 20 keys per vshard.
const ROWS: i32 = 20_000;

const USERS: &str =
    "[[users]]\nname = \"pgshard\"\npassword = \"pgshard\"\nauth = \"scram-sha-256\"\n";

/// The demo's two backends with `tables` (name, key) sharded by int4 keys.
fn map(tables: &[&str]) -> String {
    let text = std::fs::read_to_string(demo(2, 4).dir.join("shardmap.toml")).unwrap();
    let mut doc: toml::Table = toml::from_str(&text).unwrap();
    let tables = tables
        .iter()
        .map(|name| {
            let mut t = toml::Table::new();
            t.insert("name".into(), (*name).into());
            t.insert("key".into(), "k".into());
            t.insert("type".into(), "int4".into());
            toml::Value::Table(t)
        })
        .collect();
    doc.insert("tables".into(), toml::Value::Array(tables));
    toml::to_string(&doc).unwrap()
}

fn proxy(name: &str, table: &str, extra: &str) -> Proxy {
    let config = format!("http_listen = \"127.0.0.1:0\"\n{extra}\n{USERS}");
    common::start_proxy_with_map(name, &map(&[table]), &config)
}

async fn client(proxy: &Proxy) -> tokio_postgres::Client {
    common::connect(proxy.addr, common::USER, common::PASSWORD, common::DATABASE)
        .await
        .expect("connect through the proxy")
}

/// Keys of the table (1..=ROWS) whose vshard is `vshard`.
fn keys_in(vshard: u32, n: usize) -> Vec<i32> {
    let keys: Vec<i32> = (1..=ROWS)
        .filter(|k: &i32| Key::Int((*k).into()).vshard(1000) == vshard)
        .take(n)
        .collect();
    assert_eq!(keys.len(), n, "keys in vshard {vshard}");
    keys
}

/// A table of `rows` keys with v = k, through the proxy.
async fn fill(c: &tokio_postgres::Client, table: &str, rows: i32) {
    c.simple_query(&format!(
        "CREATE TABLE {table} (k int PRIMARY KEY, v int NOT NULL)"
    ))
    .await
    .unwrap();
    let values: Vec<String> = (1..=rows).map(|k| format!("({k}, {k})")).collect();
    for chunk in values.chunks(500) {
        let sql = format!("INSERT INTO {table} (k, v) VALUES {}", chunk.join(", "));
        c.simple_query(&sql).await.unwrap();
    }
}

/// Starts moving `vshard` to `to` and waits until the proxy says it moves.
async fn start_move(
    proxy: &Proxy,
    vshard: u32,
    to: &str,
) -> tokio::task::JoinHandle<(u16, String)> {
    let http = proxy.http.unwrap();
    let body = format!("{{\"vshard\": {vshard}, \"to\": \"{to}\"}}");
    let call =
        tokio::spawn(async move { common::http_call(http, "POST", "/api/move", &body).await });
    let moving = wait_until(Duration::from_secs(30), || async {
        let body = common::http_get(http, "/api/map").await;
        let map: Value = serde_json::from_str(&body).unwrap();
        map["moving"] == vshard
    })
    .await;
    assert!(moving, "the move of vshard {vshard} did not start");
    call
}

async fn value(c: &tokio_postgres::Client, table: &str, k: i32) -> String {
    through_proxy(c, &format!("SELECT v FROM {table} WHERE k = {k}")).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_write_waiting_for_a_connection_when_a_move_starts_lands_once() {
    // Two server connections per backend, none shared: two open transactions take
    // them all.
    let proxy = proxy(
        "race-pool",
        "race_pool",
        "pool_size = 2\npipeline_connections = 0\ncheckout_timeout_ms = 30000",
    );
    fill(&client(&proxy).await, "race_pool", ROWS).await;
    let vshard = 7; // on b0 (0-499)
    let key = keys_in(vshard, 1)[0];
    let other = keys_in(8, 1)[0];
    let mut holders = Vec::new();
    for _ in 0..2 {
        let c = client(&proxy).await;
        c.simple_query(&format!("BEGIN; SELECT v FROM race_pool WHERE k = {other}"))
            .await
            .unwrap();
        holders.push(c);
    }
    let writer = client(&proxy).await;
    let write = tokio::spawn(async move {
        writer
            .simple_query(&format!(
                "UPDATE race_pool SET v = v + 1000 WHERE k = {key}"
            ))
            .await
            .map(|_| ())
    });
    let moving = start_move(&proxy, vshard, "b1").await;
    // The move waits for the write routed before it began: it must not switch
    // (and so cannot lose the write) while the write waits for a connection.
    let http = proxy.http.unwrap();
    let switched = wait_until(Duration::from_secs(3), || async {
        let body = common::http_get(http, "/api/map").await;
        let map: Value = serde_json::from_str(&body).unwrap();
        map["version"] != 1
    })
    .await;
    assert!(
        !switched,
        "the move switched while a write routed before it waited"
    );
    for c in &holders {
        c.simple_query("COMMIT").await.unwrap();
    }
    write.await.unwrap().expect("the waiting write");
    let (status, body) = moving.await.unwrap();
    assert_eq!(status, 200, "{body}");
    let c = client(&proxy).await;
    assert_eq!(value(&c, "race_pool", key).await, (key + 1000).to_string());
    let direct = common::backend_client(demo(2, 4), 1).await;
    assert_eq!(
        value(&direct, "race_pool", key).await,
        (key + 1000).to_string()
    );
    let count = through_proxy(&c, "SELECT count(*) FROM race_pool").await;
    assert_eq!(count, ROWS.to_string());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_locking_read_and_a_bound_portal_across_a_move_land_once() {
    let proxy = proxy("race-lock", "race_lock", "pool_size = 4");
    fill(&client(&proxy).await, "race_lock", ROWS).await;
    let vshard = 11;
    let keys = keys_in(vshard, 2);
    let (locked, bound) = (keys[0], keys[1]);
    let reader = client(&proxy).await;
    reader
        .simple_query(&format!(
            "BEGIN; SELECT v FROM race_lock WHERE k = {locked} FOR UPDATE"
        ))
        .await
        .unwrap();
    let mut binder = client(&proxy).await;
    let tx = binder.transaction().await.unwrap();
    let portal = tx
        .bind("UPDATE race_lock SET v = v + 10 WHERE k = $1", &[&bound])
        .await
        .unwrap();
    let moving = start_move(&proxy, vshard, "b1").await;
    reader
        .simple_query(&format!(
            "UPDATE race_lock SET v = v + 1 WHERE k = {locked}; COMMIT"
        ))
        .await
        .unwrap();
    tx.query_portal(&portal, 0).await.unwrap();
    tx.commit().await.unwrap();
    let (status, body) = moving.await.unwrap();
    assert_eq!(status, 200, "{body}");
    let c = client(&proxy).await;
    assert_eq!(
        value(&c, "race_lock", locked).await,
        (locked + 1).to_string()
    );
    assert_eq!(
        value(&c, "race_lock", bound).await,
        (bound + 10).to_string()
    );
    assert_eq!(
        through_proxy(&c, "SELECT count(*) FROM race_lock").await,
        ROWS.to_string()
    );
    let b0 = common::backend_client(demo(2, 4), 0).await;
    let left = format!("SELECT count(*) FROM race_lock WHERE k IN ({locked}, {bound})");
    assert_eq!(
        through_proxy(&b0, &left).await,
        "0",
        "rows left on the source"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn columns_ordered_differently_on_the_target_move_by_name() {
    let proxy = proxy("race-cols", "race_cols", "pool_size = 4");
    for (b, columns) in [(0, "x int, y int"), (1, "y int, x int")] {
        let direct = common::backend_client(demo(2, 4), b).await;
        direct
            .simple_query(&format!(
                "CREATE TABLE race_cols (k int PRIMARY KEY, {columns})"
            ))
            .await
            .unwrap();
    }
    let vshard = 13;
    let keys = keys_in(vshard, 5);
    let c = client(&proxy).await;
    for k in &keys {
        c.simple_query(&format!(
            "INSERT INTO race_cols (k, x, y) VALUES ({k}, {k}, {})",
            2 * k
        ))
        .await
        .unwrap();
    }
    // The whole move, awaited: this test checks the copy by column name, not writes
    // during the move.
    let request = format!("{{\"vshard\": {vshard}, \"to\": \"b1\"}}");
    let http = proxy.http.unwrap();
    let (status, body) = common::http_call(http, "POST", "/api/move", &request).await;
    assert_eq!(status, 200, "{body}");
    for k in &keys {
        let row = through_proxy(
            &c,
            &format!("SELECT x || ' ' || y FROM race_cols WHERE k = {k}"),
        )
        .await;
        assert_eq!(row, format!("{k} {}", 2 * k));
    }
}

/// A rebalance stopped midway ends after the move under way; what it moved is moved,
/// the rest stays, and every row is where the map says.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rebalance_stops_between_moves() {
    let mut doc: toml::Table = toml::from_str(&map(&["race_rebalance"])).unwrap();
    let mut assign = toml::Table::new();
    assign.insert("0-599".into(), "b0".into());
    assign.insert("600-999".into(), "b1".into());
    doc.insert("assign".into(), toml::Value::Table(assign));
    let config = format!("http_listen = \"127.0.0.1:0\"\npool_size = 4\n{USERS}");
    let proxy =
        common::start_proxy_with_map("race-rebalance", &toml::to_string(&doc).unwrap(), &config);
    let c = client(&proxy).await;
    fill(&c, "race_rebalance", ROWS).await;
    let http = proxy.http.unwrap();
    let (status, plan) = common::http_call(http, "POST", "/api/rebalance", "{}").await;
    assert_eq!(status, 200, "{plan}");
    let plan: Value = serde_json::from_str(&plan).unwrap();
    assert_eq!(plan["planned"], 100, "{plan}");
    let two_done = wait_until(Duration::from_secs(60), || async {
        let body = common::http_get(http, "/api/rebalance").await;
        serde_json::from_str::<Value>(&body).unwrap()["done"].as_u64() >= Some(2)
    })
    .await;
    assert!(two_done);
    common::http_call(http, "POST", "/api/rebalance/stop", "").await;
    let ended = wait_until(Duration::from_secs(60), || async {
        let body = common::http_get(http, "/api/rebalance").await;
        serde_json::from_str::<Value>(&body).unwrap()["running"] == false
    })
    .await;
    assert!(ended, "the rebalance did not stop");
    let body = common::http_get(http, "/api/rebalance").await;
    let progress: Value = serde_json::from_str(&body).unwrap();
    assert_eq!(progress["stopped"], true, "{progress}");
    assert_eq!(progress["failed"], 0, "{progress}");
    let done = progress["done"].as_u64().unwrap();
    assert!((2..100).contains(&done), "{progress}");
    let body = common::http_get(http, "/api/map").await;
    let map: Value = serde_json::from_str(&body).unwrap();
    assert_eq!(map["backends"][1]["vshards"], 400 + done, "{map}");
    assert_eq!(
        through_proxy(&c, "SELECT count(*) FROM race_rebalance").await,
        ROWS.to_string()
    );
    let mut total = 0;
    for b in 0..2 {
        let direct = common::backend_client(demo(2, 4), b).await;
        let n = through_proxy(&direct, "SELECT count(*) FROM race_rebalance").await;
        total += n.parse::<i32>().unwrap();
    }
    assert_eq!(total, ROWS, "a row on two backends, or none");
}
