//! pgshard's key -> vshard equals PostgreSQL's hash partitioning with modulus 1000,
//! checked on a real backend with `satisfies_hash_partition` for random keys of every
//! key type.

mod common;

use pgshard::router::hash::Key;
use rand::Rng;

const VSHARDS: u32 = 1000;
const KEYS: usize = 10_000;

/// How many of `keys` (cast from text to `sql_type`) are NOT in the hash partition
/// with remainder `vshards[i]` of a table partitioned by a `sql_type` column.
async fn mismatches(
    backend: &tokio_postgres::Client,
    sql_type: &str,
    keys: &[String],
    vshards: &[i32],
) -> i64 {
    let table = format!("hash_check_{sql_type}");
    backend
        .batch_execute(&format!(
            "DROP TABLE IF EXISTS {table}; CREATE TABLE {table} (k {sql_type}) PARTITION BY HASH (k)"
        ))
        .await
        .unwrap();
    let q = format!(
        "SELECT count(*) FILTER (WHERE NOT satisfies_hash_partition('{table}'::regclass, {VSHARDS}, v, k::{sql_type})), count(*) \
         FROM unnest($1::text[], $2::int4[]) AS t(k, v)"
    );
    let row = backend.query_one(&q, &[&keys, &vshards]).await.unwrap();
    let checked: i64 = row.get(1);
    assert_eq!(
        checked,
        keys.len() as i64,
        "{sql_type}: keys lost on the way"
    );
    backend
        .batch_execute(&format!("DROP TABLE {table}"))
        .await
        .unwrap();
    row.get(0)
}

fn vshards_of(keys: impl Iterator<Item = Key>) -> Vec<i32> {
    keys.map(|k| k.vshard(VSHARDS) as i32).collect()
}

fn random_text(rng: &mut impl Rng) -> String {
    let len = rng.gen_range(0..40);
    // Mostly ASCII, some multi-byte characters; never NUL (text cannot hold it).
    (0..len)
        .map(|_| match rng.gen_range(0..10) {
            0 => char::from_u32(rng.gen_range(0x80..0xD7FF)).unwrap_or('é'),
            _ => char::from(rng.gen_range(1u8..0x7F)),
        })
        .collect()
}

#[tokio::test]
async fn vshards_match_hash_partitioning_on_a_real_backend() {
    let demo = common::demo(1, 4);
    let backend = common::backend_client(demo, 0).await;
    let mut rng = rand::thread_rng();

    let mut ints: Vec<i64> = (0..KEYS).map(|_| rng.gen()).collect();
    ints.extend([0, 1, -1, 42, i64::MIN, i64::MAX, 5_000_000_000]);
    let keys: Vec<String> = ints.iter().map(i64::to_string).collect();
    let vshards = vshards_of(ints.iter().map(|&k| Key::Int(k)));
    assert_eq!(mismatches(&backend, "int8", &keys, &vshards).await, 0);

    // int4 and int2 columns hash like int8 for the same value.
    let small: Vec<i64> = (0..KEYS)
        .map(|_| i64::from(rng.gen::<i32>()))
        .chain([i64::from(i32::MIN), i64::from(i32::MAX), -7])
        .collect();
    let keys: Vec<String> = small.iter().map(i64::to_string).collect();
    let vshards = vshards_of(small.iter().map(|&k| Key::Int(k)));
    assert_eq!(mismatches(&backend, "int4", &keys, &vshards).await, 0);
    let tiny: Vec<i64> = (0..1000).map(|_| i64::from(rng.gen::<i16>())).collect();
    let keys: Vec<String> = tiny.iter().map(i64::to_string).collect();
    let vshards = vshards_of(tiny.iter().map(|&k| Key::Int(k)));
    assert_eq!(mismatches(&backend, "int2", &keys, &vshards).await, 0);

    let mut texts: Vec<String> = (0..KEYS).map(|_| random_text(&mut rng)).collect();
    texts.extend(["", "abc", "the quick brown fox jumps", "user_42"].map(String::from));
    let vshards = vshards_of(texts.iter().map(|t| Key::Text(t.as_bytes().to_vec())));
    assert_eq!(mismatches(&backend, "text", &texts, &vshards).await, 0);
    assert_eq!(mismatches(&backend, "varchar", &texts, &vshards).await, 0);

    let uuids: Vec<[u8; 16]> = (0..KEYS).map(|_| rng.gen()).collect();
    let keys: Vec<String> = uuids.iter().map(uuid_text).collect();
    let vshards = vshards_of(uuids.iter().map(|&u| Key::Uuid(u)));
    assert_eq!(mismatches(&backend, "uuid", &keys, &vshards).await, 0);
}

fn uuid_text(bytes: &[u8; 16]) -> String {
    let hex: String = bytes.iter().map(|b| format!("{b:02x}")).collect();
    format!(
        "{}-{}-{}-{}-{}",
        &hex[0..8],
        &hex[8..12],
        &hex[12..16],
        &hex[16..20],
        &hex[20..32]
    )
}
