//! Logins (SCRAM, md5, trust) and per-client session state under transaction pooling,
//! through `pgshard run` processes of the tests' own over the demo's backend.

mod common;

use common::{connect, demo, start_proxy, Demo};

fn shared() -> &'static Demo {
    demo(1, 4)
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
    assert_eq!(
        client
            .query_one("SELECT 2", &[])
            .await
            .unwrap()
            .get::<_, i32>(0),
        2
    );
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
    // One server connection: every client runs on the very same backend session.
    let users = "pool_size = 1\n[[users]]\nname = \"app\"\nauth = \"trust\"\n";
    let proxy = start_proxy(demo, "one-server", users);
    let a = connect(proxy.addr, "app", "", common::DATABASE)
        .await
        .unwrap();
    let b = connect(proxy.addr, "app", "", common::DATABASE)
        .await
        .unwrap();
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
    let a = connect(proxy.addr, "app", "", common::DATABASE)
        .await
        .unwrap();
    let first = backend_pid(&a).await;
    let b = connect(proxy.addr, "app", "", common::DATABASE)
        .await
        .unwrap();
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
