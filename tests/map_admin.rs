//! Shard map administration: each kind of bad map refused with its reason while the
//! running map keeps serving the same client connection; diff, SIGHUP, the
//! console's RELOAD and SHOW VSHARDS, rollback and the history.

mod common;

use std::time::Duration;

use common::{demo, pg_tool, pgshard_cli, through_proxy, wait_until, Proxy};
use serde_json::Value;

const CONFIG: &str = "http_listen = \"127.0.0.1:0\"\npool_size = 4\n\
    [[users]]\nname = \"pgshard\"\npassword = \"pgshard\"\nauth = \"scram-sha-256\"\n\
    admin = true\n";

async fn version(proxy: &Proxy) -> u64 {
    let body = common::http_get(proxy.http.expect("http"), "/api/map").await;
    let map: Value = serde_json::from_str(&body).expect("json");
    map["version"].as_u64().expect("version")
}

/// `pgshard map ARGS --admin ...` with `text` as its FILE (when given).
fn map_cli(proxy: &Proxy, args: &[&str], text: Option<&str>) -> (bool, String, String) {
    let file = proxy.dir.join("candidate.toml");
    let mut all = vec!["map"];
    all.extend(args);
    let path = file.display().to_string();
    if let Some(text) = text {
        std::fs::write(&file, text).expect("write candidate map");
        all.push(&path);
    }
    let url = proxy.admin_url();
    all.extend(["--admin", &url]);
    pgshard_cli(&all)
}

/// The running map's document edited as a TOML table.
fn edited(text: &str, edit: impl FnOnce(&mut toml::Table)) -> String {
    let mut doc: toml::Table = toml::from_str(text).expect("map");
    edit(&mut doc);
    toml::to_string(&doc).expect("map")
}

fn assign(doc: &mut toml::Table, ranges: &[(&str, &str)]) {
    let mut table = toml::Table::new();
    for (range, backend) in ranges {
        table.insert(range.to_string(), toml::Value::String(backend.to_string()));
    }
    doc.insert("assign".into(), toml::Value::Table(table));
}

fn version_2(doc: &mut toml::Table) {
    doc.insert("version".into(), toml::Value::Integer(2));
}

fn admin_sql(proxy: &Proxy, sql: &str) -> String {
    let out = pg_tool("psql", proxy.addr, &["-At", "-d", "pgshard", "-c", sql]);
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(
        out.status.success(),
        "{sql}: {text}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    text
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_maps_are_refused_while_the_running_map_serves() {
    let proxy = common::start_proxy(demo(2, 4), "map-admin", CONFIG);
    let running = std::fs::read_to_string(proxy.dir.join("shardmap.toml")).unwrap();
    let client = common::connect(proxy.addr, common::USER, common::PASSWORD, common::DATABASE)
        .await
        .unwrap();
    let cases: Vec<(&str, String, &str)> =
        vec![
        (
            "unassigned",
            edited(&running, |d| {
                version_2(d);
                assign(d, &[("0-499", "b0"), ("500-998", "b1")])
            }),
            "1 vshards are not assigned, the first is 999",
        ),
        (
            "twice",
            edited(&running, |d| {
                version_2(d);
                assign(d, &[("0-500", "b0"), ("500-999", "b1")])
            }),
            "vshard 500 is assigned twice",
        ),
        (
            "unknown backend",
            edited(&running, |d| {
                version_2(d);
                assign(d, &[("0-499", "b0"), ("500-999", "b9")])
            }),
            "unknown backend \"b9\"",
        ),
        (
            "old version",
            running.clone(),
            "version 1 is not above the running version 1",
        ),
        (
            "malformed",
            running.replace("[assign]", "[assign"),
            "shard map is not valid TOML",
        ),
        (
            "unreachable",
            edited(&running, |d| {
                version_2(d);
                let mut b = toml::Table::new();
                b.insert("name".into(), "b2".into());
                b.insert("primary".into(), "postgresql://pgshard:x@127.0.0.1:1/postgres".into());
                if let Some(toml::Value::Array(backends)) = d.get_mut("backends") {
                    backends.push(toml::Value::Table(b));
                }
            }),
            "backend \"b2\" (postgresql://pgshard@127.0.0.1:1/postgres) is unreachable",
        ),
        (
            "rows left behind",
            edited(&running, |d| {
                version_2(d);
                assign(d, &[("0-500", "b0"), ("501-999", "b1")])
            }),
            "1 vshards would change backend without their rows (the first: vshard 500, b1 -> b0)",
        ),
    ];
    for (what, text, reason) in &cases {
        let (ok, stdout, stderr) = map_cli(&proxy, &["apply"], Some(text));
        assert!(!ok, "{what}: accepted\n{stdout}");
        assert!(stderr.contains(reason), "{what}: {stderr}");
        assert!(!stderr.contains("x@"), "{what}: a password in {stderr}");
        assert_eq!(version(&proxy).await, 1, "{what}: the running map changed");
        // The same connection serves on.
        assert_eq!(
            through_proxy(&client, "SELECT 41 + 1").await,
            "42",
            "{what}"
        );
    }
    let metrics = common::http_get(proxy.http.unwrap(), "/metrics").await;
    assert!(
        metrics.contains("pgshard_map_swaps_total{result=\"refused\"} 3"),
        "{metrics}"
    );
    assert!(
        metrics.contains("pgshard_map_swaps_total{result=\"invalid\"} 3"),
        "{metrics}"
    );
    assert!(
        metrics.contains("pgshard_map_swaps_total{result=\"malformed\"} 1"),
        "{metrics}"
    );

    // diff, then SIGHUP reloads the file.
    let v2 = edited(&running, |d| {
        version_2(d);
        d.insert("reference_tables".into(), vec!["countries"].into());
    });
    let (ok, diff, _) = map_cli(&proxy, &["diff"], Some(&v2));
    assert!(
        ok && diff.contains("version 1 -> 2") && diff.contains("+ reference table countries"),
        "{diff}"
    );
    std::fs::write(proxy.dir.join("shardmap.toml"), &v2).unwrap();
    proxy.signal(libc::SIGHUP);
    let reloaded = wait_until(Duration::from_secs(20), || async {
        version(&proxy).await == 2
    })
    .await;
    assert!(reloaded, "SIGHUP did not reload the map");

    // The console: RELOAD of an unchanged file, of a new one; SHOW VSHARDS.
    let console = |sql: &str| tokio::task::block_in_place(|| admin_sql(&proxy, sql));
    console("RELOAD");
    assert_eq!(version(&proxy).await, 2);
    let v3 = edited(&v2, |d| {
        d.insert("version".into(), toml::Value::Integer(3));
        d.insert("reference_tables".into(), Vec::<String>::new().into());
    });
    std::fs::write(proxy.dir.join("shardmap.toml"), &v3).unwrap();
    console("RELOAD");
    assert_eq!(version(&proxy).await, 3);
    let vshards = console("SHOW VSHARDS");
    assert_eq!(vshards.lines().count(), 1000);
    assert!(vshards.lines().any(|l| l == "999|b1|"), "{vshards}");

    // Rollback applies version 2's document as version 4.
    let (ok, out, err) = map_cli(&proxy, &["rollback"], None);
    assert!(ok, "{out}{err}");
    assert!(
        out.contains("rolled back: version 4 (was 3)")
            && out.contains("+ reference table countries"),
        "{out}"
    );
    let (ok, shown, _) = map_cli(&proxy, &["show"], None);
    assert!(
        ok && shown.contains("version = 4") && shown.contains("countries"),
        "{shown}"
    );
    let (ok, history, _) = map_cli(&proxy, &["history"], None);
    assert!(ok, "{history}");
    let versions: Vec<&str> = history
        .lines()
        .filter_map(|l| l.split_whitespace().nth(1))
        .collect();
    assert_eq!(versions, ["1", "2", "3", "4"], "{history}");
    assert_eq!(through_proxy(&client, "SELECT 41 + 1").await, "42");
}

/// A transaction in flight finishes on the map it began with; the next one takes the
/// new map. Seen through the default backend, where unlisted statements go.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_transaction_in_flight_keeps_its_map() {
    let proxy = common::start_proxy(demo(2, 4), "map-snapshot", CONFIG);
    let running = std::fs::read_to_string(proxy.dir.join("shardmap.toml")).unwrap();
    let port = |b: usize| demo(2, 4).backends[b].1.to_string();
    let client = common::connect(proxy.addr, common::USER, common::PASSWORD, common::DATABASE)
        .await
        .unwrap();
    const PORT: &str = "SELECT current_setting('port')";
    client.simple_query("BEGIN").await.unwrap();
    assert_eq!(through_proxy(&client, PORT).await, port(0));
    let v2 = edited(&running, |d| {
        version_2(d);
        d.insert("default_backend".into(), "b1".into());
    });
    let (ok, out, err) = map_cli(&proxy, &["apply"], Some(&v2));
    assert!(ok && out.contains("default backend b0 -> b1"), "{out}{err}");
    assert_eq!(version(&proxy).await, 2);
    // Still the transaction's map: the same backend.
    assert_eq!(through_proxy(&client, PORT).await, port(0));
    client.simple_query("COMMIT").await.unwrap();
    assert_eq!(through_proxy(&client, PORT).await, port(1));
    let other = common::connect(proxy.addr, common::USER, common::PASSWORD, common::DATABASE)
        .await
        .unwrap();
    assert_eq!(through_proxy(&other, PORT).await, port(1));
}
