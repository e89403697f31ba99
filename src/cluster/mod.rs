//! Local, real PostgreSQL clusters for `pgshard demo` and the integration tests (one
//! code path for both): primaries `b0, b1, ...`, optionally one streaming replica each
//! (`b0r0, b1r0, ...`), all on 127.0.0.1.
//!
//! This runs once at start-up, so it uses blocking `std::process`; call it from
//! `spawn_blocking` (or before the runtime starts) when inside tokio.
//!
//! Architecture invariant: every server this module starts is stopped by
//! `LocalClusters::stop` or its `Drop`, including servers started before a later
//! step of `start` failed.

mod error;
mod node;
mod process;

use std::fmt;
use std::net::{Ipv4Addr, TcpListener};
use std::path::{Path, PathBuf};

pub use error::{ClusterError, PG_BIN_ENV};
pub use process::find_bin_dir;

use process::{Runner, SETUP};

/// Address every node listens on (and the only one).
const HOST: &str = "127.0.0.1";

/// What to start. Each node's data dir is `dir/<name>`, which must not exist yet.
#[derive(Clone)]
pub struct ClusterSpec {
    /// Parent directory; created if missing (when root, handed to the `postgres` user).
    pub dir: PathBuf,
    /// Number of primaries, named b0, b1, ...
    pub backends: usize,
    /// One streaming replica per primary, named b0r0, b1r0, ...
    pub replicas: bool,
    /// Superuser created by initdb.
    pub user: String,
    /// Its password; TCP connections authenticate with scram-sha-256.
    pub password: String,
    /// `Some(p)`: the k-th node started (in `nodes()` order) gets port p + k.
    /// `None`: each node gets a port the OS reports free.
    pub port_base: Option<u16>,
}

impl fmt::Debug for ClusterSpec {
    // Hand-written so the password never lands in a log line.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ClusterSpec")
            .field("dir", &self.dir)
            .field("backends", &self.backends)
            .field("replicas", &self.replicas)
            .field("user", &self.user)
            .field("password", &"<redacted>")
            .field("port_base", &self.port_base)
            .finish()
    }
}

/// One running PostgreSQL server.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Node {
    pub name: String,
    /// The primary's name (equal to `name` for a primary).
    pub backend: String,
    pub is_replica: bool,
    pub host: String,
    pub port: u16,
    pub data_dir: PathBuf,
}

/// Servers started by `start`; stopped by `stop` or on drop.
#[derive(Debug)]
pub struct LocalClusters {
    runner: Runner,
    /// In start order: each primary followed by its replica.
    nodes: Vec<Node>,
    /// `running[i]` is whether `nodes[i]` still needs stopping.
    running: Vec<bool>,
    user: String,
    password: String,
}

impl LocalClusters {
    /// Creates and starts every node of `spec`. On error, nodes already started are
    /// stopped again (by drop) before the error is returned.
    pub fn start(spec: &ClusterSpec) -> Result<LocalClusters, ClusterError> {
        validate(spec)?;
        // Programs run with the spec dir as cwd, so relative data dirs would break.
        let dir = std::path::absolute(&spec.dir)
            .map_err(|e| ClusterError::io(SETUP, "could not resolve", &spec.dir, e))?;
        let runner = Runner::new(find_bin_dir()?, dir.clone())?;
        runner.prepare_dir(&dir)?;
        let mut clusters = LocalClusters {
            runner,
            nodes: Vec::new(),
            running: Vec::new(),
            user: spec.user.clone(),
            password: spec.password.clone(),
        };
        let mut ports = Ports::new(spec.port_base);
        for b in 0..spec.backends {
            let primary = format!("b{b}");
            clusters.start_primary(&dir, &primary, &mut ports)?;
            if spec.replicas {
                clusters.start_replica(&dir, &primary, &format!("{primary}r0"), &mut ports)?;
            }
        }
        Ok(clusters)
    }

    pub fn nodes(&self) -> &[Node] {
        &self.nodes
    }

    pub fn primaries(&self) -> impl Iterator<Item = &Node> {
        self.nodes.iter().filter(|n| !n.is_replica)
    }

    pub fn replicas_of<'a>(&'a self, backend: &'a str) -> impl Iterator<Item = &'a Node> + 'a {
        self.nodes
            .iter()
            .filter(move |n| n.is_replica && n.backend == backend)
    }

    /// Directory of the PostgreSQL programs in use (psql is there too).
    pub fn bin_dir(&self) -> &Path {
        self.runner.bin_dir()
    }

    /// `postgresql://user:password@127.0.0.1:port/database`, percent-encoded.
    pub fn dsn(&self, node: &Node, database: &str) -> String {
        format!(
            "postgresql://{}:{}@{}:{}/{}",
            percent_encode(&self.user),
            percent_encode(&self.password),
            node.host,
            node.port,
            percent_encode(database)
        )
    }

    /// Like `dsn`, plus `?host=` the node's Unix-socket directory: pgshard then
    /// connects over the socket (cheaper than TCP), and the host and port still say
    /// where the server listens on TCP.
    pub fn socket_dsn(&self, node: &Node, database: &str) -> String {
        let dir = percent_encode(&node.data_dir.to_string_lossy());
        format!("{}?host={dir}", self.dsn(node, database))
    }

    /// Stops every node still running, replicas first (so a primary's fast shutdown
    /// does not leave its standbys retrying a vanished upstream). Idempotent; failures
    /// are logged, not returned, because this also runs from `Drop`.
    pub fn stop(&mut self) {
        let order: Vec<usize> = (0..self.nodes.len())
            .filter(|&i| self.nodes[i].is_replica)
            .chain((0..self.nodes.len()).filter(|&i| !self.nodes[i].is_replica))
            .collect();
        for i in order {
            if !std::mem::replace(&mut self.running[i], false) {
                continue;
            }
            let node = &self.nodes[i];
            match node::stop(&self.runner, node) {
                Ok(()) => tracing::info!(node = %node.name, port = node.port, "stopped"),
                Err(e) => tracing::warn!(node = %node.name, error = %e, "stop failed"),
            }
        }
    }

    fn start_primary(
        &mut self,
        dir: &Path,
        name: &str,
        ports: &mut Ports,
    ) -> Result<(), ClusterError> {
        let node = new_node(dir, name, name, false, ports.next()?);
        tracing::info!(node = %node.name, data_dir = %node.data_dir.display(), "initdb");
        node::init_primary(&self.runner, &node, &self.user, &self.password)?;
        self.launch(node, ports)
    }

    fn start_replica(
        &mut self,
        dir: &Path,
        backend: &str,
        name: &str,
        ports: &mut Ports,
    ) -> Result<(), ClusterError> {
        let primary = self
            .nodes
            .iter()
            .find(|n| n.name == backend)
            .ok_or_else(|| ClusterError::InvalidSpec(format!("{name}: no primary {backend}")))?;
        let node = new_node(dir, name, backend, true, ports.next()?);
        tracing::info!(node = %node.name, from = %primary.name, "pg_basebackup");
        node::clone_replica(&self.runner, primary, &node, &self.user, &self.password)?;
        self.launch(node, ports)
    }

    /// Writes the node's own settings and starts it, retrying once on a new port when
    /// a picked-free port was taken meanwhile. Records the node as running.
    fn launch(&mut self, mut node: Node, ports: &mut Ports) -> Result<(), ClusterError> {
        node::write_node_settings(&node)?;
        tracing::info!(node = %node.name, port = node.port, "starting");
        match node::start(&self.runner, &node) {
            Err(e) if ports.picks_free() && e.is_address_in_use() => {
                node.port = ports.next()?;
                tracing::warn!(node = %node.name, port = node.port, "port taken, retrying");
                node::write_node_settings(&node)?;
                node::start(&self.runner, &node)?;
            }
            other => other?,
        }
        tracing::info!(node = %node.name, port = node.port, "started");
        self.nodes.push(node);
        self.running.push(true);
        Ok(())
    }
}

impl Drop for LocalClusters {
    fn drop(&mut self) {
        self.stop()
    }
}

fn new_node(dir: &Path, name: &str, backend: &str, is_replica: bool, port: u16) -> Node {
    Node {
        name: name.to_string(),
        backend: backend.to_string(),
        is_replica,
        host: HOST.to_string(),
        port,
        data_dir: dir.join(name),
    }
}

fn validate(spec: &ClusterSpec) -> Result<(), ClusterError> {
    let problem = if spec.backends == 0 {
        "backends must be at least 1"
    } else if spec.port_base == Some(0) {
        "port_base must not be 0 (use None to pick free ports)"
    } else if spec.user.is_empty() {
        "user must not be empty"
    } else if spec.password.is_empty() || spec.password.contains(['\n', '\r']) {
        // initdb reads the password as the first line of a file.
        "password must be non-empty and a single line"
    } else {
        return Ok(());
    };
    Err(ClusterError::InvalidSpec(problem.to_string()))
}

/// Hands out node ports: consecutive from a base, or free ones picked by the OS.
struct Ports {
    /// u32 so that handing out 65535 itself does not overflow.
    next_fixed: Option<u32>,
}

impl Ports {
    fn new(base: Option<u16>) -> Ports {
        Ports {
            next_fixed: base.map(u32::from),
        }
    }

    /// Only OS-picked ports are retried; a fixed port that is taken is the caller's
    /// configuration problem and must be reported, not silently moved.
    fn picks_free(&self) -> bool {
        self.next_fixed.is_none()
    }

    fn next(&mut self) -> Result<u16, ClusterError> {
        let Some(port) = self.next_fixed else {
            return free_port();
        };
        let port = u16::try_from(port).map_err(|_| {
            ClusterError::InvalidSpec("port_base is too high for this many nodes".to_string())
        })?;
        self.next_fixed = Some(u32::from(port) + 1);
        Ok(port)
    }
}

/// A port the OS considers free right now. Another process may take it before the
/// server binds it; `launch` retries once for that.
fn free_port() -> Result<u16, ClusterError> {
    let listener = TcpListener::bind((Ipv4Addr::LOCALHOST, 0)).map_err(ClusterError::NoFreePort)?;
    let addr = listener.local_addr().map_err(ClusterError::NoFreePort)?;
    Ok(addr.port())
}

/// Percent-encodes everything but RFC 3986 unreserved characters, so any user,
/// password or database name is safe inside a URI.
fn percent_encode(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for byte in text.bytes() {
        if byte.is_ascii_alphanumeric() || b"-._~".contains(&byte) {
            out.push(char::from(byte));
        } else {
            out.push_str(&format!("%{byte:02X}"));
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn percent_encode_escapes_reserved() {
        assert_eq!(percent_encode("pg-shard_1.~"), "pg-shard_1.~");
        assert_eq!(percent_encode("p@ss:w/rd é"), "p%40ss%3Aw%2Frd%20%C3%A9");
    }

    #[test]
    fn fixed_ports_are_consecutive_and_bounded() {
        let mut ports = Ports::new(Some(65534));
        assert_eq!(ports.next().ok(), Some(65534));
        assert_eq!(ports.next().ok(), Some(65535));
        assert!(!ports.picks_free());
        assert!(ports.next().is_err());
    }

    #[test]
    fn free_ports_are_nonzero() {
        let mut ports = Ports::new(None);
        assert!(ports.picks_free());
        assert_ne!(ports.next().ok(), Some(0));
    }

    #[test]
    fn spec_debug_hides_password() {
        let spec = ClusterSpec {
            dir: PathBuf::from("/tmp/x"),
            backends: 1,
            replicas: false,
            user: "u".into(),
            password: "hunter2".into(),
            port_base: None,
        };
        assert!(!format!("{spec:?}").contains("hunter2"));
        assert!(validate(&spec).is_ok());
    }
}
