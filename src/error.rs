//! Errors that reach a client. Every kind maps to a SQLSTATE and a metrics label, and
//! its message is written here, so backend addresses and internals never leak
//! (the allow-list idea from neon's proxy).

use bytes::BytesMut;

use crate::protocol::messages;

#[derive(Debug, Clone, thiserror::Error)]
pub enum ClientError {
    #[error("password authentication failed for user \"{0}\"")]
    AuthFailed(String),
    #[error("database \"{0}\" does not exist")]
    UnknownDatabase(String),
    #[error("protocol violation: {0}")]
    Protocol(String),
    #[error("no server connection to backend \"{0}\" became free in time")]
    PoolTimeout(String),
    #[error("backend \"{0}\" is unavailable")]
    ServerUnavailable(String),
    #[error("server connection to backend \"{0}\" was lost; the current transaction is gone")]
    ServerLost(String),
    #[error("prepared statement \"{0}\" does not exist")]
    UnknownStatement(String),
    #[error("prepared statement \"{0}\" already exists")]
    DuplicateStatement(String),
    #[error("too many {0}")]
    TooMany(&'static str),
    #[error("{0}")]
    Unsupported(String),
    #[error("{0}")]
    AdminSyntax(String),
    #[error("the proxy is shutting down")]
    ShuttingDown,
    #[error("could not restore this session's parameters on a server connection ({0}); they were reset to their defaults")]
    SessionRestore(String),
    #[error("the statement left a transaction open on a shared server connection; it was rolled back (use BEGIN to open transactions)")]
    SharedTransaction,
    #[error("current transaction is aborted, commands ignored until end of transaction block")]
    TransactionAborted,
    #[error(
        "the outcome of the commit is unknown: {0}; pgshard's recovery completes or undoes it"
    )]
    CommitUnknown(String),
    #[error("the transaction was rolled back: {0}")]
    RolledBack(String),
}

impl ClientError {
    pub fn sqlstate(&self) -> &'static str {
        match self {
            ClientError::AuthFailed(_) => "28P01",
            ClientError::UnknownDatabase(_) => "3D000",
            ClientError::Protocol(_) => "08P01",
            ClientError::PoolTimeout(_) | ClientError::TooMany(_) => "53300",
            ClientError::ServerUnavailable(_) | ClientError::ServerLost(_) => "08006",
            ClientError::UnknownStatement(_) => "26000",
            ClientError::DuplicateStatement(_) => "42P05",
            ClientError::Unsupported(_) => "0A000",
            ClientError::AdminSyntax(_) => "42601",
            ClientError::ShuttingDown => "57P01",
            ClientError::SessionRestore(_) => "55000",
            ClientError::SharedTransaction => "25000",
            ClientError::TransactionAborted => "25P02",
            ClientError::CommitUnknown(_) => "08007",
            ClientError::RolledBack(_) => "40000",
        }
    }

    /// Label for metrics; a closed set.
    pub fn kind(&self) -> &'static str {
        match self {
            ClientError::AuthFailed(_) => "auth_failed",
            ClientError::UnknownDatabase(_) => "unknown_database",
            ClientError::Protocol(_) => "protocol",
            ClientError::PoolTimeout(_) => "pool_timeout",
            ClientError::ServerUnavailable(_) => "server_unavailable",
            ClientError::ServerLost(_) => "server_lost",
            ClientError::UnknownStatement(_) => "unknown_statement",
            ClientError::DuplicateStatement(_) => "duplicate_statement",
            ClientError::TooMany(_) => "too_many",
            ClientError::Unsupported(_) => "unsupported",
            ClientError::AdminSyntax(_) => "admin_syntax",
            ClientError::ShuttingDown => "shutting_down",
            ClientError::SessionRestore(_) => "session_restore",
            ClientError::SharedTransaction => "shared_transaction",
            ClientError::TransactionAborted => "transaction_aborted",
            ClientError::CommitUnknown(_) => "commit_unknown",
            ClientError::RolledBack(_) => "rolled_back",
        }
    }

    /// Appends this error as an ErrorResponse (severity ERROR).
    pub fn write(&self, buf: &mut BytesMut) {
        messages::error_response(buf, self.sqlstate(), &self.to_string());
    }

    /// Appends this error as a FATAL ErrorResponse (the connection closes after it).
    pub fn write_fatal(&self, buf: &mut BytesMut) {
        messages::fatal_response(buf, self.sqlstate(), &self.to_string());
    }
}
