//! Test harness: real PostgreSQL clusters and the real `pgshard` binary.
//!
//! Each test binary starts one `pgshard demo` (the same code users run) and shares it
//! across its tests. The demo runs in a child process that gets SIGTERM when the test
//! binary exits (PR_SET_PDEATHSIG), and then stops every cluster it started.
// Each test binary uses a different part of this module.
#![allow(dead_code)]

use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::sync::{mpsc, OnceLock};
use std::time::{Duration, Instant};

pub mod raw;
#[allow(unused_imports)]
pub use raw::{first_value, message, RawClient};

pub const USER: &str = "pgshard";
pub const PASSWORD: &str = "pgshard";
pub const DATABASE: &str = "postgres";

pub struct Demo {
    pub proxy: SocketAddr,
    pub http: SocketAddr,
    /// The folder holding the demo's config and shard map.
    pub dir: PathBuf,
    /// (name, port) of each primary, in shard map order.
    pub backends: Vec<(String, u16)>,
}

static DEMO: OnceLock<Demo> = OnceLock::new();

/// The demo of this test binary, started on first use with `backends` primaries.
pub fn demo(backends: usize, pool_size: usize) -> &'static Demo {
    DEMO.get_or_init(|| start_demo(backends, pool_size))
}

pub fn bin_dir() -> PathBuf {
    if let Ok(dir) = std::env::var("PGSHARD_PG_BIN") {
        return dir.into();
    }
    PathBuf::from("/usr/lib/postgresql/15/bin")
}

fn log_path(name: &str) -> PathBuf {
    let exe = std::env::current_exe().ok();
    let test = exe
        .as_ref()
        .and_then(|e| e.file_stem())
        .and_then(|s| s.to_str())
        .unwrap_or("test");
    Path::new(env!("CARGO_TARGET_TMPDIR")).join(format!("{test}-{name}.log"))
}

/// Spawns `pgshard ARGS` with SIGTERM-on-parent-death, from a thread that lives as
/// long as the child (the death signal follows the spawning thread), and returns
/// the child's pid and its stdout lines as they come.
fn spawn_pgshard(args: Vec<String>, log: PathBuf) -> (u32, mpsc::Receiver<String>) {
    spawn_pgshard_env(args, log, Vec::new())
}

fn spawn_pgshard_env(
    args: Vec<String>,
    log: PathBuf,
    env: Vec<(String, String)>,
) -> (u32, mpsc::Receiver<String>) {
    let (tx, rx) = mpsc::channel();
    let (pid_tx, pid_rx) = mpsc::channel();
    std::thread::spawn(move || {
        let stderr = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&log)
            .expect("create log file");
        let mut command = Command::new(env!("CARGO_BIN_EXE_pgshard"));
        command
            .args(&args)
            .envs(env)
            .stdout(Stdio::piped())
            .stderr(stderr)
            .stdin(Stdio::null());
        // SAFETY: prctl is async-signal-safe and touches only the child's own state.
        unsafe {
            command.pre_exec(|| {
                libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGTERM);
                Ok(())
            });
        }
        let mut child = command.spawn().expect("spawn pgshard");
        let _ = pid_tx.send(child.id());
        let stdout = child.stdout.take().expect("piped stdout");
        for line in BufReader::new(stdout).lines().map_while(Result::ok) {
            let _ = tx.send(line);
        }
        let _ = child.wait();
    });
    (pid_rx.recv().expect("pgshard started"), rx)
}

/// Reads lines until `want` returns a value; panics with the log path on timeout.
fn wait_for_line<T>(
    rx: &mpsc::Receiver<String>,
    log: &Path,
    mut want: impl FnMut(&str) -> Option<T>,
) -> T {
    let deadline = Instant::now() + Duration::from_secs(120);
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        match rx.recv_timeout(left) {
            Ok(line) => {
                if let Some(v) = want(&line) {
                    return v;
                }
            }
            Err(e) => panic!("pgshard did not get ready ({e}); see {}", log.display()),
        }
    }
}

/// A demo of a test's own, beside the shared one (its clusters stop when the test
/// binary exits): more backends, e.g. one to add to a map.
pub fn extra_demo(name: &str, backends: usize) -> Demo {
    start_demo_named(name, backends, 4)
}

fn start_demo(backends: usize, pool_size: usize) -> Demo {
    start_demo_named("demo", backends, pool_size)
}

fn start_demo_named(name: &str, backends: usize, pool_size: usize) -> Demo {
    let log = log_path(name);
    let _ = std::fs::remove_file(&log);
    let args = [
        "demo",
        "--port",
        "0",
        "--http-port",
        "0",
        "--backends",
        &backends.to_string(),
    ]
    .iter()
    .map(|s| s.to_string())
    .chain(["--pool-size".to_string(), pool_size.to_string()])
    .collect();
    let (_, rx) = spawn_pgshard(args, log.clone());
    let (mut proxy, mut http, mut dir) = (None, None, None);
    wait_for_line(&rx, &log, |line| {
        if let Some(rest) = line
            .split("@")
            .nth(1)
            .filter(|_| line.contains("/postgres\""))
        {
            proxy = rest.split('/').next().and_then(|a| a.parse().ok());
        }
        if let Some(rest) = line.trim().strip_prefix("admin HTTP API: http://") {
            http = rest.split('/').next().and_then(|a| a.parse().ok());
        }
        if let Some(rest) = line.trim().strip_prefix("config: ") {
            dir = Path::new(rest).parent().map(Path::to_path_buf);
        }
        (proxy.is_some() && http.is_some() && dir.is_some()).then_some(())
    });
    let dir: PathBuf = dir.expect("demo printed its config path");
    let map = std::fs::read_to_string(dir.join("shardmap.toml")).expect("read shard map");
    Demo {
        proxy: proxy.expect("proxy"),
        http: http.expect("http"),
        backends: parse_backends(&map),
        dir,
    }
}

fn parse_backends(map: &str) -> Vec<(String, u16)> {
    let mut out = Vec::new();
    let mut name = None;
    for line in map.lines() {
        if let Some(v) = line.strip_prefix("name = ") {
            name = Some(v.trim_matches('"').to_string());
        }
        if let Some(v) = line.strip_prefix("primary = ") {
            let port = v
                .rsplit(':')
                .next()
                .and_then(|p| p.split('/').next())
                .and_then(|p| p.parse().ok());
            out.push((
                name.take().expect("name before primary"),
                port.expect("port in dsn"),
            ));
        }
    }
    out
}

/// A `pgshard run` process of a test's own; killed on drop.
pub struct Proxy {
    pub addr: SocketAddr,
    /// Its admin HTTP API, when its config has `http_listen`.
    pub http: Option<SocketAddr>,
    /// The folder of its config, map and state.
    pub dir: PathBuf,
    /// Its log (stderr).
    pub log: PathBuf,
    pid: u32,
}

impl Drop for Proxy {
    fn drop(&mut self) {
        // SAFETY: plain kill(2) of our own child's pid.
        unsafe {
            libc::kill(self.pid as i32, libc::SIGTERM);
        }
    }
}

impl Proxy {
    /// SIGKILL: the proxy dies at once, wherever it is.
    pub fn kill(self) -> PathBuf {
        // SAFETY: plain kill(2) of our own child's pid.
        unsafe {
            libc::kill(self.pid as i32, libc::SIGKILL);
        }
        let dir = self.dir.clone();
        std::mem::forget(self);
        dir
    }

    pub fn signal(&self, signal: i32) {
        // SAFETY: plain kill(2) of our own child's pid.
        unsafe {
            libc::kill(self.pid as i32, signal);
        }
    }

    /// The admin URL for `pgshard ... --admin`.
    pub fn admin_url(&self) -> String {
        format!("http://{}", self.http.expect("proxy has http_listen"))
    }
}

/// Starts a proxy over the demo's backends with `extra` config lines (users, pool
/// size, ...) appended to a minimal config.
pub fn start_proxy(demo: &Demo, name: &str, extra: &str) -> Proxy {
    start_proxy_env(demo, name, extra, &[])
}

/// `start_proxy` with environment variables for the proxy, e.g. `PGSHARD_WORKERS`
/// (its default depends on the machine's cores: one worker on 2 or 3).
pub fn start_proxy_env(demo: &Demo, name: &str, extra: &str, env: &[(&str, &str)]) -> Proxy {
    let map = std::fs::read_to_string(demo.dir.join("shardmap.toml")).expect("read shard map");
    let dir = write_proxy_files(name, &map, extra);
    restart_proxy(name, &dir, env)
}

/// Starts a proxy with a shard map of the test's own.
pub fn start_proxy_with_map(name: &str, map: &str, extra: &str) -> Proxy {
    let dir = write_proxy_files(name, map, extra);
    restart_proxy(name, &dir, &[])
}

/// A fresh folder for proxy `name` with its shard map and config; returns it.
fn write_proxy_files(name: &str, map: &str, extra: &str) -> PathBuf {
    let dir =
        Path::new(env!("CARGO_TARGET_TMPDIR")).join(format!("proxy-{}-{name}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).expect("proxy dir");
    std::fs::write(dir.join("shardmap.toml"), map).expect("write shard map");
    let config = format!("listen = \"127.0.0.1:0\"\nshard_map = \"shardmap.toml\"\n{extra}");
    std::fs::write(dir.join("pgshard.toml"), config).expect("write config");
    dir
}

/// SQL for an integer key's vshard, as PostgreSQL's hash partitioning computes it
/// (written here apart from the proxy's own): `hashint8extended` with the partition
/// seed, combined as `hash_combine64(0, h)`, modulo 1000 (unsigned, in numeric).
pub fn vshard_sql(column: &str) -> String {
    format!(
        "(((hashint8extended({column}::int8, 8816678312871386365)::numeric \
           + 18446744073709551616 + 5305509591434766563) % 18446744073709551616) % 1000)::int"
    )
}

/// On a backend: how many capture triggers, staging tables and prepared
/// transactions vshard moves left there (0 once every move is done).
pub const MOVE_LEFTOVERS: &str =
    "SELECT (SELECT count(*) FROM pg_trigger WHERE tgname LIKE 'pgshard_move%') \
     + (SELECT count(*) FROM pg_tables WHERE schemaname = 'pgshard' \
       AND tablename ~ '^move_[0-9a-f]+_[0-9]+$') \
     + (SELECT count(*) FROM pg_prepared_xacts WHERE gid LIKE 'move\\_pgshard%')";

/// `sql`'s first value as text, run as a simple Query.
pub async fn through_proxy(client: &tokio_postgres::Client, sql: &str) -> String {
    let replies = client
        .simple_query(sql)
        .await
        .unwrap_or_else(|e| panic!("{sql}: {e}"));
    replies
        .iter()
        .find_map(|m| match m {
            tokio_postgres::SimpleQueryMessage::Row(r) => Some(r.get(0).unwrap_or("").to_owned()),
            _ => None,
        })
        .unwrap_or_default()
}

/// Starts a proxy on the config, map and state a proxy in `dir` left, with `env`.
pub fn restart_proxy(name: &str, dir: &Path, env: &[(&str, &str)]) -> Proxy {
    let path = dir.join("pgshard.toml");
    let log = log_path(name);
    // A log of an earlier run of the tests must not answer this run's waits.
    let _ = std::fs::remove_file(&log);
    let args = vec!["run".into(), "--config".into(), path.display().to_string()];
    let env = env
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect();
    let (pid, rx) = spawn_pgshard_env(args, log.clone(), env);
    let mut http = None;
    let addr = wait_for_line(&rx, &log, |line| {
        if let Some(a) = line.strip_prefix("pgshard admin HTTP API on http://") {
            http = a.parse().ok();
        }
        line.strip_prefix("pgshard listening on ")
            .and_then(|a| a.parse().ok())
    });
    // The HTTP line follows the listening line.
    if std::fs::read_to_string(&path).is_ok_and(|c| c.contains("http_listen")) {
        wait_for_line(&rx, &log, |line| {
            line.strip_prefix("pgshard admin HTTP API on http://")
                .and_then(|a| a.parse().ok())
                .map(|a| http = Some(a))
        });
    }
    Proxy {
        addr,
        http,
        dir: dir.to_owned(),
        log,
        pid,
    }
}

/// Runs `pgshard ARGS` to its end: (success, stdout, stderr).
pub fn pgshard_cli(args: &[&str]) -> (bool, String, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_pgshard"))
        .args(args)
        .env("RUST_LOG", "warn")
        .output()
        .expect("run pgshard");
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// A plain HTTP/1.0 request with a body; returns (status, body).
pub async fn http_call(addr: SocketAddr, method: &str, path: &str, body: &str) -> (u16, String) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut stream = tokio::net::TcpStream::connect(addr)
        .await
        .expect("connect to the HTTP API");
    let request = format!(
        "{method} {path} HTTP/1.0\r\nHost: {addr}\r\nContent-Type: application/json\r\n\
         Content-Length: {}\r\n\r\n{body}",
        body.len()
    );
    stream.write_all(request.as_bytes()).await.expect("send");
    let mut response = String::new();
    stream.read_to_string(&mut response).await.expect("read");
    let status = response
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or(0);
    let body = response
        .split_once("\r\n\r\n")
        .map(|(_, b)| b.to_string())
        .unwrap_or_default();
    (status, body)
}

pub async fn connect(
    addr: SocketAddr,
    user: &str,
    password: &str,
    db: &str,
) -> Result<tokio_postgres::Client, tokio_postgres::Error> {
    let conn_str = format!(
        "host={} port={} user='{user}' password='{password}' dbname='{db}'",
        addr.ip(),
        addr.port()
    );
    let (client, connection) = tokio_postgres::connect(&conn_str, tokio_postgres::NoTls).await?;
    tokio::spawn(async move {
        let _ = connection.await;
    });
    Ok(client)
}

pub async fn proxy_client(demo: &Demo) -> tokio_postgres::Client {
    connect(demo.proxy, USER, PASSWORD, DATABASE)
        .await
        .expect("connect through the proxy")
}

pub async fn backend_client(demo: &Demo, i: usize) -> tokio_postgres::Client {
    let addr: SocketAddr = format!("127.0.0.1:{}", demo.backends[i].1)
        .parse()
        .expect("addr");
    connect(addr, USER, PASSWORD, DATABASE)
        .await
        .expect("connect to a backend directly")
}

/// Runs a PostgreSQL client program (psql, pgbench) against `addr`.
pub fn pg_tool(tool: &str, addr: SocketAddr, args: &[&str]) -> Output {
    Command::new(bin_dir().join(tool))
        .args([
            "-h",
            &addr.ip().to_string(),
            "-p",
            &addr.port().to_string(),
            "-U",
            USER,
        ])
        .args(args)
        .env("PGPASSWORD", PASSWORD)
        .output()
        .unwrap_or_else(|e| panic!("run {tool}: {e}"))
}

/// Polls `check` until it returns true or `timeout` passes.
pub async fn wait_until<F, Fut>(timeout: Duration, mut check: F) -> bool
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let deadline = Instant::now() + timeout;
    loop {
        if check().await {
            return true;
        }
        if Instant::now() > deadline {
            return false;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// A plain HTTP/1.0 GET; returns the body.
pub async fn http_get(addr: SocketAddr, path: &str) -> String {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut stream = tokio::net::TcpStream::connect(addr)
        .await
        .expect("connect to the HTTP API");
    let request = format!("GET {path} HTTP/1.0\r\nHost: {addr}\r\n\r\n");
    stream
        .write_all(request.as_bytes())
        .await
        .expect("send request");
    let mut response = String::new();
    stream
        .read_to_string(&mut response)
        .await
        .expect("read response");
    assert!(
        response.starts_with("HTTP/1.0 200") || response.starts_with("HTTP/1.1 200"),
        "{response}"
    );
    response
        .split_once("\r\n\r\n")
        .map(|(_, body)| body.to_string())
        .unwrap_or_default()
}

/// Runs a query that returns one int4 value and returns it.
pub async fn one_i32<T>(
    client: &tokio_postgres::Client,
    statement: &T,
    params: &[&(dyn tokio_postgres::types::ToSql + Sync)],
) -> i32
where
    T: ?Sized + tokio_postgres::ToStatement,
{
    let row = client.query_one(statement, params).await.expect("query");
    row.get(0)
}
