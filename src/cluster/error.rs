//! The one error type of the `cluster` layer. Every variant names the node and, where
//! a program failed, the command line and what it printed, because these errors are
//! read by a person whose demo or test run just failed.

use std::path::PathBuf;

/// Environment variable that points at a directory holding `initdb`, `pg_ctl`, ...
pub const PG_BIN_ENV: &str = "PGSHARD_PG_BIN";

#[derive(thiserror::Error, Debug)]
pub enum ClusterError {
    #[error(
        "PostgreSQL binaries not found ({searched}); install the Debian package postgresql-15 \
         (apt-get install -y postgresql-15) or set {PG_BIN_ENV} to the directory holding initdb"
    )]
    BinariesMissing { searched: String },

    #[error(
        "running as root, but PostgreSQL refuses to run as root and there is no `postgres` \
         OS user to run it as; create one (useradd --system postgres) or run as another user"
    )]
    NoPostgresUser,

    #[error("invalid cluster spec: {0}")]
    InvalidSpec(String),

    #[error("no free TCP port on 127.0.0.1: {0}")]
    NoFreePort(#[source] std::io::Error),

    #[error("{node}: {action} {}: {source}", path.display())]
    Io {
        node: String,
        action: &'static str,
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },

    #[error("{node}: could not run `{command}`: {source}")]
    Spawn {
        node: String,
        command: String,
        #[source]
        source: std::io::Error,
    },

    #[error("{node}: `{command}` failed ({status}): {output}")]
    CommandFailed {
        node: String,
        command: String,
        status: String,
        /// stderr, or stdout when stderr was empty; trimmed.
        output: String,
    },

    #[error(
        "{node}: PostgreSQL did not start on port {port}: {output}\n\
         last lines of {}:\n{log_tail}", log.display()
    )]
    StartFailed {
        node: String,
        port: u16,
        output: String,
        log: PathBuf,
        log_tail: String,
    },
}

impl ClusterError {
    /// True when a server could not start because its port was taken between picking
    /// it and binding it (another process won the race for a "free" port).
    pub fn is_address_in_use(&self) -> bool {
        match self {
            ClusterError::StartFailed { log_tail, .. } => {
                log_tail.contains("Address already in use")
            }
            _ => false,
        }
    }

    /// True when initdb rejected the requested locale (not every system has C.UTF-8).
    pub(crate) fn is_locale_problem(&self) -> bool {
        match self {
            ClusterError::CommandFailed { output, .. } => output.to_lowercase().contains("locale"),
            _ => false,
        }
    }

    pub(crate) fn io(
        node: &str,
        action: &'static str,
        path: impl Into<PathBuf>,
        source: std::io::Error,
    ) -> ClusterError {
        ClusterError::Io {
            node: node.to_string(),
            action,
            path: path.into(),
            source,
        }
    }
}
