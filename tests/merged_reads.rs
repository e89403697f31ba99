//! Keyless reads merged across four backends, checked against what PostgreSQL
//! itself answers for the same rows in one table on one backend: the extended
//! protocol (binary and text results, parameters in both formats), in and out of
//! transactions; avg with PostgreSQL's types and scales; text ordered by its
//! collation (the database default, an ICU collation, "C"); dates in text.

mod common;

use common::{demo, raw, Demo};
use tokio_postgres::types::{FromSql, Type};
use tokio_postgres::{Client, SimpleQueryMessage};

const BACKENDS: usize = 4;
const ROWS: i32 = 120;
/// The sharded table (pgbench_history is sharded by aid in the demo's map) and
/// the same rows in one table on backend 0.
const SHARDED: &str = "pgbench_history";
const EXPECT: &str = "merged_expect";
const COLUMNS: &str = "aid int, grp int, qty int, big int8, price numeric, score float8, \
    name text, label text COLLATE \"und-x-icu\", day date";
const TRUST_APP: &str = "[[users]]\nname = \"app\"\nauth = \"trust\"\n";

fn cluster() -> &'static Demo {
    demo(BACKENDS, 4)
}

/// The tests share the table; they take turns.
static SERIAL: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

fn values() -> String {
    let names = [
        "apple", "Banana", "cherry", "Apple", "banana", "Éclair", "éclair", "zeta", "Zeta", "ß",
    ];
    let rows: Vec<String> = (1..=ROWS)
        .map(|aid| {
            let name = if aid % 11 == 0 {
                "NULL".to_string()
            } else {
                format!("'{}'", names[aid as usize % names.len()])
            };
            let qty = if aid % 13 == 0 {
                "NULL".to_string()
            } else {
                (aid % 7 - 3).to_string()
            };
            let price = format!("{aid}.{}", "5".repeat(aid as usize % 4));
            let day = if aid % 17 == 0 {
                "NULL".to_string()
            } else {
                format!("date '2023-12-25' + {}", (aid * 37) % 400)
            };
            format!(
                "({aid}, {}, {qty}, {}, {price}, {}, {name}, {name}, {day})",
                aid % 5,
                i64::from(aid) * 1_000_000_000_007,
                f64::from(aid) * 0.25,
            )
        })
        .collect();
    rows.join(", ")
}

/// The sharded table through the proxy, and the expected one on backend 0.
async fn tables(proxy: &Client, direct: &Client) {
    for (client, table) in [(proxy, SHARDED), (direct, EXPECT)] {
        client
            .batch_execute(&format!(
                "DROP TABLE IF EXISTS {table}; CREATE TABLE {table} ({COLUMNS})"
            ))
            .await
            .unwrap();
        client
            .batch_execute(&format!(
                "INSERT INTO {table} (aid, grp, qty, big, price, score, name, label, day) \
                 VALUES {}",
                values()
            ))
            .await
            .unwrap();
    }
}

async fn setup() -> (Client, Client) {
    let proxy = common::proxy_client(cluster()).await;
    let direct = common::backend_client(cluster(), 0).await;
    tables(&proxy, &direct).await;
    (proxy, direct)
}

type Table = Vec<Vec<Option<String>>>;

async fn simple(client: &Client, sql: &str) -> Result<Table, tokio_postgres::Error> {
    let replies = client.simple_query(sql).await?;
    Ok(replies
        .iter()
        .filter_map(|m| match m {
            SimpleQueryMessage::Row(r) => {
                Some((0..r.len()).map(|i| r.get(i).map(str::to_owned)).collect())
            }
            _ => None,
        })
        .collect())
}

/// A value in whatever binary form the server sent it.
#[derive(Debug, PartialEq)]
struct Raw(Option<Vec<u8>>);

impl<'a> FromSql<'a> for Raw {
    fn from_sql(_: &Type, raw: &'a [u8]) -> Result<Self, Box<dyn std::error::Error + Sync + Send>> {
        Ok(Raw(Some(raw.to_vec())))
    }

    fn from_sql_null(_: &Type) -> Result<Self, Box<dyn std::error::Error + Sync + Send>> {
        Ok(Raw(None))
    }

    fn accepts(_: &Type) -> bool {
        true
    }
}

type Params<'a> = &'a [&'a (dyn tokio_postgres::types::ToSql + Sync)];

/// Column types and binary values of an extended-protocol query.
async fn extended(
    client: &Client,
    sql: &str,
    params: Params<'_>,
) -> Result<(Vec<Type>, Vec<Vec<Raw>>), tokio_postgres::Error> {
    let statement = client.prepare(sql).await?;
    let rows = client.query(&statement, params).await?;
    let types = statement
        .columns()
        .iter()
        .map(|c| c.type_().clone())
        .collect();
    let values = rows
        .iter()
        .map(|r| (0..r.len()).map(|i| r.get::<_, Raw>(i)).collect())
        .collect();
    Ok((types, values))
}

fn expected(sql: &str) -> String {
    sql.replace(SHARDED, EXPECT)
}

/// The same answer through the proxy (simple and extended protocol) as from one
/// table holding every row; `sorted`: rows compared in any order.
async fn same(proxy: &Client, direct: &Client, sql: &str, params: Params<'_>, sorted: bool) {
    let (mut got, mut want) = (
        extended(proxy, sql, params)
            .await
            .unwrap_or_else(|e| panic!("{sql}: {e}")),
        extended(direct, &expected(sql), params).await.unwrap(),
    );
    if sorted {
        got.1
            .sort_by(|a, b| format!("{a:?}").cmp(&format!("{b:?}")));
        want.1
            .sort_by(|a, b| format!("{a:?}").cmp(&format!("{b:?}")));
    }
    assert_eq!(got, want, "extended: {sql}");
    if params.is_empty() {
        let (mut got, mut want) = (
            simple(proxy, sql).await.unwrap(),
            simple(direct, &expected(sql)).await.unwrap(),
        );
        if sorted {
            got.sort();
            want.sort();
        }
        assert!(!want.is_empty(), "{sql}: no rows to compare");
        assert_eq!(got, want, "simple: {sql}");
    }
}

fn code(err: &tokio_postgres::Error) -> Option<&str> {
    err.code().map(|c| c.code())
}

#[tokio::test]
async fn keyless_reads_merge_in_the_extended_protocol() {
    let _turn = SERIAL.lock().await;
    let (proxy, direct) = setup().await;
    // tokio-postgres asks for binary results and sends binary parameters.
    let row = proxy
        .query_one("SELECT count(*) FROM pgbench_history", &[])
        .await
        .unwrap();
    assert_eq!(row.get::<_, i64>(0), i64::from(ROWS));
    let grp = 2i32;
    for (sql, sorted) in [
        ("SELECT count(*), sum(qty), min(qty), max(score), sum(big), sum(price) FROM pgbench_history WHERE grp = $1", false),
        ("SELECT grp, count(*), sum(price), min(day), max(day) FROM pgbench_history WHERE grp <> $1 GROUP BY grp", true),
        ("SELECT aid, qty FROM pgbench_history WHERE grp = $1", true),
        ("SELECT DISTINCT qty FROM pgbench_history WHERE grp <> $1 ORDER BY qty DESC NULLS LAST", false),
        ("SELECT aid, day FROM pgbench_history WHERE grp = $1 ORDER BY day, aid DESC", false),
    ] {
        same(&proxy, &direct, sql, &[&grp], sorted).await;
    }
    // LIMIT and OFFSET as parameters (the backends get LIMIT limit + offset).
    let sql = "SELECT aid, qty FROM pgbench_history ORDER BY qty DESC, aid LIMIT $1 OFFSET $2";
    for (limit, offset) in [(5i64, 3i64), (200, 0), (0, 1), (3, 118)] {
        same(&proxy, &direct, sql, &[&limit, &offset], false).await;
    }
    let sql = "SELECT grp, count(*) FROM pgbench_history GROUP BY grp ORDER BY 2 DESC, 1 LIMIT $1";
    same(&proxy, &direct, sql, &[&2i64], false).await;
    // Keys on several backends: their backends only, merged the same way.
    let keys = "aid IN (1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12)";
    for (sql, sorted) in [
        (format!("SELECT count(*), max(name), avg(price) FROM pgbench_history WHERE {keys}"), false),
        (format!("SELECT aid, name FROM pgbench_history WHERE {keys} ORDER BY name DESC, aid LIMIT 4"), false),
        (format!("SELECT aid FROM pgbench_history WHERE {keys}"), true),
    ] {
        same(&proxy, &direct, &sql, &[], sorted).await;
    }
    let (a, b, c) = (3i32, 4i32, 5i32);
    same(
        &proxy,
        &direct,
        "SELECT sum(qty), min(label) FROM pgbench_history WHERE aid IN ($1, $2, $3)",
        &[&a, &b, &c],
        false,
    )
    .await;

    // In a transaction: a keyless read first (the deferred BEGIN goes to every
    // backend), then after a keyed write it sees the transaction's own change.
    let mut proxy = proxy;
    let before: i64 = proxy
        .query_one("SELECT sum(qty) FROM pgbench_history", &[])
        .await
        .unwrap()
        .get(0);
    let tx = proxy.transaction().await.unwrap();
    let in_tx: i64 = tx
        .query_one(
            "SELECT sum(qty) FROM pgbench_history WHERE grp >= $1",
            &[&0i32],
        )
        .await
        .unwrap()
        .get(0);
    assert_eq!(in_tx, before);
    tx.execute(
        "UPDATE pgbench_history SET qty = qty + 100 WHERE aid = $1",
        &[&7i32],
    )
    .await
    .unwrap();
    // A read on the backends of its keys, in the transaction, sees it too.
    let keyed: i64 = tx
        .query_one(
            "SELECT sum(qty) FROM pgbench_history WHERE aid IN (7, 8, 9, 10, 11)",
            &[],
        )
        .await
        .unwrap()
        .get(0);
    let simple_keyed = simple(
        tx.client(),
        "SELECT sum(qty) FROM pgbench_history WHERE aid IN (7, 8, 9, 10, 11)",
    )
    .await
    .unwrap();
    assert_eq!(simple_keyed, vec![vec![Some(keyed.to_string())]]);
    let want: i64 = direct
        .query_one(
            "SELECT sum(qty) FROM merged_expect WHERE aid IN (7, 8, 9, 10, 11)",
            &[],
        )
        .await
        .unwrap()
        .get(0);
    assert_eq!(keyed, want + 100);
    let after: i64 = tx
        .query_one("SELECT sum(qty) FROM pgbench_history", &[])
        .await
        .unwrap()
        .get(0);
    assert_eq!(after, before + 100);
    // A keyless write in the extended protocol runs on every backend of the
    // transaction; ROLLBACK undoes both.
    let updated = tx
        .execute(
            "UPDATE pgbench_history SET qty = qty + 1 WHERE grp = $1",
            &[&1i32],
        )
        .await
        .unwrap();
    let want = direct
        .query_one("SELECT count(*) FROM merged_expect WHERE grp = 1", &[])
        .await
        .unwrap()
        .get::<_, i64>(0);
    assert_eq!(updated, want as u64);
    tx.rollback().await.unwrap();
    let rolled_back: i64 = proxy
        .query_one("SELECT sum(qty) FROM pgbench_history", &[])
        .await
        .unwrap()
        .get(0);
    assert_eq!(rolled_back, before);
    // Committed, it holds on every backend.
    let tx = proxy.transaction().await.unwrap();
    tx.execute(
        "UPDATE pgbench_history SET qty = qty + 1 WHERE grp = $1",
        &[&1i32],
    )
    .await
    .unwrap();
    tx.commit().await.unwrap();
    let committed: i64 = proxy
        .query_one("SELECT sum(qty) FROM pgbench_history", &[])
        .await
        .unwrap()
        .get(0);
    let ones = direct
        .query_one("SELECT count(qty) FROM merged_expect WHERE grp = 1", &[])
        .await
        .unwrap()
        .get::<_, i64>(0);
    assert_eq!(committed, before + ones);
}

#[tokio::test]
async fn avg_is_summed_counted_and_divided_as_postgres_does() {
    let _turn = SERIAL.lock().await;
    let (proxy, direct) = setup().await;
    for (sql, sorted) in [
        ("SELECT avg(qty), avg(big), avg(price), avg(score), count(*) FROM pgbench_history", false),
        ("SELECT grp, avg(qty) AS a, avg(price) FROM pgbench_history GROUP BY grp ORDER BY a DESC, grp", false),
        ("SELECT avg(price / 3) AS third, min(price) FROM pgbench_history", false),
        ("SELECT grp, avg(score) FROM pgbench_history GROUP BY grp", true),
        ("SELECT avg(qty), avg(price) FROM pgbench_history WHERE aid < 0", false),
        ("SELECT avg(aid::numeric(10, 5)) FROM pgbench_history WHERE aid % 3 = 0", false),
    ] {
        same(&proxy, &direct, sql, &[], sorted).await;
    }
    let threshold = 2i32;
    same(
        &proxy,
        &direct,
        "SELECT grp, avg(qty) FROM pgbench_history WHERE qty < $1 GROUP BY grp ORDER BY grp",
        &[&threshold],
        false,
    )
    .await;
    // A sum of reals is not how PostgreSQL averages them: refused, with the way out.
    let err = proxy
        .simple_query("SELECT avg(score::real) FROM pgbench_history")
        .await
        .unwrap_err();
    assert_eq!(code(&err), Some("0A000"), "{err}");
    let message = err.as_db_error().map(|e| e.message().to_owned());
    assert!(message.unwrap_or_default().contains("float8"), "{err:?}");
    same(
        &proxy,
        &direct,
        "SELECT avg(score::real::float8) FROM pgbench_history",
        &[],
        false,
    )
    .await;
}

#[tokio::test]
async fn text_is_ordered_by_its_collation() {
    let _turn = SERIAL.lock().await;
    let (proxy, direct) = setup().await;
    for sql in [
        // The database's default collation, an ICU collation, and "C".
        "SELECT name, aid FROM pgbench_history ORDER BY name, aid LIMIT 12 OFFSET 3",
        "SELECT label, aid FROM pgbench_history ORDER BY label DESC NULLS LAST, aid",
        "SELECT label, aid FROM pgbench_history ORDER BY label COLLATE \"C\", aid",
        "SELECT min(label), max(label), min(name), max(name) FROM pgbench_history",
        "SELECT grp, min(label), max(label) FROM pgbench_history GROUP BY grp ORDER BY grp",
        "SELECT DISTINCT label FROM pgbench_history ORDER BY label",
        "SELECT label, count(*) FROM pgbench_history GROUP BY label ORDER BY label NULLS FIRST",
    ] {
        same(&proxy, &direct, sql, &[], false).await;
    }
    // ICU's order is not the bytes' order: the proxy really used the collation.
    let icu = simple(
        &proxy,
        "SELECT DISTINCT label FROM pgbench_history ORDER BY label",
    )
    .await
    .unwrap();
    let mut bytewise = icu.clone();
    bytewise.sort();
    assert_ne!(icu, bytewise);
    let grp = 3i32;
    same(
        &proxy,
        &direct,
        "SELECT label, aid FROM pgbench_history WHERE grp = $1 ORDER BY label, aid LIMIT $2",
        &[&grp, &5i64],
        false,
    )
    .await;

    // Dates in text follow the session's DateStyle: a backend orders them.
    for client in [&proxy, &direct] {
        client
            .batch_execute("SET DateStyle = 'SQL, DMY'")
            .await
            .unwrap();
    }
    for sql in [
        "SELECT min(day), max(day) FROM pgbench_history",
        "SELECT day, aid FROM pgbench_history ORDER BY day DESC, aid LIMIT 7",
    ] {
        same(&proxy, &direct, sql, &[], false).await;
    }
}

/// Raw-protocol batches: text parameters and results, a Describe of the
/// statement inside the batch, and what is refused keeps the session in step.
#[tokio::test]
async fn raw_batches_in_text_and_their_refusals() {
    let _turn = SERIAL.lock().await;
    let (_proxy, direct) = setup().await;
    let app = common::start_proxy(cluster(), "merged-raw", TRUST_APP);
    let mut client = common::RawClient::login(app.addr, "app").await;
    let tags =
        |replies: &[(u8, Vec<u8>)]| -> String { replies.iter().map(|(t, _)| *t as char).collect() };
    let texts = |replies: &[(u8, Vec<u8>)]| -> Vec<String> {
        replies
            .iter()
            .filter(|(t, _)| *t == b'D')
            .map(|(_, row)| String::from_utf8_lossy(row).into_owned())
            .collect()
    };
    let sql = "SELECT grp, avg(price), max(label) FROM pgbench_history WHERE qty >= $1 \
               GROUP BY grp ORDER BY grp";
    client
        .send(&raw::batch(&[
            raw::parse("", sql),
            raw::bind_text("", &["0"]),
            raw::describe_portal(),
            raw::execute(),
            raw::sync(),
        ]))
        .await;
    let replies = client.until_ready().await;
    assert_eq!(&tags(&replies)[..3], "12T", "{replies:?}");
    assert!(tags(&replies).ends_with("CZ"));
    let want = direct
        .simple_query(&expected(&sql.replace("$1", "0")))
        .await
        .unwrap();
    let want_rows = want
        .iter()
        .filter(|m| matches!(m, SimpleQueryMessage::Row(_)))
        .count();
    assert_eq!(texts(&replies).len(), want_rows);
    let first = simple(&direct, &expected(&sql.replace("$1", "0")))
        .await
        .unwrap();
    assert_eq!(common::first_value(&replies), first[0][0]);

    // A named statement described inside the batch: the client sees the
    // statement's own description (avg is numeric).
    client
        .send(&raw::batch(&[raw::parse("avg", sql), raw::sync()]))
        .await;
    assert_eq!(tags(&client.until_ready().await), "1Z");
    client
        .send(&raw::batch(&[
            raw::bind_text("avg", &["1"]),
            common::message(b'D', b"Savg\0"),
            raw::execute(),
            raw::sync(),
        ]))
        .await;
    let replies = client.until_ready().await;
    assert_eq!(&tags(&replies)[..3], "2tT", "{replies:?}");
    let description = &replies[2].1;
    assert!(description.windows(4).any(|w| w == 1700i32.to_be_bytes()));

    // A row-limited Execute cannot be merged: refused, and the session goes on.
    let mut limited = vec![0u8];
    limited.extend_from_slice(&5i32.to_be_bytes());
    client
        .send(&raw::batch(&[
            raw::parse("", "SELECT aid FROM pgbench_history ORDER BY aid"),
            raw::bind(""),
            common::message(b'E', &limited),
            raw::sync(),
        ]))
        .await;
    let replies = client.until_ready().await;
    assert!(tags(&replies).contains('E'), "{replies:?}");
    assert_eq!(replies.last().map(|(_, p)| p[0]), Some(b'I'));
    client
        .send(&raw::query("SELECT count(*) FROM pgbench_history"))
        .await;
    let replies = client.until_ready().await;
    assert_eq!(common::first_value(&replies), Some(ROWS.to_string()));
    // Shapes that cannot be merged stay refused in the extended protocol too.
    client
        .send(&raw::batch(&[
            raw::parse(
                "",
                "SELECT grp, count(*) FROM pgbench_history GROUP BY grp HAVING count(*) > $1",
            ),
            raw::bind_text("", &["1"]),
            raw::execute(),
            raw::sync(),
        ]))
        .await;
    let replies = client.until_ready().await;
    let error = replies.iter().find(|(t, _)| *t == b'E').expect("an error");
    assert!(
        String::from_utf8_lossy(&error.1).contains("0A000"),
        "{replies:?}"
    );
}
