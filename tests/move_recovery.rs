//! A proxy killed (SIGKILL) in the middle of a vshard move, at each step, then
//! restarted: the move is undone if it had not switched, completed if it had, and
//! no row is lost, duplicated or left where the map does not route it.

mod common;

use std::time::Duration;

use common::{demo, through_proxy, vshard_sql, wait_until, Proxy};
use pgshard::router::hash::Key;
use serde_json::Value;

const CONFIG: &str = "http_listen = \"127.0.0.1:0\"\npool_size = 4\n\
    [[users]]\nname = \"pgshard\"\npassword = \"pgshard\"\nauth = \"scram-sha-256\"\n";

const ROWS: i64 = 20_000;

/// The demo's backends, with one sharded table of the test's own.
fn map() -> String {
    let text = std::fs::read_to_string(demo(2, 4).dir.join("shardmap.toml")).unwrap();
    let mut doc: toml::Table = toml::from_str(&text).unwrap();
    let mut table = toml::Table::new();
    table.insert("name".into(), "kill_items".into());
    table.insert("key".into(), "k".into());
    table.insert("type".into(), "int4".into());
    doc.insert("tables".into(), toml::Value::Array(vec![table.into()]));
    toml::to_string(&doc).unwrap()
}

async fn client(proxy: &Proxy) -> tokio_postgres::Client {
    common::connect(proxy.addr, common::USER, common::PASSWORD, common::DATABASE)
        .await
        .expect("connect through the proxy")
}

async fn owner(proxy: &Proxy, vshard: u32) -> String {
    let body = common::http_get(proxy.http.unwrap(), "/api/vshards").await;
    let rows: Value = serde_json::from_str(&body).unwrap();
    rows[vshard as usize]["backend"]
        .as_str()
        .unwrap()
        .to_string()
}

/// count, sum of v and sum of k: through the proxy, and added up on the backends;
/// and on each backend no row of a vshard the map gives the other one, and nothing
/// a move left.
async fn consistent(proxy: &Proxy) -> String {
    let c = client(proxy).await;
    let mut via_proxy = Vec::new();
    for sql in ["count(*)", "sum(v)", "sum(k)"] {
        via_proxy.push(through_proxy(&c, &format!("SELECT {sql} FROM kill_items")).await);
    }
    let body = common::http_get(proxy.http.unwrap(), "/api/vshards").await;
    let rows: Value = serde_json::from_str(&body).unwrap();
    let mut totals = [0i64; 3];
    for b in 0..2 {
        let name = format!("b{b}");
        let owned: Vec<&str> = rows
            .as_array()
            .unwrap()
            .iter()
            .filter(|r| r["backend"] == name.as_str())
            .map(|r| r["vshard"].as_str().unwrap())
            .collect();
        let direct = common::backend_client(demo(2, 4), b).await;
        let sums = through_proxy(
            &direct,
            "SELECT count(*) || ' ' || coalesce(sum(v), 0) || ' ' || coalesce(sum(k), 0) FROM kill_items",
        )
        .await;
        for (total, part) in totals.iter_mut().zip(sums.split(' ')) {
            *total += part.parse::<i64>().unwrap();
        }
        let stray = format!(
            "SELECT count(*) FROM kill_items WHERE NOT {} = ANY('{{{}}}'::int[])",
            vshard_sql("k"),
            owned.join(",")
        );
        assert_eq!(
            through_proxy(&direct, &stray).await,
            "0",
            "stray rows on {name}"
        );
        let left = through_proxy(&direct, common::MOVE_LEFTOVERS).await;
        assert_eq!(left, "0", "a move's objects left on {name}");
    }
    let totals = totals.map(|t| t.to_string());
    assert_eq!(via_proxy, totals, "through the proxy vs the backends");
    via_proxy.join(" ")
}

/// The first key in `vshard`.
fn key_in(vshard: u32) -> i64 {
    (1..ROWS)
        .find(|k| Key::Int(*k).vshard(1000) == vshard)
        .expect("a key in the vshard")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_move_killed_at_any_step_is_undone_or_completed() {
    let mut proxy = common::start_proxy_with_map("kill", &map(), CONFIG);
    let c = client(&proxy).await;
    c.simple_query("CREATE TABLE kill_items (k int PRIMARY KEY, v int NOT NULL)")
        .await
        .unwrap();
    for chunk in (1..=ROWS).collect::<Vec<_>>().chunks(1000) {
        let values: Vec<String> = chunk.iter().map(|k| format!("({k}, {})", k % 7)).collect();
        let sql = format!("INSERT INTO kill_items (k, v) VALUES {}", values.join(", "));
        c.simple_query(&sql).await.unwrap();
    }
    drop(c);
    let before = consistent(&proxy).await;
    // (step, whether the move had switched there), each on its own vshard.
    let steps = [
        ("copied", false, 10),
        ("prepared", false, 11),
        ("decided", true, 600),
        ("switched", true, 601),
    ];
    let mut expected_v = 0;
    for (step, switched, vshard) in steps {
        let from = owner(&proxy, vshard).await;
        let to = if from == "b0" { "b1" } else { "b0" };
        let dir = proxy.dir.clone();
        drop(proxy);
        let name = format!("kill-{step}");
        let failing = common::restart_proxy(
            &name,
            &dir,
            &[("PGSHARD_FAILPOINT", &format!("move:{step}"))],
        );
        let http = failing.http.unwrap();
        let body = format!("{{\"vshard\": {vshard}, \"to\": \"{to}\"}}");
        let call =
            tokio::spawn(async move { common::http_call(http, "POST", "/api/move", &body).await });
        let log = failing.log.clone();
        let reached = wait_until(Duration::from_secs(60), || {
            let log = log.clone();
            async move {
                std::fs::read_to_string(&log).is_ok_and(|l| l.contains("move failpoint reached"))
            }
        })
        .await;
        assert!(
            reached,
            "{step}: failpoint not reached; see {}",
            log.display()
        );
        // A write to the moving vshard at the failpoint: held (not lost) while the
        // move holds writes, else done at once.
        let key = key_in(vshard);
        let writer = client(&failing).await;
        let write = tokio::spawn(async move {
            writer
                .simple_query(&format!(
                    "UPDATE kill_items SET v = v + 1000 WHERE k = {key}"
                ))
                .await
        });
        let held = tokio::time::timeout(Duration::from_millis(500), write).await;
        let _ = failing.kill();
        call.abort();
        let wrote = matches!(&held, Ok(Ok(Ok(_))));
        // Writes are held from the last catch-up to the switch.
        let hold = matches!(step, "prepared" | "decided");
        assert_eq!(wrote, !hold, "{step}: write outcome {held:?}");
        if wrote {
            expected_v += 1000;
        }
        proxy = common::restart_proxy(&format!("{name}-after"), &dir, &[]);
        let now = owner(&proxy, vshard).await;
        assert_eq!(now == to, switched, "{step}: vshard {vshard} is on {now}");
        let sums = consistent(&proxy).await;
        let v_sum: i64 = sums.split(' ').nth(1).unwrap().parse().unwrap();
        let base: i64 = before.split(' ').nth(1).unwrap().parse().unwrap();
        assert_eq!(v_sum, base + expected_v, "{step}: {sums}");
        let journal = std::fs::read_to_string(dir.join("pgshard-state/move.json")).unwrap();
        let want = if switched {
            "\"done\""
        } else {
            "\"rolled_back\""
        };
        assert!(journal.contains(want), "{step}: {journal}");
    }
}
