//! Logins (SCRAM, md5, trust) and per-client session state under transaction pooling,
//! through `pgshard run` processes of the tests' own over the demo's backend.

mod common;

use common::{connect, demo, start_proxy, Demo};

fn shared() -> &'static Demo {
    demo(1, 4)
}

/// A proxy with one server connection: every client runs on the very same backend
/// session, so anything that leaked would show.
const ONE_SERVER: &str = "pool_size = 1\n[[users]]\nname = \"app\"\nauth = \"trust\"\n";

async fn app_client(proxy: &common::Proxy) -> tokio_postgres::Client {
    connect(proxy.addr, "app", "", common::DATABASE)
        .await
        .expect("connect as app")
}

fn code(err: &tokio_postgres::Error) -> Option<&str> {
    err.code().map(|c| c.code())
}

async fn show(client: &tokio_postgres::Client, name: &str) -> String {
    client
        .query_one(&format!("SHOW {name}"), &[])
        .await
        .unwrap()
        .get(0)
}

const USERS: &str = r#"
[[users]]
name = "alice"
password = "alice-secret"
auth = "scram-sha-256"

[[users]]
name = "bob"
password = "bob-secret"
auth = "md5"

"#;

#[tokio::test]
async fn scram_and_md5_logins_check_the_password() {
    let demo = shared();
    let proxy = start_proxy(demo, "logins", USERS);
    let db = common::DATABASE;
    for (user, password) in [("alice", "alice-secret"), ("bob", "bob-secret")] {
        let client = connect(proxy.addr, user, password, db)
            .await
            .unwrap_or_else(|e| panic!("{user}: {e}"));
        let row = client.query_one("SELECT 1", &[]).await.unwrap();
        assert_eq!(row.get::<_, i32>(0), 1);
        let err = connect(proxy.addr, user, "wrong", db).await.unwrap_err();
        assert_eq!(
            code(&err),
            Some("28P01"),
            "{user} with a wrong password: {err}"
        );
    }
    let err = connect(proxy.addr, "mallory", "anything", db)
        .await
        .unwrap_err();
    assert_eq!(code(&err), Some("28P01"), "unknown user: {err}");
    // Not an admin: the console refuses.
    let err = connect(proxy.addr, "alice", "alice-secret", "pgshard")
        .await
        .unwrap_err();
    assert_eq!(code(&err), Some("28P01"), "{err}");
}

#[tokio::test]
async fn stored_md5_secret_verifies_logins() {
    let demo = shared();
    // Compute PostgreSQL's stored form the way PostgreSQL does: md5(password || user).
    let stored = format!("md5{:x}", md5_digest(b"carol-secretcarol"));
    let users = format!("[[users]]\nname = \"carol\"\npassword = \"{stored}\"\nauth = \"md5\"\n");
    let proxy = start_proxy(demo, "stored-md5", &users);
    let client = connect(proxy.addr, "carol", "carol-secret", common::DATABASE)
        .await
        .unwrap();
    assert_eq!(common::one_i32(&client, "SELECT 2", &[]).await, 2);
    let err = connect(proxy.addr, "carol", "nope", common::DATABASE)
        .await
        .unwrap_err();
    assert_eq!(code(&err), Some("28P01"));
}

fn md5_digest(data: &[u8]) -> u128 {
    let out = std::process::Command::new("md5sum")
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .spawn()
        .and_then(|mut child| {
            use std::io::Write;
            child.stdin.take().expect("stdin").write_all(data)?;
            child.wait_with_output()
        })
        .expect("md5sum");
    let hex = String::from_utf8(out.stdout).unwrap();
    u128::from_str_radix(hex.split_whitespace().next().unwrap(), 16).unwrap()
}

#[tokio::test]
async fn session_parameters_never_leak_between_clients() {
    let demo = shared();
    let proxy = start_proxy(demo, "one-server", ONE_SERVER);
    let a = app_client(&proxy).await;
    let b = app_client(&proxy).await;
    let default_timeout = show(&b, "statement_timeout").await;
    let default_work_mem = show(&b, "work_mem").await;
    a.batch_execute("SET statement_timeout = '1234ms'")
        .await
        .unwrap();
    assert_eq!(show(&a, "statement_timeout").await, "1234ms");
    assert_eq!(show(&b, "statement_timeout").await, default_timeout);
    assert_eq!(show(&a, "statement_timeout").await, "1234ms");
    // A SET rolled back with its transaction is gone, for the client that made it too.
    b.batch_execute("BEGIN; SET work_mem = '2MB'; ROLLBACK")
        .await
        .unwrap();
    assert_eq!(show(&b, "work_mem").await, default_work_mem);
    // A committed one stays, for its client only.
    b.batch_execute("BEGIN; SET work_mem = '3MB'; COMMIT")
        .await
        .unwrap();
    assert_eq!(show(&b, "work_mem").await, "3MB");
    assert_eq!(show(&a, "work_mem").await, default_work_mem);
    // A failed SET changes nothing.
    assert!(a.batch_execute("SET work_mem = 'lots'").await.is_err());
    assert_eq!(show(&a, "work_mem").await, default_work_mem);
    a.batch_execute("RESET statement_timeout").await.unwrap();
    assert_eq!(show(&a, "statement_timeout").await, default_timeout);
    assert_eq!(show(&b, "work_mem").await, "3MB");
    // Startup parameters belong to their client as well.
    let conn = format!(
        "host=127.0.0.1 port={} user=app dbname=postgres options='-c search_path=pg_catalog'",
        proxy.addr.port()
    );
    let (c, connection) = tokio_postgres::connect(&conn, tokio_postgres::NoTls)
        .await
        .unwrap();
    tokio::spawn(connection);
    assert_eq!(show(&c, "search_path").await, "pg_catalog");
    assert_eq!(show(&a, "search_path").await, "\"$user\", public");
}

#[tokio::test]
async fn session_pooling_keeps_one_server_per_client() {
    let demo = shared();
    let users =
        "pool_mode = \"session\"\npool_size = 2\n[[users]]\nname = \"app\"\nauth = \"trust\"\n";
    let proxy = start_proxy(demo, "session-mode", users);
    let a = app_client(&proxy).await;
    let first = backend_pid(&a).await;
    let b = app_client(&proxy).await;
    let other = backend_pid(&b).await;
    assert_ne!(first, other);
    for _ in 0..5 {
        assert_eq!(backend_pid(&a).await, first);
    }
}

async fn backend_pid(client: &tokio_postgres::Client) -> i32 {
    client
        .query_one("SELECT pg_backend_pid()", &[])
        .await
        .unwrap()
        .get(0)
}

fn parse(name: &str, sql: &str) -> Vec<u8> {
    let mut payload = format!("{name}\0{sql}\0").into_bytes();
    payload.extend_from_slice(&[0, 0]);
    common::message(b'P', &payload)
}

fn bind_execute_sync(statement: &str) -> Vec<u8> {
    let mut payload = format!("\0{statement}\0").into_bytes();
    payload.extend_from_slice(&[0, 0, 0, 0, 0, 0]); // no formats, no parameters, no result formats
    let mut out = common::message(b'B', &payload);
    out.extend(common::message(b'E', b"\0\0\0\0\0"));
    out.extend(common::message(b'S', b""));
    out
}

#[tokio::test]
async fn unnamed_statement_follows_its_client_across_server_connections() {
    let demo = shared();
    let proxy = start_proxy(demo, "unnamed", ONE_SERVER);
    let mut a = common::RawClient::login(proxy.addr, "app").await;
    let mut b = common::RawClient::login(proxy.addr, "app").await;
    a.send(&[parse("", "SELECT 42"), common::message(b'S', b"")].concat())
        .await;
    a.until_ready().await;
    // B replaces the unnamed statement on the one server connection.
    b.send(&[parse("", "SELECT 7"), common::message(b'S', b"")].concat())
        .await;
    b.until_ready().await;
    a.send(&bind_execute_sync("")).await;
    assert_eq!(
        common::first_value(&a.until_ready().await).as_deref(),
        Some("42")
    );
    b.send(&bind_execute_sync("")).await;
    assert_eq!(
        common::first_value(&b.until_ready().await).as_deref(),
        Some("7")
    );
}

#[tokio::test]
async fn special_set_forms_and_set_config_do_not_leak() {
    let demo = shared();
    let proxy = start_proxy(demo, "set-forms", ONE_SERVER);
    let a = app_client(&proxy).await;
    let b = app_client(&proxy).await;
    let default_zone = show(&b, "TimeZone").await;
    let default_path = show(&b, "search_path").await;
    a.batch_execute("SET TIME ZONE 'Pacific/Auckland'")
        .await
        .unwrap();
    assert_eq!(show(&a, "TimeZone").await, "Pacific/Auckland");
    assert_eq!(show(&b, "TimeZone").await, default_zone);
    assert_eq!(show(&a, "TimeZone").await, "Pacific/Auckland");
    a.batch_execute("SET SCHEMA 'pg_catalog'").await.unwrap();
    assert_eq!(show(&b, "search_path").await, default_path);
    assert_eq!(show(&a, "search_path").await, "pg_catalog");
    // set_config cannot be replayed: it is dropped after its transaction, and
    // never seen by anyone else.
    a.batch_execute("SELECT set_config('work_mem', '7MB', false)")
        .await
        .unwrap();
    assert_ne!(show(&b, "work_mem").await, "7MB");
}

#[tokio::test]
async fn parameters_a_server_refuses_are_reported_and_reset() {
    let demo = shared();
    let proxy = start_proxy(demo, "bad-params", ONE_SERVER);
    let conn = format!(
        "host=127.0.0.1 port={} user=app dbname=postgres options='-c work_mem=lots'",
        proxy.addr.port()
    );
    let (client, connection) = tokio_postgres::connect(&conn, tokio_postgres::NoTls)
        .await
        .unwrap();
    tokio::spawn(connection);
    let err = client.simple_query("SELECT 1").await.unwrap_err();
    assert_eq!(code(&err), Some("55000"), "{err:?}");
    // The client goes on with default settings.
    assert_eq!(common::one_i32(&client, "SELECT 1", &[]).await, 1);
}

#[tokio::test]
async fn failed_discard_all_keeps_prepared_statements_working() {
    let demo = shared();
    let proxy = start_proxy(demo, "discard", ONE_SERVER);
    let client = app_client(&proxy).await;
    let statement = client.prepare("SELECT $1::int4 * 2").await.unwrap();
    assert_eq!(common::one_i32(&client, &statement, &[&21i32]).await, 42);
    // DISCARD ALL cannot run in a transaction: nothing is discarded.
    let err = client
        .batch_execute("BEGIN; DISCARD ALL")
        .await
        .unwrap_err();
    assert_eq!(code(&err), Some("25001"), "{err:?}");
    client.batch_execute("ROLLBACK").await.unwrap();
    assert_eq!(common::one_i32(&client, &statement, &[&4i32]).await, 8);
    // A DISCARD ALL that runs drops the server's statements; they come back on use.
    client.batch_execute("DISCARD ALL").await.unwrap();
    assert_eq!(common::one_i32(&client, &statement, &[&5i32]).await, 10);
}

/// The proxy logs in to backends with md5 and with trust too, not only SCRAM.
#[tokio::test]
async fn proxy_logs_in_to_backends_with_md5_and_trust() {
    let demo = shared();
    let admin = common::backend_client(demo, 0).await;
    admin
        .batch_execute(
            "DROP ROLE IF EXISTS md5_user; DROP ROLE IF EXISTS trust_user;
             SET password_encryption = 'md5';
             CREATE ROLE md5_user LOGIN PASSWORD 'md5-pw';
             CREATE ROLE trust_user LOGIN;",
        )
        .await
        .unwrap();
    // pg_hba.conf is read top down: these lines win for these two users only.
    let hba = demo.dir.join("b0").join("pg_hba.conf");
    let old = std::fs::read_to_string(&hba).unwrap();
    let lines = "host all md5_user 127.0.0.1/32 md5\nhost all trust_user 127.0.0.1/32 trust\n";
    std::fs::write(&hba, format!("{lines}{old}")).unwrap();
    admin
        .query_one("SELECT pg_reload_conf()", &[])
        .await
        .unwrap();
    let row = admin
        .query_one("SELECT count(*) FROM pg_hba_file_rules WHERE 'md5_user' = ANY(user_name) AND auth_method = 'md5'", &[])
        .await
        .unwrap();
    assert_eq!(row.get::<_, i64>(0), 1, "pg_hba.conf reloaded");
    let port = demo.backends[0].1;
    for (user, dsn_user) in [
        ("md5_user", "md5_user:md5-pw"),
        ("trust_user", "trust_user"),
    ] {
        let map = format!(
            "version = 1\ndefault_backend = \"b0\"\n[[backends]]\nname = \"b0\"\n\
             primary = \"postgresql://{dsn_user}@127.0.0.1:{port}/postgres\"\n[assign]\n\"0-999\" = \"b0\"\n"
        );
        let proxy = common::start_proxy_with_map(&format!("backend-{user}"), &map, ONE_SERVER);
        let client = app_client(&proxy).await;
        let who: String = client
            .query_one("SELECT current_user::text", &[])
            .await
            .unwrap()
            .get(0);
        assert_eq!(who, user);
    }
}
