//! Writes on several backends in the extended protocol: UPDATE/DELETE whose keys
//! live on several backends, and multi-row INSERTs with parameters split by
//! backend, atomically in autocommit and inside transactions.

mod common;

use common::{demo, Demo};
use pgshard::router::decide::owner;
use pgshard::router::hash::Key;
use pgshard::router::ShardMap;
use tokio_postgres::Client;

const BACKENDS: usize = 4;
const ROWS: i32 = 60;

fn cluster() -> &'static Demo {
    demo(BACKENDS, 4)
}

fn code(err: &tokio_postgres::Error) -> Option<&str> {
    err.code().map(|c| c.code())
}

/// pgbench_history (sharded by aid in the demo's map) with rows 1..=ROWS.
async fn table(proxy: &Client) {
    proxy
        .batch_execute(
            "DROP TABLE IF EXISTS pgbench_history; \
             CREATE TABLE pgbench_history (aid int, qty int, name text)",
        )
        .await
        .unwrap();
    let rows: Vec<String> = (1..=ROWS)
        .map(|aid| format!("({aid}, {aid}, 'n')"))
        .collect();
    proxy
        .batch_execute(&format!(
            "INSERT INTO pgbench_history (aid, qty, name) VALUES {}",
            rows.join(", ")
        ))
        .await
        .unwrap();
}

#[tokio::test]
async fn keyed_writes_on_several_backends_in_the_extended_protocol() {
    let mut proxy = common::proxy_client(cluster()).await;
    table(&proxy).await;
    let reader = common::proxy_client(cluster()).await;
    let map = ShardMap::load(&cluster().dir.join("shardmap.toml")).expect("demo shard map");
    let backend = |aid: i32| owner(&map, &Key::Int(aid.into()));
    let a = 1;
    let b = (2..=ROWS).find(|&k| backend(k) != backend(a)).unwrap();
    let qty = |aid: i32| {
        let reader = &reader;
        async move {
            reader
                .query_one("SELECT qty FROM pgbench_history WHERE aid = $1", &[&aid])
                .await
                .unwrap()
                .get::<_, Option<i32>>(0)
        }
    };
    let (qa, qb) = (qty(a).await, qty(b).await);
    // Autocommit: both backends, atomically; a failure on one changes neither.
    let err = proxy
        .execute(
            "UPDATE pgbench_history SET qty = 10 / (aid - $2) WHERE aid IN ($1, $2)",
            &[&a, &b],
        )
        .await
        .unwrap_err();
    assert_eq!(code(&err), Some("22012"), "{err}");
    assert_eq!((qty(a).await, qty(b).await), (qa, qb));
    let updated = proxy
        .execute(
            "UPDATE pgbench_history SET qty = 40 WHERE aid IN ($1, $2)",
            &[&a, &b],
        )
        .await
        .unwrap();
    assert_eq!(updated, 2);
    assert_eq!((qty(a).await, qty(b).await), (Some(40), Some(40)));
    // In a transaction: on both backends of it, undone by ROLLBACK.
    let tx = proxy.transaction().await.unwrap();
    let updated = tx
        .execute(
            "UPDATE pgbench_history SET qty = 41 WHERE aid IN ($1, $2)",
            &[&a, &b],
        )
        .await
        .unwrap();
    assert_eq!(updated, 2);
    tx.rollback().await.unwrap();
    assert_eq!((qty(a).await, qty(b).await), (Some(40), Some(40)));

    // A multi-row INSERT with parameters, its rows on two backends: split, with
    // each part's parameters renumbered; atomically.
    let (c, d) = (
        ROWS + 1,
        (ROWS + 2..)
            .find(|&k| backend(k) != backend(ROWS + 1))
            .unwrap(),
    );
    let insert = "INSERT INTO pgbench_history (aid, qty, name) VALUES ($1, 10 / $2, $3), \
                  ($4, 10 / $5, $6)";
    let err = proxy
        .execute(insert, &[&c, &1i32, &"c", &d, &0i32, &"d"])
        .await
        .unwrap_err();
    assert_eq!(code(&err), Some("22012"), "{err}");
    let count = |aid: i32| {
        let reader = &reader;
        async move {
            reader
                .query_one(
                    "SELECT count(*) FROM pgbench_history WHERE aid = $1",
                    &[&aid],
                )
                .await
                .unwrap()
                .get::<_, i64>(0)
        }
    };
    assert_eq!((count(c).await, count(d).await), (0, 0));
    let inserted = proxy
        .execute(insert, &[&c, &1i32, &"c", &d, &2i32, &"d"])
        .await
        .unwrap();
    assert_eq!(inserted, 2);
    assert_eq!((qty(c).await, qty(d).await), (Some(10), Some(5)));
    // Each row is on its own key's backend.
    for (aid, name) in [(c, "c"), (d, "d")] {
        let direct = common::backend_client(cluster(), backend(aid)).await;
        let row = direct
            .query_one("SELECT name FROM pgbench_history WHERE aid = $1", &[&aid])
            .await
            .unwrap();
        assert_eq!(row.get::<_, String>(0), name);
    }
    // In a transaction, with RETURNING and a parameter both rows use, rolled back.
    let (c, d) = (
        c + 1000,
        (d + 1000..)
            .find(|&k| backend(k) != backend(c + 1000))
            .unwrap(),
    );
    let tx = proxy.transaction().await.unwrap();
    let rows = tx
        .query(
            "INSERT INTO pgbench_history (aid, name) VALUES ($1, $2), ($3, $2) RETURNING aid",
            &[&c, &"t", &d],
        )
        .await
        .unwrap();
    let mut returned: Vec<i32> = rows.iter().map(|r| r.get(0)).collect();
    returned.sort_unstable();
    let mut want = vec![c, d];
    want.sort_unstable();
    assert_eq!(returned, want);
    tx.rollback().await.unwrap();
    assert_eq!((count(c).await, count(d).await), (0, 0));
}
