//! Checks a new shard map must pass before it is accepted (beyond the document's own,
//! in `router::shardmap`): a version above the running one, the same vshard count,
//! no vshard changing backend without its rows (that is what `move` is for), every
//! new backend reachable, and each new backend ready: the sharded tables created
//! there, the reference tables present.

use crate::backend::server::ServerConn;
use crate::backend::Topology;
use crate::moves::schema;
use crate::router::ShardMap;

/// Checks that need no backend.
pub fn compare(running: &ShardMap, new: &ShardMap, force: bool) -> Result<(), String> {
    if new.version <= running.version {
        return Err(format!(
            "version {} is not above the running version {}",
            new.version, running.version
        ));
    }
    if new.vshards() != running.vshards() {
        return Err(format!(
            "vshards cannot change ({} running, {} in the new map): every key would move",
            running.vshards(),
            new.vshards()
        ));
    }
    let reassigned: Vec<u32> = (0..new.vshards())
        .filter(|&v| running.owner_name(v) != new.owner_name(v))
        .collect();
    if let (Some(first), false) = (reassigned.first(), force) {
        let from = running.owner_name(*first).unwrap_or("?");
        let to = new.owner_name(*first).unwrap_or("?");
        return Err(format!(
            "{} vshards would change backend without their rows (the first: vshard {first}, \
             {from} -> {to}); move them with `pgshard move` or `pgshard rebalance`, or apply \
             with --force if their rows are already there",
            reassigned.len()
        ));
    }
    Ok(())
}

/// Backends of `new` that the running map does not have as they are: new names,
/// or a new primary DSN.
fn new_backends<'a>(
    running: &Topology,
    new: &'a ShardMap,
) -> Vec<&'a crate::router::shardmap::Backend> {
    new.backends
        .iter()
        .filter(|b| {
            !running
                .map
                .backends
                .iter()
                .any(|r| r.name == b.name && r.primary == b.primary)
        })
        .collect()
}

/// Each new backend answers a query.
pub async fn reachable(running: &Topology, new: &ShardMap) -> Result<(), String> {
    for backend in new_backends(running, new) {
        let failed = |e: String| {
            format!(
                "backend \"{}\" ({:?}) is unreachable: {e}",
                backend.name, backend.primary
            )
        };
        let mut conn = ServerConn::connect(&backend.primary)
            .await
            .map_err(|e| failed(e.to_string()))?;
        conn.execute("SELECT 1")
            .await
            .map_err(|e| failed(e.to_string()))?;
    }
    Ok(())
}

/// Creates the sharded tables on backends new to the map (copied from a running
/// backend), and checks that they have the reference tables.
pub async fn prepare_new_backends(running: &Topology, new: &ShardMap) -> Result<(), String> {
    let added: Vec<_> = new_backends(running, new)
        .into_iter()
        .filter(|b| running.map.backend_id(&b.name).is_none())
        .collect();
    if added.is_empty() {
        return Ok(());
    }
    let mut sources = Vec::new();
    for backend in source_order(&running.map) {
        let conn = ServerConn::connect(&backend.primary)
            .await
            .map_err(|e| format!("backend \"{}\" is unreachable: {e}", backend.name))?;
        sources.push(conn);
    }
    let mut tables: Vec<String> = new.tables.keys().cloned().collect();
    tables.sort();
    let mut reference: Vec<&String> = new.reference_tables.iter().collect();
    reference.sort();
    for backend in added {
        let mut target = ServerConn::connect(&backend.primary)
            .await
            .map_err(|e| format!("backend \"{}\" is unreachable: {e}", backend.name))?;
        let created = schema::copy_missing(&mut sources, &mut target, &tables)
            .await
            .map_err(|e| format!("backend \"{}\": {e}", backend.name))?;
        if !created.is_empty() {
            tracing::info!(backend = %backend.name, tables = %created.join(", "), "created sharded tables");
        }
        for table in &reference {
            let present = schema::exists(&mut target, table)
                .await
                .map_err(|e| format!("backend \"{}\": {e}", backend.name))?;
            if !present {
                return Err(format!(
                    "backend \"{}\" lacks reference table \"{table}\": copy it there first \
                     (every backend holds all its rows)",
                    backend.name
                ));
            }
        }
    }
    Ok(())
}

/// The running backends, the default one first: where table definitions are read.
fn source_order(map: &ShardMap) -> Vec<&crate::router::shardmap::Backend> {
    let mut out = vec![&map.backends[map.default_backend]];
    out.extend(
        map.backends
            .iter()
            .enumerate()
            .filter(|(i, _)| *i != map.default_backend)
            .map(|(_, b)| b),
    );
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn map(version: u64, assign: &str) -> ShardMap {
        ShardMap::parse(&format!(
            "version = {version}\nvshards = 10\ndefault_backend = \"a\"\n\
             [[backends]]\nname = \"a\"\nprimary = \"postgresql://u@h:1/d\"\n\
             [[backends]]\nname = \"b\"\nprimary = \"postgresql://u@h:2/d\"\n\
             [assign]\n{assign}\n"
        ))
        .unwrap()
    }

    #[test]
    fn versions_rise_and_vshards_keep_their_rows() {
        let running = map(3, "\"0-4\" = \"a\"\n\"5-9\" = \"b\"");
        let same = map(4, "\"0-4\" = \"a\"\n\"5-9\" = \"b\"");
        assert_eq!(compare(&running, &same, false), Ok(()));
        let old = map(3, "\"0-4\" = \"a\"\n\"5-9\" = \"b\"");
        assert_eq!(
            compare(&running, &old, false),
            Err("version 3 is not above the running version 3".into())
        );
        let moved = map(4, "\"0-5\" = \"a\"\n\"6-9\" = \"b\"");
        let refused = compare(&running, &moved, false).unwrap_err();
        assert!(
            refused.starts_with(
                "1 vshards would change backend without their rows (the first: vshard 5, b -> a)"
            ),
            "{refused}"
        );
        assert_eq!(compare(&running, &moved, true), Ok(()));
        let fewer = ShardMap::parse(
            "version = 4\nvshards = 5\ndefault_backend = \"a\"\n\
             [[backends]]\nname = \"a\"\nprimary = \"postgresql://u@h:1/d\"\n\
             [assign]\n\"0-4\" = \"a\"\n",
        )
        .unwrap();
        assert!(compare(&running, &fewer, false)
            .unwrap_err()
            .starts_with("vshards cannot change (10 running, 5 in the new map)"));
    }
}
