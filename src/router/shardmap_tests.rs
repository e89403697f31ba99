//! Tests of the shard map document and its validation.

use super::*;

fn map(assign: &str) -> String {
    format!(
        "version = 3\nvshards = 10\ndefault_backend = \"a\"\n\
             [[backends]]\nname = \"a\"\nprimary = \"postgresql://u:p@h:1/d\"\n\
             [[backends]]\nname = \"b\"\nprimary = \"postgresql://u:p@h:2/d\"\n\
             [assign]\n{assign}"
    )
}

fn check(text: &str, expect: Result<(), &str>) {
    match (ShardMap::parse(text), expect) {
        (Ok(_), Ok(())) => {}
        (Err(e), Err(want)) => assert!(e.to_string().contains(want), "{e} lacks {want:?}"),
        (got, want) => panic!("got {got:?}, want {want:?}"),
    }
}

#[test]
fn validation() {
    check(&map("\"0-4\" = \"a\"\n\"5-9\" = \"b\"\n"), Ok(()));
    check(
        &map("\"0-4\" = \"a\"\n\"4-9\" = \"b\"\n"),
        Err("vshard 4 is assigned twice"),
    );
    check(
        &map("\"0-4\" = \"a\"\n\"6-9\" = \"b\"\n"),
        Err("1 vshards are not assigned, the first is 5"),
    );
    check(&map("\"0-9\" = \"c\"\n"), Err("unknown backend \"c\""));
    check(&map("\"0-10\" = \"a\"\n"), Err("range must lie within 0-9"));
    check(&map("\"x\" = \"a\"\n"), Err("expected a vshard or a range"));
    check("version = ", Err("not valid TOML"));
    check(
        &map("\"0-9\" = \"a\"\n").replace("version = 3", "version = 9223372036854775807"),
        Err("version must be at most 9007199254740992"),
    );
    let text =
        map("\"0-9\" = \"a\"\n").replace("default_backend = \"a\"", "default_backend = \"z\"");
    check(&text, Err("default_backend \"z\" is not a backend"));
    let text = map("\"0-9\" = \"a\"\n").replace("name = \"b\"", "name = \"a\"");
    check(&text, Err("backend \"a\" is listed twice"));
    let table = |t: &str| format!("{}{t}", map("\"0-9\" = \"a\"\n"));
    check(
        &table("[[tables]]\nname = \"t\"\nkey = \"k\"\ntype = \"float8\"\n"),
        Err("table \"t\": type \"float8\" is not a key type"),
    );
    check(
        &table("[[tables]]\nname = \"t\"\nkey = \"\"\n"),
        Err("table \"t\": name and key are required"),
    );
    check(
        &table("[[tables]]\nname = \"t\"\nkey = \"k\"\n[[tables]]\nname = \"T\"\nkey = \"k\"\n"),
        Err("table \"t\" is listed twice"),
    );
    let text = table("[[tables]]\nname = \"t\"\nkey = \"k\"\n")
        .replace("version = 3", "version = 3\nreference_tables = [\"t\"]");
    check(
        &text,
        Err("table \"t\" is both sharded and a reference table"),
    );
}

#[test]
fn reassigned_map_keeps_the_rest() {
    let map = ShardMap::parse(&table_map()).unwrap();
    let moved = map.with_assignment(4, &[(0, 1), (9, 0)]).unwrap();
    assert_eq!(moved.version, 4);
    assert_eq!(moved.assignment, vec![1, 0, 0, 0, 0, 1, 1, 1, 1, 0]);
    assert_eq!(moved.tables, map.tables);
    assert_eq!(moved.tables_id, map.tables_id);
    assert_eq!(moved.backends[1].primary, map.backends[1].primary);
    assert!(map.with_assignment(4, &[(10, 0)]).is_err());
    assert!(map.with_assignment(4, &[(1, 2)]).is_err());
    assert_eq!(ranges(&[0, 0, 1, 0]), vec![(0, 1, 0), (2, 2, 1), (3, 3, 0)]);
}

fn table_map() -> String {
    format!(
        "{}[[tables]]\nname = \"t\"\nkey = \"k\"\n",
        map("\"0-4\" = \"a\"\n\"5-9\" = \"b\"\n")
    )
}

#[test]
fn even_map_round_trips() {
    let backends: Vec<_> = (0..3)
        .map(|i| {
            (
                format!("b{i}"),
                format!("postgresql://u:p@h:{}/d", 5000 + i),
                vec![],
            )
        })
        .collect();
    let map = ShardMap::parse(&ShardMap::even_toml(&backends, 1000)).unwrap();
    assert_eq!(map.vshard_counts(), vec![333, 333, 334]);
    assert_eq!(map.assignment[0], 0);
    assert_eq!(map.assignment[999], 2);
}

mod example_tests {
    use super::ShardMap;

    #[test]
    fn shipped_examples_are_valid() {
        for entry in std::fs::read_dir(concat!(env!("CARGO_MANIFEST_DIR"), "/shardmap")).unwrap() {
            let path = entry.unwrap().path();
            let map = ShardMap::load(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
            assert_eq!(map.vshards(), 1000, "{}", path.display());
        }
    }

    /// The demo shards pgbench's tables as `shardmap/pgbench.toml` does.
    #[test]
    fn demo_map_shards_pgbench_like_the_example() {
        let example = ShardMap::load(std::path::Path::new(concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/shardmap/pgbench.toml"
        )))
        .unwrap();
        let backends = vec![("b0".to_string(), "postgresql://u@h/d".to_string(), vec![])];
        let demo = ShardMap::parse(&ShardMap::even_toml(&backends, 1000)).unwrap();
        assert_eq!(demo.tables, example.tables);
        assert_eq!(demo.tables.len(), 4);
    }
}
