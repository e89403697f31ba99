//! Routing by key through the proxy over four backends: rows land on the backend
//! their key's vshard maps to, reads and transactions follow their key, DDL and
//! keyless writes reach every backend atomically, and what cannot run across
//! backends yet is refused with a clear error (never a partial answer).

mod common;

use common::{demo, Demo};
use pgshard::router::decide::owner;
use pgshard::router::hash::Key;
use pgshard::router::ShardMap;
use tokio_postgres::{Client, SimpleQueryMessage};

const BACKENDS: usize = 4;
const ROWS: i32 = 200;

fn cluster() -> &'static Demo {
    demo(BACKENDS, 4)
}

/// The tests share pgbench_accounts; they take turns.
static SERIAL: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

fn map() -> ShardMap {
    ShardMap::load(&cluster().dir.join("shardmap.toml")).expect("demo shard map")
}

fn backend_of(map: &ShardMap, aid: i32) -> usize {
    owner(map, &Key::Int(aid.into()))
}

fn code(err: &tokio_postgres::Error) -> Option<&str> {
    err.code().map(|c| c.code())
}

/// pgbench_accounts created through the proxy (on every backend), with `ROWS` rows
/// inserted through the proxy one by one.
async fn accounts(proxy: &Client) {
    proxy
        .batch_execute("DROP TABLE IF EXISTS pgbench_accounts")
        .await
        .unwrap();
    proxy
        .batch_execute(
            "CREATE TABLE pgbench_accounts (aid int PRIMARY KEY, bid int, abalance int, filler char(84))",
        )
        .await
        .unwrap();
    let insert = proxy
        .prepare("INSERT INTO pgbench_accounts (aid, bid, abalance) VALUES ($1, 1, 0)")
        .await
        .unwrap();
    for aid in 1..=ROWS {
        proxy.execute(&insert, &[&aid]).await.unwrap();
    }
}

async fn balance_direct(backend: usize, aid: i32) -> Option<i32> {
    let client = common::backend_client(cluster(), backend).await;
    client
        .query_opt(
            "SELECT abalance FROM pgbench_accounts WHERE aid = $1",
            &[&aid],
        )
        .await
        .unwrap()
        .map(|r| r.get(0))
}

/// Two aids whose rows live on different backends.
fn apart(map: &ShardMap) -> (i32, i32) {
    let a = 1;
    let b = (2..=ROWS)
        .find(|&aid| backend_of(map, aid) != backend_of(map, a))
        .expect("keys on two backends");
    (a, b)
}

#[tokio::test]
async fn rows_live_where_their_key_s_vshard_maps() {
    let _turn = SERIAL.lock().await;
    let map = map();
    let proxy = common::proxy_client(cluster()).await;
    accounts(&proxy).await;
    let mut total = 0;
    for backend in 0..BACKENDS {
        let client = common::backend_client(cluster(), backend).await;
        let rows = client
            .query("SELECT aid FROM pgbench_accounts", &[])
            .await
            .unwrap();
        for row in &rows {
            let aid: i32 = row.get(0);
            assert_eq!(
                backend_of(&map, aid),
                backend,
                "aid {aid} on the wrong backend"
            );
        }
        let expected = (1..=ROWS)
            .filter(|&aid| backend_of(&map, aid) == backend)
            .count();
        assert_eq!(rows.len(), expected, "backend {backend}");
        total += rows.len();
    }
    assert_eq!(total, ROWS as usize);
    // Reads find every row through the proxy, simple and extended.
    let select = proxy
        .prepare("SELECT aid FROM pgbench_accounts WHERE aid = $1")
        .await
        .unwrap();
    for aid in 1..=ROWS {
        let row = proxy.query_one(&select, &[&aid]).await.unwrap();
        assert_eq!(row.get::<_, i32>(0), aid);
        let simple = proxy
            .simple_query(&format!(
                "SELECT aid FROM pgbench_accounts WHERE aid = {aid}"
            ))
            .await
            .unwrap();
        let found = simple
            .iter()
            .filter(|m| matches!(m, SimpleQueryMessage::Row(_)))
            .count();
        assert_eq!(found, 1, "aid {aid}");
    }
}

#[tokio::test]
async fn a_transaction_runs_on_its_key_s_backend() {
    let _turn = SERIAL.lock().await;
    let map = map();
    let mut proxy = common::proxy_client(cluster()).await;
    accounts(&proxy).await;
    let aid = 7;
    let tx = proxy.transaction().await.unwrap();
    tx.execute(
        "UPDATE pgbench_accounts SET abalance = abalance + 5 WHERE aid = $1",
        &[&aid],
    )
    .await
    .unwrap();
    let row = tx
        .query_one(
            "SELECT abalance FROM pgbench_accounts WHERE aid = $1",
            &[&aid],
        )
        .await
        .unwrap();
    assert_eq!(row.get::<_, i32>(0), 5);
    tx.commit().await.unwrap();
    assert_eq!(balance_direct(backend_of(&map, aid), aid).await, Some(5));

    // Simple protocol, rolled back.
    proxy
        .batch_execute(&format!(
            "BEGIN; UPDATE pgbench_accounts SET abalance = 100 WHERE aid = {aid}"
        ))
        .await
        .unwrap();
    proxy.batch_execute("ROLLBACK").await.unwrap();
    assert_eq!(balance_direct(backend_of(&map, aid), aid).await, Some(5));
    // A transaction in which nothing ran.
    proxy.batch_execute("BEGIN").await.unwrap();
    proxy.batch_execute("COMMIT").await.unwrap();
}

/// Prepared transactions left on any backend.
async fn prepared_left() -> i64 {
    let mut left = 0;
    for backend in 0..BACKENDS {
        let client = common::backend_client(cluster(), backend).await;
        let row = client
            .query_one("SELECT count(*) FROM pg_prepared_xacts", &[])
            .await
            .unwrap();
        left += row.get::<_, i64>(0);
    }
    left
}

#[tokio::test]
async fn a_transaction_across_backends_commits_or_rolls_back_everywhere() {
    let _turn = SERIAL.lock().await;
    let map = map();
    let mut proxy = common::proxy_client(cluster()).await;
    accounts(&proxy).await;
    let (a, b) = apart(&map);
    let update = |aid: i32, to: i32| {
        format!("UPDATE pgbench_accounts SET abalance = {to} WHERE aid = {aid}")
    };

    // Simple queries: COMMIT commits on both backends.
    proxy.batch_execute("BEGIN").await.unwrap();
    proxy.batch_execute(&update(a, 1)).await.unwrap();
    proxy.batch_execute(&update(b, 1)).await.unwrap();
    // Back on the first backend, then a keyless read over all of them.
    proxy.batch_execute(&update(a, 2)).await.unwrap();
    let rows = proxy
        .simple_query("SELECT count(*) FROM pgbench_accounts WHERE abalance > 0")
        .await
        .unwrap();
    let counted = rows.iter().find_map(|m| match m {
        SimpleQueryMessage::Row(r) => r.get(0).map(str::to_owned),
        _ => None,
    });
    assert_eq!(
        counted.as_deref(),
        Some("2"),
        "the transaction sees its own writes"
    );
    proxy.batch_execute("COMMIT").await.unwrap();
    assert_eq!(balance_direct(backend_of(&map, a), a).await, Some(2));
    assert_eq!(balance_direct(backend_of(&map, b), b).await, Some(1));

    // ROLLBACK rolls back on both.
    proxy.batch_execute("BEGIN").await.unwrap();
    proxy.batch_execute(&update(a, 3)).await.unwrap();
    proxy.batch_execute(&update(b, 3)).await.unwrap();
    proxy.batch_execute("ROLLBACK").await.unwrap();
    assert_eq!(balance_direct(backend_of(&map, a), a).await, Some(2));
    assert_eq!(balance_direct(backend_of(&map, b), b).await, Some(1));

    // An error on one backend fails the whole transaction; COMMIT rolls back.
    proxy.batch_execute("BEGIN").await.unwrap();
    proxy.batch_execute(&update(a, 4)).await.unwrap();
    proxy.batch_execute(&update(b, 4)).await.unwrap();
    let err = proxy.batch_execute("SELECT 1/0").await.unwrap_err();
    assert_eq!(code(&err), Some("22012"), "{err}");
    let err = proxy.batch_execute(&update(a, 5)).await.unwrap_err();
    assert_eq!(code(&err), Some("25P02"), "{err}");
    let replies = proxy.simple_query("COMMIT").await.unwrap();
    let tag = replies.iter().find_map(|m| match m {
        SimpleQueryMessage::CommandComplete(_) => Some(()),
        _ => None,
    });
    assert!(tag.is_some(), "{replies:?}");
    assert_eq!(balance_direct(backend_of(&map, a), a).await, Some(2));
    assert_eq!(balance_direct(backend_of(&map, b), b).await, Some(1));

    // The extended protocol (tokio-postgres prepares, then binds), committed.
    let tx = proxy.transaction().await.unwrap();
    let set = tx
        .prepare("UPDATE pgbench_accounts SET abalance = $2 WHERE aid = $1")
        .await
        .unwrap();
    assert_eq!(tx.execute(&set, &[&a, &6i32]).await.unwrap(), 1);
    assert_eq!(tx.execute(&set, &[&b, &6i32]).await.unwrap(), 1);
    let row = tx
        .query_one(
            "SELECT abalance FROM pgbench_accounts WHERE aid = $1",
            &[&a],
        )
        .await
        .unwrap();
    assert_eq!(row.get::<_, i32>(0), 6);
    tx.commit().await.unwrap();
    assert_eq!(balance_direct(backend_of(&map, a), a).await, Some(6));
    assert_eq!(balance_direct(backend_of(&map, b), b).await, Some(6));

    // What holds on one backend only is refused once the transaction spans two,
    // and the transaction fails.
    proxy.batch_execute("BEGIN").await.unwrap();
    proxy.batch_execute(&update(a, 7)).await.unwrap();
    proxy.batch_execute(&update(b, 7)).await.unwrap();
    let err = proxy.batch_execute("SAVEPOINT s").await.unwrap_err();
    assert_eq!(code(&err), Some("0A000"), "{err}");
    proxy.batch_execute("ROLLBACK").await.unwrap();
    proxy.batch_execute("BEGIN").await.unwrap();
    proxy.batch_execute(&update(a, 7)).await.unwrap();
    proxy.batch_execute(&update(b, 7)).await.unwrap();
    let err = proxy
        .batch_execute(&format!("{}; COMMIT", update(a, 8)))
        .await
        .unwrap_err();
    assert_eq!(code(&err), Some("0A000"), "{err}");
    proxy.batch_execute("COMMIT").await.unwrap();
    assert_eq!(balance_direct(backend_of(&map, a), a).await, Some(6));
    assert_eq!(balance_direct(backend_of(&map, b), b).await, Some(6));
    // The same for the statement that would make it span: COMMIT in its query
    // string would end the transaction on one backend only.
    proxy.batch_execute("BEGIN").await.unwrap();
    proxy.batch_execute(&update(a, 7)).await.unwrap();
    let err = proxy
        .batch_execute(&format!("{}; COMMIT", update(b, 7)))
        .await
        .unwrap_err();
    assert_eq!(code(&err), Some("0A000"), "{err}");
    proxy.batch_execute("COMMIT").await.unwrap();
    // A savepoint, or SET LOCAL, keeps a transaction on its backend.
    for pin in [
        "SAVEPOINT s",
        "SET LOCAL work_mem = '8MB'",
        "SET TRANSACTION READ ONLY",
    ] {
        proxy.batch_execute("BEGIN").await.unwrap();
        proxy.batch_execute(&update(a, 7)).await.unwrap();
        proxy.batch_execute(pin).await.unwrap();
        let err = proxy.batch_execute(&update(b, 7)).await.unwrap_err();
        assert_eq!(code(&err), Some("0A000"), "{pin}: {err}");
        proxy.batch_execute("ROLLBACK").await.unwrap();
    }
    assert_eq!(balance_direct(backend_of(&map, a), a).await, Some(6));
    assert_eq!(balance_direct(backend_of(&map, b), b).await, Some(6));
    assert_eq!(prepared_left().await, 0);
}

#[tokio::test]
async fn keyless_writes_and_ddl_reach_every_backend() {
    let _turn = SERIAL.lock().await;
    let proxy = common::proxy_client(cluster()).await;
    accounts(&proxy).await;
    let updated = proxy
        .execute("UPDATE pgbench_accounts SET abalance = 3", &[])
        .await
        .unwrap();
    assert_eq!(updated, ROWS as u64, "row counts summed over the backends");
    for backend in 0..BACKENDS {
        let client = common::backend_client(cluster(), backend).await;
        let row = client
            .query_one(
                "SELECT count(*) FILTER (WHERE abalance <> 3) FROM pgbench_accounts",
                &[],
            )
            .await
            .unwrap();
        assert_eq!(row.get::<_, i64>(0), 0, "backend {backend}");
    }
    // A failing statement changes nothing anywhere.
    let err = proxy
        .execute(
            "UPDATE pgbench_accounts SET abalance = 10 / (abalance - 3)",
            &[],
        )
        .await
        .unwrap_err();
    assert_eq!(code(&err), Some("22012"), "{err}");
    for backend in 0..BACKENDS {
        let client = common::backend_client(cluster(), backend).await;
        let row = client
            .query_one("SELECT count(*) FROM pg_prepared_xacts", &[])
            .await
            .unwrap();
        assert_eq!(row.get::<_, i64>(0), 0);
        let row = client
            .query_one("SELECT sum(abalance)::int FROM pgbench_accounts", &[])
            .await
            .unwrap();
        let rows = client
            .query_one("SELECT count(*)::int FROM pgbench_accounts", &[])
            .await
            .unwrap();
        assert_eq!(
            row.get::<_, Option<i32>>(0).unwrap_or(0),
            3 * rows.get::<_, i32>(0)
        );
    }
    proxy
        .batch_execute("VACUUM pgbench_accounts")
        .await
        .unwrap();
}

#[tokio::test]
async fn statements_that_need_merging_are_refused_clearly() {
    let _turn = SERIAL.lock().await;
    let proxy = common::proxy_client(cluster()).await;
    accounts(&proxy).await;
    for sql in [
        "SELECT stddev(abalance) FROM pgbench_accounts",
        "SELECT bid, count(*) FROM pgbench_accounts GROUP BY bid HAVING count(*) > 1",
        // An interval is neither compared by the proxy nor ranked by a backend.
        "SELECT aid * interval '1 day' AS d FROM pgbench_accounts ORDER BY d LIMIT 3",
        "SELECT * FROM pgbench_accounts a JOIN pgbench_accounts b ON a.bid = b.aid",
        "SELECT bid, count(*) FROM pgbench_accounts WHERE aid IN (1, 2, 3, 4, 5, 6, 7, 8) \
         GROUP BY bid HAVING count(*) > 1",
    ] {
        let err = proxy.simple_query(sql).await.unwrap_err();
        assert_eq!(code(&err), Some("0A000"), "{sql}: {err}");
    }
    // Catalog queries and unsharded tables go to the default backend.
    let row = proxy
        .query_one(
            "SELECT count(*) FROM pg_class WHERE relname = 'pgbench_accounts'",
            &[],
        )
        .await
        .unwrap();
    assert_eq!(row.get::<_, i64>(0), 1);
}

/// pgbench's read-only script over the rows inserted above, with keys spread over
/// all four backends, in each protocol: no failures (a misrouted read would still
/// succeed, so the values are checked by the test above; this one is about
/// concurrency through shared connections and prepared statements).
#[tokio::test]
async fn pgbench_reads_by_key_in_every_protocol() {
    let _turn = SERIAL.lock().await;
    let proxy = common::proxy_client(cluster()).await;
    accounts(&proxy).await;
    let script = cluster().dir.join("routing-select.sql");
    std::fs::write(
        &script,
        format!(
            "\\set aid random(1, {ROWS})\n\
             SELECT abalance FROM pgbench_accounts WHERE aid = :aid;\n\
             UPDATE pgbench_accounts SET abalance = abalance + 1 WHERE aid = :aid;\n"
        ),
    )
    .unwrap();
    let script = script.display().to_string();
    for mode in ["simple", "extended", "prepared"] {
        let args = [
            "-n",
            "-c",
            "8",
            "-j",
            "2",
            "-t",
            "100",
            "-M",
            mode,
            "-f",
            &script,
            common::DATABASE,
        ];
        let out = common::pg_tool("pgbench", cluster().proxy, &args);
        let stdout = String::from_utf8_lossy(&out.stdout);
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(out.status.success(), "{mode}:\n{stdout}\n{stderr}");
        assert!(
            stdout.contains("number of failed transactions: 0 (0.000%)"),
            "{mode}:\n{stdout}"
        );
    }
    // Every update landed on its row's backend: 3 x 800 increments in all.
    let mut total = 0i64;
    for backend in 0..BACKENDS {
        let client = common::backend_client(cluster(), backend).await;
        let row = client
            .query_one(
                "SELECT coalesce(sum(abalance), 0)::int8 FROM pgbench_accounts",
                &[],
            )
            .await
            .unwrap();
        total += row.get::<_, i64>(0);
    }
    assert_eq!(total, 3 * 800);
}

const TRUST_APP: &str = "[[users]]\nname = \"app\"\nauth = \"trust\"\n";

/// The tags of the replies, and the first ErrorResponse's SQLSTATE.
fn tags(replies: &[(u8, Vec<u8>)]) -> String {
    replies.iter().map(|(t, _)| *t as char).collect()
}

fn ready_status(replies: &[(u8, Vec<u8>)]) -> Option<u8> {
    replies
        .last()
        .filter(|(t, _)| *t == b'Z')
        .map(|(_, p)| p[0])
}

fn insert_sql(aid: i32) -> String {
    format!("INSERT INTO pgbench_accounts (aid, bid, abalance) VALUES ({aid}, 1, 0)")
}

/// Raw-protocol traffic drivers produce: each write must land on its key's backend.
#[tokio::test]
async fn driver_message_patterns_route_every_statement() {
    use common::raw;
    let _turn = SERIAL.lock().await;
    let map = map();
    let proxy = common::proxy_client(cluster()).await;
    accounts(&proxy).await;
    let app = common::start_proxy(cluster(), "routing-raw", TRUST_APP);
    let fresh: Vec<i32> = (10_001..10_100).collect();
    let (a, b) = (
        fresh[0],
        fresh[1..]
            .iter()
            .copied()
            .find(|&k| backend_of(&map, k) != backend_of(&map, fresh[0]))
            .unwrap(),
    );

    // A named Parse in the same batch as its first Bind (JDBC's first execution).
    let mut client = common::RawClient::login(app.addr, "app").await;
    let insert = "INSERT INTO pgbench_accounts (aid, bid, abalance) VALUES ($1, 1, 0)";
    let a_text = a.to_string();
    client
        .send(&raw::batch(&[
            raw::parse("ins", insert),
            raw::bind_text("ins", &[&a_text]),
            raw::execute(),
            raw::sync(),
        ]))
        .await;
    let replies = client.until_ready().await;
    assert_eq!(tags(&replies), "12CZ", "{replies:?}");
    assert_eq!(balance_direct(backend_of(&map, a), a).await, Some(0));

    // Two simple Queries for different backends in one write.
    let (c, d) = (a + 200, b + 200);
    client
        .send(&raw::batch(&[
            raw::query(&insert_sql(c)),
            raw::query(&insert_sql(d)),
        ]))
        .await;
    assert_eq!(tags(&client.until_ready().await), "CZ");
    assert_eq!(tags(&client.until_ready().await), "CZ");
    for k in [c, d] {
        assert_eq!(
            balance_direct(backend_of(&map, k), k).await,
            Some(0),
            "aid {k}"
        );
    }

    // Two extended batches for different backends in one write.
    let b_text = b.to_string();
    client
        .send(&raw::batch(&[
            raw::bind_text("ins", &[&b_text]),
            raw::execute(),
            raw::sync(),
            raw::parse("", insert),
            raw::bind_text("", &[&(b + 400).to_string()]),
            raw::execute(),
            raw::sync(),
        ]))
        .await;
    assert_eq!(tags(&client.until_ready().await), "2CZ");
    let replies = client.until_ready().await;
    assert_eq!(tags(&replies), "12CZ", "{replies:?}");
    for k in [b, b + 400] {
        assert_eq!(
            balance_direct(backend_of(&map, k), k).await,
            Some(0),
            "aid {k}"
        );
    }

    // A keyless write as an extended batch runs everywhere; the session carries on.
    client
        .send(&raw::batch(&[
            raw::parse(
                "",
                "UPDATE pgbench_accounts SET abalance = 2 WHERE abalance = 0",
            ),
            raw::bind(""),
            raw::execute(),
            raw::sync(),
        ]))
        .await;
    assert_eq!(tags(&client.until_ready().await), "12CZ");
    client.send(&raw::query("SELECT 1")).await;
    client.until_ready().await;
    client.send(&raw::query(&insert_sql(a + 600))).await;
    client.until_ready().await;
    assert_eq!(
        balance_direct(backend_of(&map, a + 600), a + 600).await,
        Some(0)
    );
}

#[tokio::test]
async fn refusals_keep_client_and_server_in_step() {
    use common::raw;
    let _turn = SERIAL.lock().await;
    let map = map();
    let proxy = common::proxy_client(cluster()).await;
    accounts(&proxy).await;
    let app = common::start_proxy(cluster(), "routing-refusals", TRUST_APP);
    let (a, b) = apart(&map);
    let mut client = common::RawClient::login(app.addr, "app").await;

    // In a transaction, a refused Bind after an earlier error in its batch: the
    // batch still ends, in a failed transaction.
    client.send(&raw::query("BEGIN")).await;
    client.until_ready().await;
    client
        .send(&raw::query(&format!(
            "UPDATE pgbench_accounts SET abalance = 1 WHERE aid = {a}"
        )))
        .await;
    client.until_ready().await;
    let update = "UPDATE pgbench_accounts SET abalance = 1 WHERE aid = $1";
    client
        .send(&raw::batch(&[
            raw::parse("", "SELECT 1/0"),
            raw::bind(""),
            raw::execute(),
            raw::parse("", update),
            raw::bind_text("", &[&b.to_string()]),
            raw::execute(),
            raw::sync(),
        ]))
        .await;
    let replies = client.until_ready().await;
    assert_eq!(ready_status(&replies), Some(b'E'), "{replies:?}");
    client.send(&raw::query("ROLLBACK")).await;
    assert_eq!(ready_status(&client.until_ready().await), Some(b'I'));
    assert_eq!(balance_direct(backend_of(&map, a), a).await, Some(0));

    // A refused statement right after BEGIN: the client sees a failed transaction.
    client.send(&raw::query("BEGIN")).await;
    client.until_ready().await;
    client
        .send(&raw::batch(&[
            raw::parse("", "SELECT stddev(abalance) FROM pgbench_accounts"),
            raw::bind(""),
            raw::execute(),
            raw::sync(),
        ]))
        .await;
    let replies = client.until_ready().await;
    assert!(tags(&replies).contains('E'), "{replies:?}");
    assert_eq!(ready_status(&replies), Some(b'E'));
    client.send(&raw::query("ROLLBACK")).await;
    assert_eq!(ready_status(&client.until_ready().await), Some(b'I'));

    // A table the map does not list lives on the default backend: a transaction
    // elsewhere takes it in, and commits both.
    proxy
        .batch_execute("DROP TABLE IF EXISTS routing_audit; CREATE TABLE routing_audit (x int)")
        .await
        .unwrap();
    let away = (1..=ROWS)
        .find(|&k| backend_of(&map, k) != map.default_backend)
        .unwrap();
    client.send(&raw::query("BEGIN")).await;
    client.until_ready().await;
    client
        .send(&raw::query(&format!(
            "UPDATE pgbench_accounts SET abalance = 9 WHERE aid = {away}"
        )))
        .await;
    client.until_ready().await;
    client
        .send(&raw::query("INSERT INTO routing_audit VALUES (1)"))
        .await;
    let replies = client.until_ready().await;
    assert_eq!(ready_status(&replies), Some(b'T'), "{replies:?}");
    client.send(&raw::query("COMMIT")).await;
    assert_eq!(tags(&client.until_ready().await), "CZ");
    assert_eq!(balance_direct(backend_of(&map, away), away).await, Some(9));
    let row = proxy
        .query_one("SELECT count(*) FROM routing_audit", &[])
        .await
        .unwrap();
    assert_eq!(row.get::<_, i64>(0), 1);

    // An extended BEGIN and COMMIT (pgbench -M extended), spanning two backends.
    let (a_text, b_text) = (a.to_string(), b.to_string());
    let set = "UPDATE pgbench_accounts SET abalance = 10 WHERE aid = $1";
    let statement = |sql: &str, params: &[&str]| {
        raw::batch(&[
            raw::parse("", sql),
            raw::bind_text("", params),
            raw::describe_portal(),
            raw::execute(),
            raw::sync(),
        ])
    };
    client.send(&statement("BEGIN", &[])).await;
    let replies = client.until_ready().await;
    assert_eq!(tags(&replies), "12nCZ", "{replies:?}");
    assert_eq!(ready_status(&replies), Some(b'T'));
    for key in [&a_text, &b_text] {
        client.send(&statement(set, &[key])).await;
        let replies = client.until_ready().await;
        assert_eq!(tags(&replies), "12nCZ", "{replies:?}");
    }
    client.send(&statement("END", &[])).await;
    let replies = client.until_ready().await;
    assert_eq!(tags(&replies), "12nCZ", "{replies:?}");
    assert_eq!(ready_status(&replies), Some(b'I'));
    assert_eq!(balance_direct(backend_of(&map, a), a).await, Some(10));
    assert_eq!(balance_direct(backend_of(&map, b), b).await, Some(10));
}

#[tokio::test]
async fn fanout_returns_every_row_and_needs_one_connection_per_pool() {
    let _turn = SERIAL.lock().await;
    let proxy = common::proxy_client(cluster()).await;
    accounts(&proxy).await;
    let rows = proxy
        .query(
            "UPDATE pgbench_accounts SET abalance = 4 RETURNING aid",
            &[],
        )
        .await
        .unwrap();
    assert_eq!(rows.len(), ROWS as usize);
    // One server connection per backend: DDL and keyless writes still commit.
    let one = common::start_proxy(
        cluster(),
        "routing-pool-one",
        &format!("pool_size = 1\ncheckout_timeout_ms = 3000\n{TRUST_APP}"),
    );
    let client = common::connect(one.addr, "app", "", common::DATABASE)
        .await
        .unwrap();
    let updated = client
        .execute("UPDATE pgbench_accounts SET abalance = 5", &[])
        .await
        .unwrap();
    assert_eq!(updated, ROWS as u64);
}

#[tokio::test]
async fn set_pgshard_key_routes_the_session_and_unrouted_statements_are_counted() {
    let _turn = SERIAL.lock().await;
    let map = map();
    let proxy = common::proxy_client(cluster()).await;
    accounts(&proxy).await;
    let count = "SELECT count(*)::int FROM pgbench_accounts";
    // Without a key this is a scatter read, refused for now (and counted).
    let err = proxy.query_one(count, &[]).await.unwrap_err();
    assert_eq!(code(&err), Some("0A000"));
    let metrics = common::http_get(cluster().http, "/metrics").await;
    assert!(
        metrics.contains("pgshard_unrouted_statements_total{kind=\"several_backends\"}"),
        "{metrics}"
    );
    // With the session's key, it runs on that key's backend and counts its rows.
    let key = 7;
    proxy
        .batch_execute(&format!("SET pgshard.key = {key}"))
        .await
        .unwrap();
    let here: i32 = proxy.query_one(count, &[]).await.unwrap().get(0);
    let backend = backend_of(&map, key);
    let direct = common::backend_client(cluster(), backend).await;
    let want: i32 = direct.query_one(count, &[]).await.unwrap().get(0);
    assert_eq!(here, want);
    assert!(here < ROWS, "the count came from one backend only");
    proxy.batch_execute("RESET pgshard.key").await.unwrap();
    assert!(proxy.query_one(count, &[]).await.is_err());
}

#[tokio::test]
async fn multi_row_inserts_split_and_keyed_writes_span_backends_atomically() {
    let _turn = SERIAL.lock().await;
    let map = map();
    let proxy = common::proxy_client(cluster()).await;
    accounts(&proxy).await;
    let aids: Vec<i32> = (1001..=1040).collect();
    let rows: Vec<String> = aids
        .iter()
        .map(|a| format!("({a}, 1, 0, 'it''s')"))
        .collect();
    let sql = format!(
        "INSERT INTO pgbench_accounts (aid, bid, abalance, filler) VALUES {}",
        rows.join(", ")
    );
    // A simple Query (the values written out); row counts summed over the backends.
    let replies = proxy.simple_query(&sql).await.unwrap();
    let inserted = replies.iter().find_map(|m| match m {
        SimpleQueryMessage::CommandComplete(n) => Some(*n),
        _ => None,
    });
    assert_eq!(inserted, Some(aids.len() as u64));
    for &aid in &aids {
        assert_eq!(
            balance_direct(backend_of(&map, aid), aid).await,
            Some(0),
            "aid {aid}"
        );
    }
    // A duplicate in one backend's share fails the whole statement everywhere.
    let again = format!(
        "INSERT INTO pgbench_accounts (aid, bid, abalance) VALUES (2001, 1, 0), (2002, 1, 0), \
         (2003, 1, 0), (2004, 1, 0), ({}, 1, 0)",
        aids[0]
    );
    let err = proxy.batch_execute(&again).await.unwrap_err();
    assert_eq!(code(&err), Some("23505"), "{err}");
    for aid in 2001..=2004 {
        assert_eq!(
            balance_direct(backend_of(&map, aid), aid).await,
            None,
            "aid {aid}"
        );
    }
    // A keyed write whose keys live on several backends.
    let replies = proxy
        .simple_query(
            "DELETE FROM pgbench_accounts WHERE aid IN (1001, 1002, 1003, 1004, 1005, 1006)",
        )
        .await
        .unwrap();
    let deleted = replies.iter().find_map(|m| match m {
        SimpleQueryMessage::CommandComplete(n) => Some(*n),
        _ => None,
    });
    assert_eq!(deleted, Some(6));
    for aid in 1001..=1006 {
        assert_eq!(
            balance_direct(backend_of(&map, aid), aid).await,
            None,
            "aid {aid}"
        );
    }
}

#[tokio::test]
async fn keyless_reads_gather_rows_and_counts() {
    let _turn = SERIAL.lock().await;
    let proxy = common::proxy_client(cluster()).await;
    accounts(&proxy).await;
    let rows_of = |replies: &[SimpleQueryMessage]| -> Vec<String> {
        replies
            .iter()
            .filter_map(|m| match m {
                SimpleQueryMessage::Row(r) => r.get(0).map(str::to_owned),
                _ => None,
            })
            .collect()
    };
    let counted = proxy
        .simple_query("SELECT count(*), count(bid) FROM pgbench_accounts WHERE aid > 10")
        .await
        .unwrap();
    assert_eq!(rows_of(&counted), vec![(ROWS - 10).to_string()]);
    let all = proxy
        .simple_query("SELECT aid FROM pgbench_accounts WHERE abalance = 0")
        .await
        .unwrap();
    let mut aids: Vec<i32> = rows_of(&all).iter().map(|a| a.parse().unwrap()).collect();
    aids.sort_unstable();
    assert_eq!(aids, (1..=ROWS).collect::<Vec<_>>());
    let tag = all.iter().find_map(|m| match m {
        SimpleQueryMessage::CommandComplete(n) => Some(*n),
        _ => None,
    });
    assert_eq!(tag, Some(ROWS as u64), "row counts summed");

    // Aggregates, groups, order and limits over every backend, as one database
    // would answer them.
    proxy
        .batch_execute("UPDATE pgbench_accounts SET abalance = aid % 7 - 2, bid = aid % 3")
        .await
        .unwrap();
    let table = |sql: &str| {
        let proxy = &proxy;
        let sql = sql.to_owned();
        async move {
            let replies = proxy.simple_query(&sql).await.unwrap();
            replies
                .iter()
                .filter_map(|m| match m {
                    SimpleQueryMessage::Row(r) => Some(
                        (0..r.len())
                            .map(|i| r.get(i).unwrap_or("NULL").to_owned())
                            .collect::<Vec<_>>()
                            .join(","),
                    ),
                    _ => None,
                })
                .collect::<Vec<String>>()
        }
    };
    let balance = |aid: i32| aid % 7 - 2;
    let sum: i32 = (1..=ROWS).map(balance).sum();
    assert_eq!(
        table("SELECT sum(abalance), min(abalance), max(aid), count(*) FROM pgbench_accounts")
            .await,
        vec![format!("{sum},-2,{ROWS},{ROWS}")]
    );
    let groups: Vec<String> = (0..3)
        .map(|bid| {
            let aids: Vec<i32> = (1..=ROWS).filter(|a| a % 3 == bid).collect();
            let s: i32 = aids.iter().map(|&a| balance(a)).sum();
            format!("{bid},{},{s}", aids.len())
        })
        .rev()
        .collect();
    assert_eq!(
        table("SELECT bid, count(*), sum(abalance) AS s FROM pgbench_accounts GROUP BY bid ORDER BY bid DESC").await,
        groups
    );
    let mut ordered: Vec<(i32, i32)> = (1..=ROWS).map(|a| (balance(a), a)).collect();
    ordered.sort_by(|x, y| y.0.cmp(&x.0).then(x.1.cmp(&y.1)));
    let page: Vec<String> = ordered[3..8]
        .iter()
        .map(|(b, a)| format!("{a},{b}"))
        .collect();
    assert_eq!(
        table(
            "SELECT aid, abalance FROM pgbench_accounts ORDER BY abalance DESC, 1 LIMIT 5 OFFSET 3"
        )
        .await,
        page
    );
    assert_eq!(
        table("SELECT DISTINCT abalance FROM pgbench_accounts ORDER BY 1").await,
        (-2..=4).map(|b| b.to_string()).collect::<Vec<_>>()
    );
    assert_eq!(
        table("SELECT aid FROM pgbench_accounts LIMIT 4")
            .await
            .len(),
        4
    );
}
