//! One node's lifecycle: initdb, configuration, base backup, start and stop. Each step
//! is one PostgreSQL program run through the `Runner`.

use std::io::Write;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};

use super::process::Runner;
use super::{ClusterError, Node};

/// Settings every node shares (replicas inherit them with the copied postgresql.conf).
/// Durability is off on purpose: these clusters hold throwaway demo and test data, and
/// fsync would dominate start-up and test time. Prepared transactions are on because
/// pgshard uses two-phase commit across shards.
const COMMON_SETTINGS: &str = "\
listen_addresses = '127.0.0.1'
max_connections = 200
max_prepared_transactions = 100
fsync = off
synchronous_commit = off
full_page_writes = off
shared_buffers = 128MB
wal_level = replica
max_wal_senders = 10
hot_standby = on
logging_collector = off
";
/// pg_hba line that lets replicas stream from their primary over TCP.
const REPLICATION_HBA: &str = "host replication all 127.0.0.1/32 scram-sha-256";
/// Seconds pg_ctl waits for a server to accept connections or to shut down.
const PG_CTL_TIMEOUT_SECS: &str = "60";
/// Server log lines quoted in a start failure.
const LOG_TAIL_LINES: usize = 20;
/// Locale asked of initdb first; not every system has it, so --no-locale is the fallback.
const LOCALE: &str = "--locale=C.UTF-8";

/// The server log pg_ctl writes for `node`.
pub(crate) fn log_path(node: &Node) -> PathBuf {
    node.data_dir.join("log")
}

/// Runs initdb for a primary and writes the settings shared by all nodes.
pub(crate) fn init_primary(
    runner: &Runner,
    node: &Node,
    user: &str,
    password: &str,
) -> Result<(), ClusterError> {
    let pwfile = node
        .data_dir
        .with_file_name(format!(".{}.pwfile", node.name));
    write_secret(runner, node, &pwfile, password)?;
    let result = initdb(runner, node, user, &pwfile, LOCALE).or_else(|err| {
        if !err.is_locale_problem() {
            return Err(err);
        }
        tracing::warn!(node = %node.name, error = %err, "retrying initdb with --no-locale");
        // initdb removes what it created on failure; this only covers a partial leftover.
        let _ = std::fs::remove_dir_all(&node.data_dir);
        initdb(runner, node, user, &pwfile, "--no-locale")
    });
    // The password file must not outlive initdb, whatever happened.
    let _ = std::fs::remove_file(&pwfile);
    result?;
    append(node, "postgresql.conf", COMMON_SETTINGS)?;
    ensure_replication_hba(node)
}

fn initdb(
    runner: &Runner,
    node: &Node,
    user: &str,
    pwfile: &Path,
    locale: &str,
) -> Result<(), ClusterError> {
    let mut cmd = runner.command("initdb");
    cmd.arg("-D")
        .arg(&node.data_dir)
        .arg("-U")
        .arg(user)
        .arg(format!("--pwfile={}", pwfile.display()))
        .args([
            "--auth-local=trust",
            "--auth-host=scram-sha-256",
            "-E",
            "UTF8",
        ])
        .arg(locale)
        .arg("-N");
    runner.run(&node.name, &mut cmd).map(drop)
}

/// Writes `secret` to a file only its owner can read, owned by the run-as user.
fn write_secret(
    runner: &Runner,
    node: &Node,
    path: &Path,
    secret: &str,
) -> Result<(), ClusterError> {
    let mut file = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(path)
        .map_err(|e| ClusterError::io(&node.name, "could not create", path, e))?;
    writeln!(file, "{secret}")
        .map_err(|e| ClusterError::io(&node.name, "could not write", path, e))?;
    runner.hand_over(path)
}

/// initdb's default pg_hba.conf already allows replication from 127.0.0.1 with the
/// host auth method; this only adds the line when a packaging changed that default.
fn ensure_replication_hba(node: &Node) -> Result<(), ClusterError> {
    let path = node.data_dir.join("pg_hba.conf");
    let hba = std::fs::read_to_string(&path)
        .map_err(|e| ClusterError::io(&node.name, "could not read", &path, e))?;
    let wanted: Vec<&str> = REPLICATION_HBA.split_whitespace().collect();
    let present = hba
        .lines()
        .any(|line| line.split_whitespace().collect::<Vec<_>>() == wanted);
    if present {
        return Ok(());
    }
    append(node, "pg_hba.conf", &format!("{REPLICATION_HBA}\n"))
}

/// Settings that differ per node. Appended again on a port retry: the last occurrence
/// of a setting in postgresql.conf wins.
pub(crate) fn write_node_settings(node: &Node) -> Result<(), ClusterError> {
    // The socket lives in the data dir so nothing touches /var/run/postgresql.
    let socket_dir = quote(&node.data_dir.to_string_lossy());
    // Prepared transactions carry pgshard's two-phase commits (replicas need at
    // least the primary's value, so every node gets the same).
    let settings = format!(
        "port = {}\nunix_socket_directories = {socket_dir}\nmax_prepared_transactions = 100\n",
        node.port
    );
    append(node, "postgresql.conf", &settings)
}

fn quote(value: &str) -> String {
    format!("'{}'", value.replace('\'', "''"))
}

fn append(node: &Node, file: &str, text: &str) -> Result<(), ClusterError> {
    let path = node.data_dir.join(file);
    let mut out = std::fs::OpenOptions::new()
        .append(true)
        .open(&path)
        .map_err(|e| ClusterError::io(&node.name, "could not open", &path, e))?;
    write!(out, "\n# added by pgshard\n{text}")
        .map_err(|e| ClusterError::io(&node.name, "could not write", &path, e))
}

/// Makes `replica` a streaming standby of the running `primary` (`-R` writes
/// primary_conninfo and standby.signal).
pub(crate) fn clone_replica(
    runner: &Runner,
    primary: &Node,
    replica: &Node,
    user: &str,
    password: &str,
) -> Result<(), ClusterError> {
    let mut cmd = runner.command("pg_basebackup");
    cmd.args([
        "-h",
        &primary.host,
        "-p",
        &primary.port.to_string(),
        "-U",
        user,
        "-D",
    ])
    .arg(&replica.data_dir)
    .args(["-R", "-X", "stream", "-c", "fast", "-N"])
    .env("PGPASSWORD", password);
    runner.run(&replica.name, &mut cmd)?;
    // The copy includes the primary's server log; a replica's log should be its own.
    let _ = std::fs::remove_file(log_path(replica));
    Ok(())
}

/// Starts the server and waits until it accepts connections (for a hot standby,
/// pg_ctl -w waits until it accepts read-only connections).
pub(crate) fn start(runner: &Runner, node: &Node) -> Result<(), ClusterError> {
    let log = log_path(node);
    let mut cmd = runner.command("pg_ctl");
    cmd.arg("-D").arg(&node.data_dir).arg("-l").arg(&log).args([
        "-w",
        "-t",
        PG_CTL_TIMEOUT_SECS,
        "start",
    ]);
    match runner.run(&node.name, &mut cmd) {
        Ok(_) => Ok(()),
        Err(ClusterError::CommandFailed { output, .. }) => Err(ClusterError::StartFailed {
            node: node.name.clone(),
            port: node.port,
            output,
            log_tail: tail(&log, LOG_TAIL_LINES),
            log,
        }),
        Err(other) => Err(other),
    }
}

pub(crate) fn stop(runner: &Runner, node: &Node) -> Result<(), ClusterError> {
    let mut cmd = runner.command("pg_ctl");
    cmd.arg("-D")
        .arg(&node.data_dir)
        .args(["-m", "fast", "-w", "-t", PG_CTL_TIMEOUT_SECS, "stop"]);
    runner.run(&node.name, &mut cmd).map(drop)
}

fn tail(path: &Path, lines: usize) -> String {
    match std::fs::read(path) {
        Ok(bytes) => {
            let text = String::from_utf8_lossy(&bytes);
            let all: Vec<&str> = text.lines().collect();
            all[all.len().saturating_sub(lines)..].join("\n")
        }
        Err(e) => format!("(could not read the log: {e})"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn quote_doubles_single_quotes() {
        assert_eq!(quote("/tmp/it's"), "'/tmp/it''s'");
    }

    #[test]
    fn tail_keeps_last_lines() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("log");
        std::fs::write(&path, "a\nb\nc\n").expect("write");
        assert_eq!(tail(&path, 2), "b\nc");
        assert_eq!(tail(&path, 10), "a\nb\nc");
    }
}
