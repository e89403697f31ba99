//! What changes from one shard map to another, one line each (for `map diff`, the
//! log line of every swap, and the API). Never prints a password.

use std::collections::BTreeMap;

use crate::router::shardmap::ranges;
use crate::router::ShardMap;

pub fn lines(old: &ShardMap, new: &ShardMap) -> Vec<String> {
    let mut out = Vec::new();
    if old.version != new.version {
        out.push(format!("version {} -> {}", old.version, new.version));
    }
    backends(old, new, &mut out);
    let (old_default, new_default) = (
        &old.backends[old.default_backend].name,
        &new.backends[new.default_backend].name,
    );
    if old_default != new_default {
        out.push(format!("default backend {old_default} -> {new_default}"));
    }
    vshards(old, new, &mut out);
    tables(old, new, &mut out);
    let mut added: Vec<_> = new
        .reference_tables
        .difference(&old.reference_tables)
        .collect();
    let mut removed: Vec<_> = old
        .reference_tables
        .difference(&new.reference_tables)
        .collect();
    added.sort();
    removed.sort();
    out.extend(added.into_iter().map(|t| format!("+ reference table {t}")));
    out.extend(
        removed
            .into_iter()
            .map(|t| format!("- reference table {t}")),
    );
    out
}

fn backends(old: &ShardMap, new: &ShardMap, out: &mut Vec<String>) {
    for b in &new.backends {
        match old.backends.iter().find(|o| o.name == b.name) {
            None => out.push(format!("+ backend {} ({:?})", b.name, b.primary)),
            Some(o) if o.primary != b.primary => out.push(format!(
                "~ backend {}: primary {:?} -> {:?}",
                b.name, o.primary, b.primary
            )),
            Some(o) if o.replicas != b.replicas => out.push(format!(
                "~ backend {}: {} replicas -> {}",
                b.name,
                o.replicas.len(),
                b.replicas.len()
            )),
            Some(_) => {}
        }
    }
    for o in &old.backends {
        if new.backend_id(&o.name).is_none() {
            out.push(format!("- backend {}", o.name));
        }
    }
}

/// Reassigned vshards, as runs of consecutive vshards with the same old and new owner.
fn vshards(old: &ShardMap, new: &ShardMap, out: &mut Vec<String>) {
    if old.vshards() != new.vshards() {
        out.push(format!("vshards {} -> {}", old.vshards(), new.vshards()));
        return;
    }
    // Each vshard as a pair (old owner, new owner) numbered by first appearance.
    let mut pairs: Vec<(&str, &str)> = Vec::new();
    let mut ids = Vec::with_capacity(new.assignment.len());
    for v in 0..new.vshards() {
        let pair = (
            old.owner_name(v).unwrap_or("?"),
            new.owner_name(v).unwrap_or("?"),
        );
        let id = match pairs.iter().position(|p| *p == pair) {
            Some(id) => id,
            None => {
                pairs.push(pair);
                pairs.len() - 1
            }
        };
        ids.push(id);
    }
    for (lo, hi, id) in ranges(&ids) {
        let (from, to) = pairs[id];
        if from != to {
            let what = if lo == hi {
                format!("vshard {lo}")
            } else {
                format!("vshards {lo}-{hi}")
            };
            out.push(format!("{what}: {from} -> {to}"));
        }
    }
}

fn tables(old: &ShardMap, new: &ShardMap, out: &mut Vec<String>) {
    let sorted = |m: &ShardMap| -> BTreeMap<String, String> {
        m.tables
            .values()
            .map(|t| (t.name.clone(), format!("{} {:?}", t.key, t.key_type)))
            .collect()
    };
    let (old_tables, new_tables) = (sorted(old), sorted(new));
    for (name, key) in &new_tables {
        match old_tables.get(name) {
            None => out.push(format!("+ table {name} ({key})")),
            Some(o) if o != key => out.push(format!("~ table {name}: key {o} -> {key}")),
            Some(_) => {}
        }
    }
    for name in old_tables.keys() {
        if !new_tables.contains_key(name) {
            out.push(format!("- table {name}"));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn map(extra: &str, assign: &str) -> ShardMap {
        let text = format!(
            "version = 1\nvshards = 10\ndefault_backend = \"a\"\n{extra}\n\
             [[backends]]\nname = \"a\"\nprimary = \"postgresql://u:secret@h:1/d\"\n\
             [[backends]]\nname = \"b\"\nprimary = \"postgresql://u:secret@h:2/d\"\n\
             [assign]\n{assign}\n\
             [[tables]]\nname = \"t\"\nkey = \"k\"\n"
        );
        ShardMap::parse(&text).unwrap()
    }

    #[test]
    fn lines_name_every_change_and_no_password() {
        let old = map("", "\"0-4\" = \"a\"\n\"5-9\" = \"b\"");
        assert!(lines(&old, &old).is_empty());
        let new = map(
            "reference_tables = [\"r\"]",
            "\"0-3\" = \"a\"\n\"4\" = \"b\"\n\"5-8\" = \"b\"\n\"9\" = \"a\"",
        )
        .with_assignment(2, &[])
        .unwrap();
        let got = lines(&old, &new);
        assert_eq!(
            got,
            vec![
                "version 1 -> 2",
                "vshard 4: a -> b",
                "vshard 9: b -> a",
                "+ reference table r",
            ]
        );
        assert!(got.iter().all(|l| !l.contains("secret")));
    }
}
