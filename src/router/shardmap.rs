//! The shard map document (`shardmap/*.toml`) -> a validated, immutable [`ShardMap`].
//! See DESIGN.md section 4 and the README for the format.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::path::Path;

use serde::Deserialize;

use super::hash::KeyType;
use crate::backend::dsn::Dsn;

pub const VSHARDS_DEFAULT: u32 = 1000;
/// Largest vshard count a map may declare.
pub const VSHARDS_MAX: u32 = 65_536;
/// Largest map version (far below i64::MAX, so versions can always go up).
pub const VERSION_MAX: u64 = 1 << 53;

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum MapError {
    #[error("cannot read shard map {0}: {1}")]
    Read(String, String),
    #[error("shard map is not valid TOML: {0}")]
    Toml(String),
    #[error("shard map: {0}")]
    Invalid(String),
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawMap {
    version: u64,
    #[serde(default = "default_vshards")]
    vshards: u32,
    default_backend: String,
    #[serde(default)]
    reference_tables: Vec<String>,
    backends: Vec<RawBackend>,
    assign: BTreeMap<String, String>,
    #[serde(default)]
    tables: Vec<RawTable>,
}

fn default_vshards() -> u32 {
    VSHARDS_DEFAULT
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawBackend {
    name: String,
    primary: String,
    #[serde(default)]
    replicas: Vec<String>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawTable {
    name: String,
    key: String,
    #[serde(rename = "type", default = "default_key_type")]
    key_type: String,
}

fn default_key_type() -> String {
    "int8".into()
}

/// pgbench's tables, each sharded by its own key (as `shardmap/pgbench.toml`); the
/// demo's map ends with these.
pub const PGBENCH_TABLES: &str = r#"
[[tables]]
name = "pgbench_accounts"
key = "aid"
type = "int4"

[[tables]]
name = "pgbench_tellers"
key = "tid"
type = "int4"

[[tables]]
name = "pgbench_branches"
key = "bid"
type = "int4"

[[tables]]
name = "pgbench_history"
key = "aid"
type = "int4"
"#;

#[derive(Debug, Clone)]
pub struct Backend {
    pub name: String,
    pub primary: Dsn,
    pub replicas: Vec<Dsn>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ShardedTable {
    pub name: String,
    pub key: String,
    pub key_type: KeyType,
}

/// Index into [`ShardMap::backends`].
pub type BackendId = usize;

#[derive(Debug, Clone)]
pub struct ShardMap {
    pub version: u64,
    /// The document this map was read from (it holds passwords: never logged).
    pub text: MapText,
    /// Which tables are sharded or reference tables, as one number: routing plans
    /// depend on this, not on the assignment, so they outlive vshard moves.
    pub tables_id: u64,
    pub backends: Vec<Backend>,
    /// `assignment[vshard]` is the backend that owns that vshard.
    pub assignment: Vec<BackendId>,
    pub default_backend: BackendId,
    pub tables: HashMap<String, ShardedTable>,
    pub reference_tables: HashSet<String>,
    /// Statements routed to each vshard (kept across map versions by `Topology`).
    pub load: std::sync::Arc<super::load::VshardLoad>,
}

impl ShardMap {
    pub fn load(path: &Path) -> Result<ShardMap, MapError> {
        let text = std::fs::read_to_string(path)
            .map_err(|e| MapError::Read(path.display().to_string(), e.to_string()))?;
        ShardMap::parse(&text)
    }

    pub fn parse(text: &str) -> Result<ShardMap, MapError> {
        let raw: RawMap = toml::from_str(text).map_err(|e| MapError::Toml(e.to_string()))?;
        let invalid = |m: String| MapError::Invalid(m);
        if raw.version > VERSION_MAX {
            return Err(invalid(format!(
                "version must be at most {VERSION_MAX}, got {}",
                raw.version
            )));
        }
        if raw.vshards == 0 || raw.vshards > VSHARDS_MAX {
            return Err(invalid(format!(
                "vshards must be 1..={VSHARDS_MAX}, got {}",
                raw.vshards
            )));
        }
        let backends = backends(&raw.backends).map_err(invalid)?;
        let index: HashMap<&str, BackendId> = backends
            .iter()
            .enumerate()
            .map(|(i, b)| (b.name.as_str(), i))
            .collect();
        let assignment = assignment(&raw.assign, raw.vshards, &index).map_err(invalid)?;
        let default_backend = *index.get(raw.default_backend.as_str()).ok_or_else(|| {
            invalid(format!(
                "default_backend \"{}\" is not a backend",
                raw.default_backend
            ))
        })?;
        let mut tables = HashMap::new();
        for t in raw.tables {
            let name = t.name.to_ascii_lowercase();
            if t.key.is_empty() || name.is_empty() {
                return Err(invalid(format!(
                    "table \"{name}\": name and key are required"
                )));
            }
            let key_type = KeyType::parse(&t.key_type).ok_or_else(|| {
                invalid(format!(
                    "table \"{name}\": type \"{}\" is not a key type \
                     (int2, int4, int8, text, varchar or uuid)",
                    t.key_type
                ))
            })?;
            let table = ShardedTable {
                name: name.clone(),
                key: t.key.to_ascii_lowercase(),
                key_type,
            };
            if tables.insert(name.clone(), table).is_some() {
                return Err(invalid(format!("table \"{name}\" is listed twice")));
            }
        }
        let reference_tables: HashSet<String> = raw
            .reference_tables
            .iter()
            .map(|t| t.to_ascii_lowercase())
            .collect();
        if let Some(t) = reference_tables.iter().find(|t| tables.contains_key(*t)) {
            return Err(invalid(format!(
                "table \"{t}\" is both sharded and a reference table"
            )));
        }
        let tables_id = tables_id(&tables, &reference_tables);
        Ok(ShardMap {
            version: raw.version,
            text: MapText(text.into()),
            tables_id,
            backends,
            assignment,
            default_backend,
            tables,
            reference_tables,
            load: std::sync::Arc::new(super::load::VshardLoad::new(raw.vshards)),
        })
    }

    /// The index of the backend named `name`.
    pub fn backend_id(&self, name: &str) -> Option<BackendId> {
        self.backends.iter().position(|b| b.name == name)
    }

    /// The name of the backend owning `vshard`.
    pub fn owner_name(&self, vshard: u32) -> Option<&str> {
        let id = *self.assignment.get(vshard as usize)?;
        Some(self.backends.get(id)?.name.as_str())
    }

    /// This map's document with `version` and the vshards in `moves` reassigned
    /// (`(vshard, backend)`); the rest of the document as it was.
    pub fn with_assignment(
        &self,
        version: u64,
        moves: &[(u32, BackendId)],
    ) -> Result<ShardMap, MapError> {
        let mut doc: toml::Table =
            toml::from_str(&self.text.0).map_err(|e| MapError::Toml(e.to_string()))?;
        let mut assignment = self.assignment.clone();
        for &(vshard, backend) in moves {
            let slot = assignment
                .get_mut(vshard as usize)
                .ok_or_else(|| MapError::Invalid(format!("vshard {vshard} is out of range")))?;
            if backend >= self.backends.len() {
                return Err(MapError::Invalid(format!("backend {backend} is unknown")));
            }
            *slot = backend;
        }
        doc.insert("version".into(), toml::Value::Integer(version as i64));
        let mut assign = toml::Table::new();
        for (lo, hi, backend) in ranges(&assignment) {
            let key = if lo == hi {
                lo.to_string()
            } else {
                format!("{lo}-{hi}")
            };
            let name = self.backends[backend].name.clone();
            assign.insert(key, toml::Value::String(name));
        }
        doc.insert("assign".into(), toml::Value::Table(assign));
        let text = toml::to_string(&doc).map_err(|e| MapError::Toml(e.to_string()))?;
        ShardMap::parse(&text)
    }

    /// The demo's map over `backends` made-up backends (`b0`, `b1`, ...), for tests.
    #[cfg(test)]
    pub fn even_for_tests(backends: usize) -> ShardMap {
        let backends: Vec<_> = (0..backends)
            .map(|i| {
                (
                    format!("b{i}"),
                    format!("postgresql://u@h:{}/d", 5000 + i),
                    vec![],
                )
            })
            .collect();
        ShardMap::parse(&ShardMap::even_toml(&backends, VSHARDS_DEFAULT)).expect("map")
    }

    pub fn vshards(&self) -> u32 {
        self.assignment.len() as u32
    }

    /// How many vshards each backend owns, in backend order.
    pub fn vshard_counts(&self) -> Vec<usize> {
        let mut counts = vec![0; self.backends.len()];
        for &b in &self.assignment {
            counts[b] += 1;
        }
        counts
    }

    /// A map that spreads `vshards` evenly over the given backends, in ranges, and
    /// shards pgbench's tables (`PGBENCH_TABLES`).
    pub fn even_toml(backends: &[(String, String, Vec<String>)], vshards: u32) -> String {
        let mut out = format!(
            "version = 1\nvshards = {vshards}\ndefault_backend = \"{}\"\n\n",
            backends.first().map(|b| b.0.as_str()).unwrap_or("")
        );
        for (name, primary, replicas) in backends {
            let replicas: Vec<String> = replicas.iter().map(|r| format!("\"{r}\"")).collect();
            out += &format!(
                "[[backends]]\nname = \"{name}\"\nprimary = \"{primary}\"\nreplicas = [{}]\n\n",
                replicas.join(", ")
            );
        }
        out += "[assign]\n";
        let n = backends.len().max(1) as u32;
        for (i, (name, _, _)) in backends.iter().enumerate() {
            let (lo, hi) = (vshards * i as u32 / n, vshards * (i as u32 + 1) / n);
            if hi > lo {
                out += &format!("\"{}-{}\" = \"{name}\"\n", lo, hi - 1);
            }
        }
        out + PGBENCH_TABLES
    }
}

/// The document a map was read from. Its `Debug` hides it: DSNs carry passwords.
#[derive(Clone)]
pub struct MapText(pub std::sync::Arc<str>);

impl std::fmt::Debug for MapText {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "MapText({} bytes)", self.0.len())
    }
}

/// Runs of consecutive vshards with one owner: `(first, last, backend)`.
pub fn ranges(assignment: &[BackendId]) -> Vec<(u32, u32, BackendId)> {
    let mut out: Vec<(u32, u32, BackendId)> = Vec::new();
    for (v, &backend) in assignment.iter().enumerate() {
        match out.last_mut() {
            Some((_, hi, b)) if *b == backend && *hi + 1 == v as u32 => *hi = v as u32,
            _ => out.push((v as u32, v as u32, backend)),
        }
    }
    out
}

fn tables_id(tables: &HashMap<String, ShardedTable>, reference: &HashSet<String>) -> u64 {
    use std::hash::{Hash, Hasher};
    let mut sharded: Vec<_> = tables
        .values()
        .map(|t| (&t.name, &t.key, t.key_type as u8))
        .collect();
    sharded.sort();
    let mut reference: Vec<_> = reference.iter().collect();
    reference.sort();
    let mut hasher = std::collections::hash_map::DefaultHasher::new();
    sharded.hash(&mut hasher);
    reference.hash(&mut hasher);
    hasher.finish()
}

fn backends(raw: &[RawBackend]) -> Result<Vec<Backend>, String> {
    if raw.is_empty() {
        return Err("at least one [[backends]] entry is required".into());
    }
    let mut out: Vec<Backend> = Vec::with_capacity(raw.len());
    for b in raw {
        if b.name.is_empty() {
            return Err("a backend has an empty name".into());
        }
        if out.iter().any(|o| o.name == b.name) {
            return Err(format!("backend \"{}\" is listed twice", b.name));
        }
        let dsn = |s: &str| Dsn::parse(s).map_err(|e| format!("backend \"{}\": {e}", b.name));
        let replicas = b
            .replicas
            .iter()
            .map(|r| dsn(r))
            .collect::<Result<_, _>>()?;
        out.push(Backend {
            name: b.name.clone(),
            primary: dsn(&b.primary)?,
            replicas,
        });
    }
    Ok(out)
}

fn assignment(
    assign: &BTreeMap<String, String>,
    vshards: u32,
    index: &HashMap<&str, BackendId>,
) -> Result<Vec<BackendId>, String> {
    let mut out: Vec<Option<BackendId>> = vec![None; vshards as usize];
    for (range, backend) in assign {
        let (lo, hi) = parse_range(range, vshards)?;
        let id = *index
            .get(backend.as_str())
            .ok_or_else(|| format!("assign \"{range}\": unknown backend \"{backend}\""))?;
        for v in lo..=hi {
            if let Some(prev) = out[v as usize] {
                let _ = prev;
                return Err(format!(
                    "vshard {v} is assigned twice (again in \"{range}\")"
                ));
            }
            out[v as usize] = Some(id);
        }
    }
    let missing: Vec<usize> = (0..out.len()).filter(|&v| out[v].is_none()).collect();
    if let Some(first) = missing.first() {
        return Err(format!(
            "{} vshards are not assigned, the first is {first}",
            missing.len()
        ));
    }
    Ok(out.into_iter().flatten().collect())
}

fn parse_range(s: &str, vshards: u32) -> Result<(u32, u32), String> {
    let bad = || format!("assign \"{s}\": expected a vshard or a range like \"0-249\"");
    let (lo, hi) = match s.split_once('-') {
        Some((lo, hi)) => (lo.trim(), hi.trim()),
        None => (s.trim(), s.trim()),
    };
    let lo: u32 = lo.parse().map_err(|_| bad())?;
    let hi: u32 = hi.parse().map_err(|_| bad())?;
    if lo > hi || hi >= vshards {
        return Err(format!(
            "assign \"{s}\": range must lie within 0-{}",
            vshards - 1
        ));
    }
    Ok((lo, hi))
}

#[cfg(test)]
#[path = "shardmap_tests.rs"]
mod tests;
