//! `pgshard.toml` -> a validated [`Config`]. Errors name the field at fault.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::Deserialize;

use crate::limits;

#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("cannot read {path}: {source}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{path}: {message}")]
    Parse { path: PathBuf, message: String },
    #[error("{path}: {field}: {message}")]
    Invalid {
        path: PathBuf,
        field: String,
        message: String,
    },
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum PoolMode {
    #[default]
    Transaction,
    Session,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Default)]
pub enum AuthMethod {
    #[default]
    #[serde(rename = "scram-sha-256")]
    ScramSha256,
    #[serde(rename = "md5")]
    Md5,
    #[serde(rename = "trust")]
    Trust,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct User {
    pub name: String,
    /// Plain text, or PostgreSQL's stored forms ("SCRAM-SHA-256$..." or "md5...").
    #[serde(default)]
    pub password: String,
    #[serde(default)]
    pub auth: AuthMethod,
    /// May use the admin console (database `pgshard`).
    #[serde(default)]
    pub admin: bool,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawConfig {
    listen: String,
    http_listen: Option<String>,
    shard_map: PathBuf,
    #[serde(default = "default_database")]
    database: String,
    #[serde(default)]
    pool_mode: PoolMode,
    #[serde(default = "default_pool_size")]
    pool_size: usize,
    #[serde(default)]
    pipeline_connections: Option<usize>,
    #[serde(default = "default_pipeline_depth")]
    pipeline_depth: usize,
    #[serde(default = "default_checkout_timeout_ms")]
    checkout_timeout_ms: u64,
    #[serde(default = "default_startup_timeout_ms")]
    startup_timeout_ms: u64,
    #[serde(default = "default_recovery_interval_ms")]
    two_phase_recovery_interval_ms: u64,
    #[serde(default = "default_state_dir")]
    state_dir: PathBuf,
    #[serde(default = "default_move_hold_ms")]
    move_hold_ms: u64,
    #[serde(default)]
    users: Vec<User>,
}

fn default_database() -> String {
    "postgres".into()
}
fn default_pool_size() -> usize {
    limits::POOL_SIZE_DEFAULT
}
fn default_pipeline_depth() -> usize {
    limits::PIPELINE_DEPTH_DEFAULT
}
fn default_checkout_timeout_ms() -> u64 {
    limits::POOL_CHECKOUT_TIMEOUT.as_millis() as u64
}
fn default_startup_timeout_ms() -> u64 {
    limits::STARTUP_TIMEOUT.as_millis() as u64
}
fn default_recovery_interval_ms() -> u64 {
    limits::TWO_PHASE_RECOVERY_INTERVAL.as_millis() as u64
}
fn default_state_dir() -> PathBuf {
    "pgshard-state".into()
}
fn default_move_hold_ms() -> u64 {
    limits::MOVE_HOLD.as_millis() as u64
}

/// The name of the admin console's database.
pub const ADMIN_DATABASE: &str = "pgshard";

#[derive(Debug, Clone)]
pub struct Config {
    pub listen: SocketAddr,
    pub http_listen: Option<SocketAddr>,
    /// Absolute, or relative to the config file's folder.
    pub shard_map: PathBuf,
    /// The database name clients connect to.
    pub database: String,
    pub pool_mode: PoolMode,
    pub pool_size: usize,
    /// Shared server connections per backend for self-contained requests (0: none;
    /// at most half of `pool_size` is used). `None`: chosen from the CPUs and the
    /// backends (`shared_per_backend`).
    pub pipeline_connections: Option<usize>,
    /// Requests in flight at once on one shared server connection.
    pub pipeline_depth: usize,
    pub checkout_timeout: Duration,
    /// How long a new client may take to log in.
    pub startup_timeout: Duration,
    /// How often prepared transactions left by two-phase commits are resolved.
    pub two_phase_recovery_interval: Duration,
    /// Where applied shard maps and the move journal are kept (absolute, or
    /// relative to the config file's folder).
    pub state_dir: PathBuf,
    /// How long a vshard move waits for the writes already running on its vshard
    /// before it gives up this attempt (and lets held writes go).
    pub move_hold: Duration,
    pub users: Vec<User>,
}

impl Config {
    pub fn load(path: &Path) -> Result<Config, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
            path: path.to_owned(),
            source,
        })?;
        Config::parse(&text, path)
    }

    pub fn parse(text: &str, path: &Path) -> Result<Config, ConfigError> {
        let raw: RawConfig = toml::from_str(text).map_err(|e| ConfigError::Parse {
            path: path.to_owned(),
            message: e.to_string(),
        })?;
        let invalid = |field: &str, message: String| ConfigError::Invalid {
            path: path.to_owned(),
            field: field.to_owned(),
            message,
        };
        let listen = parse_addr(&raw.listen).map_err(|m| invalid("listen", m))?;
        let http_listen = match &raw.http_listen {
            Some(s) => Some(parse_addr(s).map_err(|m| invalid("http_listen", m))?),
            None => None,
        };
        if raw.pool_size == 0 || raw.pool_size > limits::POOL_SIZE_MAX {
            let max = limits::POOL_SIZE_MAX;
            return Err(invalid(
                "pool_size",
                format!("must be 1..={max}, got {}", raw.pool_size),
            ));
        }
        if raw.pipeline_depth == 0 || raw.pipeline_depth > limits::PIPELINE_DEPTH_MAX {
            let max = limits::PIPELINE_DEPTH_MAX;
            let msg = format!("must be 1..={max}, got {}", raw.pipeline_depth);
            return Err(invalid("pipeline_depth", msg));
        }
        if raw.checkout_timeout_ms == 0 {
            return Err(invalid("checkout_timeout_ms", "must be above 0".into()));
        }
        if raw.startup_timeout_ms == 0 {
            return Err(invalid("startup_timeout_ms", "must be above 0".into()));
        }
        if raw.two_phase_recovery_interval_ms < 100 {
            let msg = format!(
                "must be at least 100, got {}",
                raw.two_phase_recovery_interval_ms
            );
            return Err(invalid("two_phase_recovery_interval_ms", msg));
        }
        if raw.database.is_empty() || raw.database == ADMIN_DATABASE {
            let msg = format!("must be a name other than \"{ADMIN_DATABASE}\" (the admin console)");
            return Err(invalid("database", msg));
        }
        if raw.move_hold_ms == 0 || raw.move_hold_ms > 60_000 {
            let msg = format!("must be 1..=60000, got {}", raw.move_hold_ms);
            return Err(invalid("move_hold_ms", msg));
        }
        validate_users(&raw.users).map_err(|(field, m)| invalid(&field, m))?;
        let base = path.parent().unwrap_or(Path::new("."));
        Ok(Config {
            listen,
            http_listen,
            shard_map: base.join(&raw.shard_map),
            database: raw.database,
            pool_mode: raw.pool_mode,
            pool_size: raw.pool_size,
            pipeline_connections: raw.pipeline_connections,
            pipeline_depth: raw.pipeline_depth,
            checkout_timeout: Duration::from_millis(raw.checkout_timeout_ms),
            startup_timeout: Duration::from_millis(raw.startup_timeout_ms),
            two_phase_recovery_interval: Duration::from_millis(raw.two_phase_recovery_interval_ms),
            state_dir: base.join(&raw.state_dir),
            move_hold: Duration::from_millis(raw.move_hold_ms),
            users: raw.users,
        })
    }

    /// Shared connections per backend: as configured, or `default_shared`.
    pub fn shared_per_backend(&self, backends: usize) -> usize {
        static CPUS: std::sync::OnceLock<usize> = std::sync::OnceLock::new();
        self.pipeline_connections.unwrap_or_else(|| {
            // Asked once: the answer costs system calls (cgroup files, affinity).
            let cpus =
                *CPUS.get_or_init(|| std::thread::available_parallelism().map_or(2, |n| n.get()));
            default_shared(cpus, backends)
        })
    }

    pub fn user(&self, name: &str) -> Option<&User> {
        self.users.iter().find(|u| u.name == name)
    }
}

/// About one shared connection per two CPUs over all backends together, at least one
/// each, at most `PIPELINE_CONNECTIONS_DEFAULT`. Every busy server connection is a
/// PostgreSQL process that sleeps and wakes for its requests: on 2 CPUs, one shared
/// connection to one backend gave pgbench 1.3 times the throughput of two, and two
/// 1.2 times that of four (benches/README.md).
fn default_shared(cpus: usize, backends: usize) -> usize {
    (cpus / 2 / backends.max(1)).clamp(1, limits::PIPELINE_CONNECTIONS_DEFAULT)
}

fn parse_addr(s: &str) -> Result<SocketAddr, String> {
    s.parse()
        .map_err(|_| format!("\"{s}\" is not an address like 127.0.0.1:6432"))
}

fn validate_users(users: &[User]) -> Result<(), (String, String)> {
    if users.is_empty() {
        return Err((
            "users".into(),
            "at least one [[users]] entry is required".into(),
        ));
    }
    for (i, user) in users.iter().enumerate() {
        let field = |f: &str| format!("users[{i}].{f}");
        if user.name.is_empty() {
            return Err((field("name"), "must not be empty".into()));
        }
        if users[..i].iter().any(|u| u.name == user.name) {
            return Err((field("name"), format!("\"{}\" is listed twice", user.name)));
        }
        if user.auth != AuthMethod::Trust && user.password.is_empty() {
            return Err((field("password"), "required unless auth = \"trust\"".into()));
        }
        let stored_scram = user.password.starts_with("SCRAM-SHA-256$");
        if stored_scram {
            if let Err(e) = crate::frontend::auth::scram::ScramSecret::parse(&user.password) {
                return Err((field("password"), format!("invalid SCRAM secret: {e}")));
            }
        }
        if user.auth == AuthMethod::Md5 && stored_scram {
            let msg = "a SCRAM secret cannot verify md5 logins; give the password or its md5 hash";
            return Err((field("password"), msg.into()));
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    const BASE: &str = "listen = \"127.0.0.1:6432\"\nshard_map = \"map.toml\"\n";

    fn check(extra: &str, expect: Result<(), &str>) {
        let text = format!("{BASE}{extra}");
        let got = Config::parse(&text, Path::new("/etc/pgshard.toml"));
        match (got, expect) {
            (Ok(_), Ok(())) => {}
            (Err(e), Err(want)) => {
                let e = e.to_string();
                assert!(e.contains(want), "error {e:?} should contain {want:?}");
            }
            (got, want) => panic!("{extra}: got {got:?}, want {want:?}"),
        }
    }

    #[test]
    fn validation_names_the_field() {
        let user = "[[users]]\nname = \"app\"\npassword = \"pw\"\n";
        check(user, Ok(()));
        check("", Err("users: at least one"));
        check(
            &format!("pool_size = 0\n{user}"),
            Err("pool_size: must be 1..=1000"),
        );
        check(
            &format!("pipeline_depth = 0\n{user}"),
            Err("pipeline_depth: must be 1..=256, got 0"),
        );
        check(
            &format!("database = \"pgshard\"\n{user}"),
            Err("database: must be"),
        );
        check(
            &format!("{user}auth = \"kerberos\"\n"),
            Err("unknown variant `kerberos`"),
        );
        check(
            &format!("{user}colour = 1\n"),
            Err("unknown field `colour`"),
        );
        check(
            "[[users]]\nname = \"app\"\n",
            Err("users[0].password: required"),
        );
        check(
            &format!("{user}{user}"),
            Err("users[1].name: \"app\" is listed twice"),
        );
        check("[[users]]\nname = \"t\"\nauth = \"trust\"\n", Ok(()));
        check(
            &format!("http_listen = \"nope\"\n{user}"),
            Err("http_listen: \"nope\""),
        );
    }

    #[test]
    fn shard_map_path_is_relative_to_the_config() {
        let text = format!("{BASE}[[users]]\nname = \"a\"\npassword = \"b\"\n");
        let config = Config::parse(&text, Path::new("/etc/pgshard/pgshard.toml")).unwrap();
        assert_eq!(config.shard_map, Path::new("/etc/pgshard/map.toml"));
        assert_eq!(config.pool_mode, PoolMode::Transaction);
        assert_eq!(config.database, "postgres");
    }

    #[test]
    fn shared_connections_per_backend() {
        let user = "[[users]]\nname = \"a\"\npassword = \"b\"\n";
        let path = Path::new("/etc/pgshard.toml");
        let auto = Config::parse(&format!("{BASE}{user}"), path).unwrap();
        assert!((1..=2).contains(&auto.shared_per_backend(1)));
        assert_eq!(auto.shared_per_backend(16), 1);
        let set = Config::parse(&format!("{BASE}pipeline_connections = 3\n{user}"), path).unwrap();
        assert_eq!(set.shared_per_backend(16), 3);
        let off = Config::parse(&format!("{BASE}pipeline_connections = 0\n{user}"), path).unwrap();
        assert_eq!(off.shared_per_backend(1), 0);
    }

    #[test]
    fn default_shared_connections_follow_the_cpus() {
        assert_eq!(default_shared(1, 1), 1);
        assert_eq!(default_shared(2, 1), 1);
        assert_eq!(default_shared(4, 1), 2);
        assert_eq!(default_shared(64, 1), 2);
        assert_eq!(default_shared(8, 4), 1);
        assert_eq!(default_shared(2, 4), 1);
        assert_eq!(default_shared(2, 0), 1);
    }
}
