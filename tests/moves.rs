//! Shard maps swapped and vshards moved while pgbench writes through the proxy: ten
//! swaps and twenty moves (a fifth backend added and rebalanced onto), no failed
//! transaction, every row where the final map says and nowhere else, the same
//! counts and checksums through the proxy and on the backends directly.

mod common;

use std::net::SocketAddr;

use common::{demo, extra_demo, pg_tool, pgshard_cli, through_proxy, vshard_sql, Demo, Proxy};
use serde_json::Value;

const BACKENDS: usize = 4;

fn cluster() -> &'static Demo {
    demo(BACKENDS, 12)
}

const PROXY_CONFIG: &str = "http_listen = \"127.0.0.1:0\"\npool_size = 12\n\
    [[users]]\nname = \"pgshard\"\npassword = \"pgshard\"\nauth = \"scram-sha-256\"\n\
    admin = true\n";

/// A read/write transaction on one key, as applications write them.
const SCRIPT: &str = "\\set aid random(1, 1000000)\n\
    \\set delta random(-5000, 5000)\n\
    BEGIN;\n\
    UPDATE pgbench_accounts SET abalance = abalance + :delta WHERE aid = :aid;\n\
    SELECT abalance FROM pgbench_accounts WHERE aid = :aid;\n\
    INSERT INTO pgbench_history (tid, bid, aid, delta, mtime) \
      VALUES (1, 1, :aid, :delta, CURRENT_TIMESTAMP);\n\
    END;\n";

/// The tables and the columns their checksums add up.
const TABLES: [(&str, &str, &str); 4] = [
    ("pgbench_accounts", "aid", "abalance"),
    ("pgbench_history", "aid", "delta"),
    ("pgbench_tellers", "tid", "tbalance"),
    ("pgbench_branches", "bid", "bbalance"),
];

fn cli(proxy: &Proxy, args: &[&str]) -> String {
    let url = proxy.admin_url();
    let mut all = args.to_vec();
    all.extend(["--admin", &url]);
    let (ok, stdout, stderr) = pgshard_cli(&all);
    assert!(ok, "pgshard {args:?} failed:\n{stdout}\n{stderr}");
    stdout
}

async fn api(proxy: &Proxy, path: &str) -> Value {
    let body = common::http_get(proxy.http.expect("http"), path).await;
    serde_json::from_str(&body).unwrap_or_else(|e| panic!("{path}: {e}: {body}"))
}

/// The running map's document, one version up, with `edit` applied.
async fn next_map(proxy: &Proxy, edit: impl Fn(&mut toml::Table)) -> String {
    let map = api(proxy, "/api/map").await;
    let text = map["text"].as_str().expect("text");
    let version = map["version"].as_i64().expect("version");
    let mut doc: toml::Table = toml::from_str(text).expect("running map parses");
    doc.insert("version".into(), toml::Value::Integer(version + 1));
    edit(&mut doc);
    toml::to_string(&doc).expect("map")
}

/// Applies a map document with the CLI.
async fn apply(proxy: &Proxy, name: &str, text: &str) -> String {
    let path = proxy.dir.join(format!("{name}.toml"));
    std::fs::write(&path, text).expect("write map");
    let path = path.display().to_string();
    cli(proxy, &["map", "apply", &path])
}

/// Every backend's address: the demo's four and the extra one.
fn addrs(extra: &Demo) -> Vec<(String, SocketAddr)> {
    let mut out: Vec<(String, SocketAddr)> = cluster()
        .backends
        .iter()
        .map(|(name, port)| (name.clone(), format!("127.0.0.1:{port}").parse().unwrap()))
        .collect();
    out.push((
        "b4".into(),
        format!("127.0.0.1:{}", extra.backends[0].1)
            .parse()
            .unwrap(),
    ));
    out
}

async fn direct(addr: SocketAddr) -> tokio_postgres::Client {
    common::connect(addr, common::USER, common::PASSWORD, common::DATABASE)
        .await
        .expect("connect to a backend")
}

/// count, sum of the balance and sum of the key of `table` as one text.
fn checksum_sql(table: &str, key: &str, balance: &str) -> String {
    format!(
        "SELECT count(*) || ' ' || coalesce(sum({balance}), 0) || ' ' || coalesce(sum({key}::int8), 0) \
         FROM {table}"
    )
}

async fn checksums_agree(proxy: &tokio_postgres::Client, backends: &[(String, SocketAddr)]) {
    for (table, key, balance) in TABLES {
        let count = through_proxy(proxy, &format!("SELECT count(*) FROM {table}")).await;
        let sum = through_proxy(proxy, &format!("SELECT sum({balance}) FROM {table}")).await;
        let keys = through_proxy(proxy, &format!("SELECT sum({key}::int8) FROM {table}")).await;
        let mut totals = [0i128; 3];
        for (_, addr) in backends {
            let client = direct(*addr).await;
            let text = through_proxy(&client, &checksum_sql(table, key, balance)).await;
            for (total, part) in totals.iter_mut().zip(text.split(' ')) {
                *total += part.parse::<i128>().unwrap_or_else(|_| panic!("{text}"));
            }
        }
        // An empty table's sum is NULL.
        let via_proxy = [&count, &sum, &keys].map(|v| match v.as_str() {
            "" => 0,
            v => v.parse::<i128>().unwrap_or(-1),
        });
        assert_eq!(
            via_proxy, totals,
            "{table}: through the proxy vs the backends"
        );
    }
}

/// On each backend, no row whose vshard the final map gives another backend, and
/// nothing a move left behind.
async fn rows_where_the_map_says(proxy: &Proxy, backends: &[(String, SocketAddr)]) {
    let vshards = api(proxy, "/api/vshards").await;
    for (name, addr) in backends {
        let owned: Vec<String> = vshards
            .as_array()
            .expect("rows")
            .iter()
            .filter(|r| r["backend"] == name.as_str())
            .map(|r| r["vshard"].as_str().unwrap_or("-1").to_string())
            .collect();
        let client = direct(*addr).await;
        for (table, key, _) in TABLES {
            let sql = format!(
                "SELECT count(*) FROM {table} WHERE NOT {} = ANY('{{{}}}'::int[])",
                vshard_sql(key),
                owned.join(",")
            );
            let stray = through_proxy(&client, &sql).await;
            assert_eq!(
                stray, "0",
                "{table} rows on {name} that its map does not route there"
            );
        }
        let left = through_proxy(&client, common::MOVE_LEFTOVERS).await;
        assert_eq!(
            left, "0",
            "triggers, staging tables or prepared moves left on {name}"
        );
    }
}

fn run_pgbench(addr: SocketAddr, args: Vec<String>) -> String {
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let out = pg_tool("pgbench", addr, &args);
    let text = format!(
        "{}\n{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(out.status.success(), "pgbench {args:?}:\n{text}");
    text
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn swaps_and_moves_under_load_lose_nothing() {
    let fifth = extra_demo("fifth", 1);
    // Two worker threads: the other tests run the proxy on the machine's default,
    // which is one thread on CI's 2 cores.
    let workers = [("PGSHARD_WORKERS", "2")];
    let proxy = common::start_proxy_env(cluster(), "moves-load", PROXY_CONFIG, &workers);
    let addr = proxy.addr;
    tokio::task::spawn_blocking(move || {
        run_pgbench(
            addr,
            vec![
                "-i".into(),
                "-s".into(),
                "10".into(),
                common::DATABASE.into(),
            ],
        )
    })
    .await
    .unwrap();
    let script = proxy.dir.join("rw.sql");
    std::fs::write(&script, SCRIPT).unwrap();
    let args = ["-n", "-c", "8", "-j", "2", "-T", "40", "-f"]
        .iter()
        .map(|s| s.to_string())
        .chain([script.display().to_string(), common::DATABASE.to_string()])
        .collect();
    let load = tokio::task::spawn_blocking(move || run_pgbench(addr, args));
    // Keyless reads all along: each sees every row exactly once.
    let counting = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(true));
    let counter = {
        let counting = counting.clone();
        let client = common::connect(addr, common::USER, common::PASSWORD, common::DATABASE)
            .await
            .unwrap();
        tokio::spawn(async move {
            let mut counts = 0;
            while counting.load(std::sync::atomic::Ordering::Relaxed) {
                let n = through_proxy(&client, "SELECT count(*) FROM pgbench_accounts").await;
                assert_eq!(n, "1000000", "a keyless read during the moves");
                counts += 1;
            }
            counts
        })
    };

    // Ten swaps: the fifth backend joins with no vshard, tables come and go.
    let fifth_dsn = format!(
        "postgresql://pgshard:pgshard@127.0.0.1:{}/postgres",
        fifth.backends[0].1
    );
    let add = next_map(&proxy, |doc| {
        let mut backend = toml::Table::new();
        backend.insert("name".into(), "b4".into());
        backend.insert("primary".into(), fifth_dsn.clone().into());
        if let Some(toml::Value::Array(backends)) = doc.get_mut("backends") {
            backends.push(toml::Value::Table(backend));
        }
    })
    .await;
    let out = apply(&proxy, "add-b4", &add).await;
    assert!(out.contains("+ backend b4"), "{out}");
    let mut moved = Vec::new();
    for i in 1..10 {
        // A reference table listed and unlisted again.
        let text = next_map(&proxy, |doc| {
            let tables = if i % 2 == 1 {
                vec!["swap_reference"]
            } else {
                vec![]
            };
            doc.insert("reference_tables".into(), tables.into());
        })
        .await;
        apply(&proxy, &format!("swap-{i}"), &text).await;
        // A move between two swaps: vshards spread over the four first backends.
        let vshard = 3 + i * 97;
        let to = format!("b{}", (vshard / 250 + 1) % 4);
        let out = cli(&proxy, &["move", &vshard.to_string(), "--to", &to]);
        assert!(out.contains(&format!("vshard {vshard} moved")), "{out}");
        moved.push((vshard, to));
    }
    let out = cli(&proxy, &["move", "999", "--to", "b0"]);
    assert!(out.contains("vshard 999 moved b3 -> b0"), "{out}");
    // Ten more onto the new backend.
    let out = cli(&proxy, &["rebalance", "--max-moves", "10"]);
    assert!(out.contains("moves 10/10 (0 failed)"), "{out}");

    counting.store(false, std::sync::atomic::Ordering::Relaxed);
    let counts = counter.await.expect("keyless reads");
    assert!(counts > 0);
    let report = load.await.unwrap();
    assert!(
        report.contains("number of failed transactions: 0 (0.000%)"),
        "{report}"
    );
    let processed: u64 = report
        .lines()
        .find_map(|l| l.strip_prefix("number of transactions actually processed: "))
        .and_then(|n| n.parse().ok())
        .expect("processed");
    assert!(processed > 1000, "{report}");

    let map = api(&proxy, "/api/map").await;
    let b4 = map["backends"]
        .as_array()
        .unwrap()
        .iter()
        .find(|b| b["name"] == "b4")
        .cloned();
    assert_eq!(b4.expect("b4")["vshards"], 10, "{map}");
    assert_eq!(
        map["version"],
        1 + 10 + 20,
        "ten swaps and twenty moves, each a version"
    );
    let backends = addrs(&fifth);
    let client = common::connect(addr, common::USER, common::PASSWORD, common::DATABASE)
        .await
        .unwrap();
    checksums_agree(&client, &backends).await;
    // Each transaction moved the same amount into an account and into history.
    let balance = through_proxy(&client, "SELECT sum(abalance) FROM pgbench_accounts").await;
    let delta = through_proxy(&client, "SELECT sum(delta) FROM pgbench_history").await;
    assert_eq!(balance, delta);
    rows_where_the_map_says(&proxy, &backends).await;
    let vshards = api(&proxy, "/api/vshards").await;
    for (vshard, to) in &moved {
        // Where it was moved, unless the rebalance took it on to b4.
        let now = vshards[*vshard as usize]["backend"]
            .as_str()
            .unwrap_or_default();
        assert!(
            now == to || now == "b4",
            "vshard {vshard} is on {now}, moved to {to}"
        );
    }
    let metrics = common::http_get(proxy.http.unwrap(), "/metrics").await;
    assert!(
        metrics.contains("pgshard_moves_total{result=\"done\"} 20"),
        "{metrics}"
    );
    assert!(
        metrics.contains("pgshard_map_swaps_total{result=\"applied\"} 10"),
        "{metrics}"
    );
    let history = api(&proxy, "/api/map/history").await;
    assert_eq!(history.as_array().map(Vec::len), Some(31));
}
