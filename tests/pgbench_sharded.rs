//! pgbench through the proxy over four backends: `pgbench -i` builds sharded
//! tables whose rows sit exactly where the hash says (checked on each backend with
//! PostgreSQL's own hash partitioning), every read mode and TPC-B run without a
//! failed transaction, the balances agree, and two-phase commits cut between
//! PREPARE and COMMIT PREPARED are resolved by recovery.

mod common;

use std::sync::atomic::{AtomicI64, Ordering::Relaxed};
use std::time::Duration;

use common::{demo, pg_tool, through_proxy, vshard_sql, Demo};
use pgshard::router::ShardMap;

const BACKENDS: usize = 4;
const SCALE: i64 = 10;

fn cluster() -> &'static Demo {
    demo(BACKENDS, 12)
}

fn map() -> ShardMap {
    ShardMap::load(&cluster().dir.join("shardmap.toml")).expect("demo shard map")
}

/// The demo's user, over the test's own proxy (two-phase recovery every 300 ms).
const PROXY_CONFIG: &str = "pool_size = 12\ntwo_phase_recovery_interval_ms = 300\n\
    [[users]]\nname = \"pgshard\"\npassword = \"pgshard\"\nauth = \"scram-sha-256\"\n";

/// Times the test holds the decision log's lock to cut participants.
const CUT_ROUNDS: usize = 5;

fn pgbench(addr: std::net::SocketAddr, args: &[&str]) -> String {
    let out = pg_tool("pgbench", addr, args);
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        out.status.success(),
        "pgbench {args:?} failed:\n{stdout}\n{stderr}"
    );
    format!("{stdout}\n{stderr}")
}

async fn one_i64(client: &tokio_postgres::Client, sql: &str) -> i64 {
    let row = client
        .query_one(sql, &[])
        .await
        .unwrap_or_else(|e| panic!("{sql}: {e}"));
    row.get(0)
}

/// The balance columns TPC-B keeps in step.
const SUMS: [(&str, &str); 4] = [
    ("abalance", "pgbench_accounts"),
    ("tbalance", "pgbench_tellers"),
    ("bbalance", "pgbench_branches"),
    ("delta", "pgbench_history"),
];

/// The four balance sums through the proxy and added up over the backends; all
/// eight must be one number.
async fn sums_agree(proxy: &tokio_postgres::Client) -> i64 {
    let mut seen = Vec::new();
    for (column, table) in SUMS {
        let value = through_proxy(proxy, &format!("SELECT sum({column}) FROM {table}")).await;
        seen.push((table, "proxy", value.parse::<i64>().unwrap_or(0)));
        let mut total = 0;
        for b in 0..BACKENDS {
            let client = common::backend_client(cluster(), b).await;
            let sql = format!("SELECT coalesce(sum({column}), 0)::int8 FROM {table}");
            total += one_i64(&client, &sql).await;
        }
        seen.push((table, "backends", total));
    }
    let first = seen[0].2;
    assert!(seen.iter().all(|s| s.2 == first), "{seen:?}");
    first
}

/// One round of cutting participants: holds the decision log's lock (on the log
/// backend, `log`) until some participant away from it was terminated while its
/// coordinator waited for the lock, or the run ended. Returns how many were.
async fn cut_round(
    log: &tokio_postgres::Client,
    watcher: &tokio_postgres::Client,
    killers: &[tokio_postgres::Client],
    run: &tokio::task::JoinHandle<String>,
) -> i64 {
    log.batch_execute("BEGIN; LOCK TABLE pgshard.two_phase_log IN SHARE MODE")
        .await
        .unwrap();
    let cut = AtomicI64::new(0);
    let cut_some = common::wait_until(Duration::from_secs(30), || {
        let cut = &cut;
        async move {
            let gids = waiting_decisions(watcher).await;
            for killer in killers {
                cut.fetch_add(cut_participants(killer, &gids).await, Relaxed);
            }
            cut.load(Relaxed) > 0 || run.is_finished()
        }
    })
    .await;
    log.batch_execute("COMMIT").await.unwrap();
    assert!(cut_some, "no coordinator came to wait for its decision");
    cut.load(Relaxed)
}

/// The gids whose coordinators wait for the decision log's lock: each has prepared
/// on every participant and cannot send COMMIT PREPARED while the lock is held.
async fn waiting_decisions(log_backend: &tokio_postgres::Client) -> Vec<String> {
    // The waiters first, then what they run: a waiter stays blocked while the lock
    // is held, so the later snapshot of pg_stat_activity still shows its INSERT.
    let waiting: Vec<i32> = log_backend
        .query(
            "SELECT pid FROM pg_locks WHERE NOT granted \
             AND relation = 'pgshard.two_phase_log'::regclass",
            &[],
        )
        .await
        .unwrap()
        .iter()
        .map(|r| r.get(0))
        .collect();
    log_backend
        .query(
            "SELECT substring(query FROM 'pgshard_[0-9a-f]{32}') FROM pg_stat_activity \
             WHERE pid = ANY($1) AND query LIKE 'INSERT INTO pgshard.two_phase_log %'",
            &[&waiting],
        )
        .await
        .unwrap()
        .iter()
        .filter_map(|r| r.get::<_, Option<String>>(0))
        .collect()
}

/// Terminates the connections on `backend` that are idle after preparing one of
/// `gids`.
async fn cut_participants(backend: &tokio_postgres::Client, gids: &[String]) -> i64 {
    if gids.is_empty() {
        return 0;
    }
    // Each participant prepares under the gid and its own suffix.
    let prepares: Vec<String> = gids
        .iter()
        .map(|gid| format!("PREPARE TRANSACTION '{gid}\\_%'"))
        .collect();
    one_row(
        backend,
        "SELECT count(*) FILTER (WHERE pg_terminate_backend(pid)) FROM pg_stat_activity \
         WHERE state = 'idle' AND query LIKE ANY($1)",
        &prepares,
    )
    .await
}

async fn one_row(client: &tokio_postgres::Client, sql: &str, list: &[String]) -> i64 {
    let row = client
        .query_one(sql, &[&list])
        .await
        .unwrap_or_else(|e| panic!("{sql}: {e}"));
    row.get(0)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pgbench_initializes_reads_and_runs_tpcb_over_four_backends() {
    let map = map();
    let proxy = common::start_proxy(cluster(), "pgbench-sharded", PROXY_CONFIG);
    let addr = proxy.addr;
    let scale = SCALE.to_string();
    tokio::task::spawn_blocking(move || pgbench(addr, &["-i", "-s", &scale, common::DATABASE]))
        .await
        .unwrap();

    // Every account row sits on the backend its vshard maps to, and each backend
    // holds exactly the aids 1..=100000*scale that map to it.
    let assign: Vec<String> = map.assignment.iter().map(|b| b.to_string()).collect();
    let owner = format!("(ARRAY[{}])[{} + 1]", assign.join(","), vshard_sql("aid"));
    let rows = 100_000 * SCALE;
    let mut total = 0;
    for b in 0..BACKENDS {
        let client = common::backend_client(cluster(), b).await;
        let held = one_i64(&client, "SELECT count(*) FROM pgbench_accounts").await;
        let expected = one_i64(
            &client,
            &format!(
                "SELECT count(*) FROM generate_series(1, {rows}) AS g(aid) WHERE {owner} = {b}"
            ),
        )
        .await;
        let misplaced = one_i64(
            &client,
            &format!("SELECT count(*) FROM pgbench_accounts WHERE {owner} <> {b}"),
        )
        .await;
        assert_eq!(held, expected, "backend {b}");
        assert_eq!(misplaced, 0, "backend {b}");
        assert!(held > rows / 8, "backend {b} holds too few rows: {held}");
        total += held;
    }
    assert_eq!(total, rows);
    // The vshard formula above is PostgreSQL's own hash partitioning.
    let first = common::backend_client(cluster(), 0).await;
    first
        .batch_execute(
            "DROP TABLE IF EXISTS vshard_probe; \
             CREATE TABLE vshard_probe (k int8) PARTITION BY HASH (k)",
        )
        .await
        .unwrap();
    let disagree = one_i64(
        &first,
        &format!(
            "SELECT count(*) FROM generate_series(1, {rows}) AS g(aid) WHERE NOT \
             satisfies_hash_partition('vshard_probe'::regclass, 1000, {}, aid::int8)",
            vshard_sql("aid")
        ),
    )
    .await;
    assert_eq!(disagree, 0);
    first
        .batch_execute("DROP TABLE vshard_probe")
        .await
        .unwrap();

    let client = common::connect(addr, common::USER, common::PASSWORD, common::DATABASE)
        .await
        .unwrap();
    assert_eq!(
        through_proxy(&client, "SELECT count(*) FROM pgbench_accounts").await,
        rows.to_string()
    );

    // Every read mode and TPC-B: 8 clients, no failed transaction. The first run
    // also vacuums and truncates pgbench_history through the proxy, as pgbench does
    // without -n; later runs keep the history, so it sums to the balances.
    for mode in [
        &["-S"][..],
        &["-n", "-M", "extended", "-S"],
        &["-n", "-M", "prepared", "-S"],
        &["-n"],
        &["-n", "-M", "extended"],
        &["-n", "-M", "prepared"],
    ] {
        let mut args: Vec<String> = ["-c", "8", "-j", "2", "-t", "150"]
            .iter()
            .map(|s| s.to_string())
            .collect();
        args.extend(mode.iter().map(|s| s.to_string()));
        args.push(common::DATABASE.into());
        let out = tokio::task::spawn_blocking(move || {
            let args: Vec<&str> = args.iter().map(String::as_str).collect();
            pgbench(addr, &args)
        })
        .await
        .unwrap();
        assert!(out.contains("processed: 1200/1200"), "{mode:?}:\n{out}");
        assert!(
            out.contains("number of failed transactions: 0 (0.000%)"),
            "{mode:?}:\n{out}"
        );
    }
    let moved = sums_agree(&client).await;
    assert_ne!(moved, 0, "TPC-B moved no money");

    // Two-phase recovery: during TPC-B, participant connections (on backends other
    // than the one holding the decision log) are terminated between PREPARE and
    // COMMIT PREPARED. For a moment the test holds a lock on the decision log:
    // coordinators that have prepared everywhere then wait to write their decision,
    // so their participants are idle after PREPARE, and stay so until the lock goes,
    // whatever the timing. Only those are cut; a connection that went on to other
    // work never is.
    let run = tokio::task::spawn_blocking(move || {
        pgbench(
            addr,
            &["-c", "8", "-j", "2", "-t", "150", "-n", common::DATABASE],
        )
    });
    let log = common::backend_client(cluster(), map.default_backend).await;
    let watcher = common::backend_client(cluster(), map.default_backend).await;
    let mut killers = Vec::new();
    for b in (0..BACKENDS).filter(|&b| b != map.default_backend) {
        killers.push(common::backend_client(cluster(), b).await);
    }
    let mut terminated = 0;
    for _ in 0..CUT_ROUNDS {
        if run.is_finished() {
            break;
        }
        terminated += cut_round(&log, &watcher, &killers, &run).await;
    }
    let out = run.await.unwrap();
    assert!(out.contains("processed: 1200/1200"), "{out}");
    assert!(
        out.contains("number of failed transactions: 0 (0.000%)"),
        "{out}"
    );
    assert!(
        terminated > 0,
        "no participant was cut between PREPARE and COMMIT PREPARED"
    );
    let resolved = common::wait_until(Duration::from_secs(30), || async {
        let mut left = 0;
        for b in 0..BACKENDS {
            let c = common::backend_client(cluster(), b).await;
            left += one_i64(&c, "SELECT count(*) FROM pg_prepared_xacts").await;
        }
        left == 0
    })
    .await;
    assert!(resolved, "prepared transactions were left after recovery");
    sums_agree(&client).await;
}
