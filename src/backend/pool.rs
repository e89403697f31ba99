//! A bounded pool of server connections per backend server, with an RAII checkout
//! [`Guard`] that returns a healthy, idle connection on drop and discards any other.

use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, Instant};

use tokio::sync::{OwnedSemaphorePermit, Semaphore};

use super::dsn::Dsn;
use super::mux::MuxConn;
use super::server::{ServerConn, ServerError};
use crate::limits;

#[derive(Debug, thiserror::Error)]
pub enum PoolError {
    #[error("timed out after {0:?} waiting for a server connection")]
    Timeout(Duration),
    #[error(transparent)]
    Server(#[from] ServerError),
}

/// Counters shown by `SHOW POOLS`, `SHOW STATS` and the HTTP API.
#[derive(Debug, Default)]
pub struct PoolStats {
    pub checkouts: AtomicU64,
    pub waits: AtomicU64,
    pub wait_us_total: AtomicU64,
    pub connects: AtomicU64,
    pub connect_errors: AtomicU64,
    pub discarded: AtomicU64,
    pub transactions: AtomicU64,
    pub queries: AtomicU64,
    /// Requests run on a shared connection (counted in `transactions` too).
    pub shared_requests: AtomicU64,
}

pub struct Pool {
    pub backend: Arc<str>,
    /// "primary" or "replica".
    pub role: &'static str,
    pub dsn: Dsn,
    pub size: usize,
    checkout_timeout: Duration,
    permits: Arc<Semaphore>,
    idle: Mutex<Vec<ServerConn>>,
    /// ParameterStatus values of the first server connection, sent to clients at login.
    startup_params: OnceLock<Vec<(String, String)>>,
    pub stats: PoolStats,
    shared: Mutex<Shared>,
}

/// The pool's shared (pipelined) server connections.
#[derive(Default)]
struct Shared {
    conns: Vec<Arc<MuxConn>>,
    /// Connections being opened.
    starting: usize,
    /// When opening one last failed.
    failed_at: Option<Instant>,
}

impl Pool {
    pub fn new(
        backend: &str,
        role: &'static str,
        dsn: Dsn,
        size: usize,
        checkout_timeout: Duration,
    ) -> Pool {
        Pool {
            backend: backend.into(),
            role,
            dsn,
            size,
            checkout_timeout,
            permits: Arc::new(Semaphore::new(size)),
            idle: Mutex::new(Vec::with_capacity(size)),
            startup_params: OnceLock::new(),
            stats: PoolStats::default(),
            shared: Mutex::new(Shared::default()),
        }
    }

    /// Connections checked out right now.
    pub fn active(&self) -> usize {
        self.size - self.permits.available_permits()
    }

    pub fn idle_count(&self) -> usize {
        self.idle.lock().map(|v| v.len()).unwrap_or(0)
    }

    /// Server parameters to report to clients, learned from a first connection.
    pub async fn startup_params(self: &Arc<Self>) -> Result<Vec<(String, String)>, PoolError> {
        if let Some(params) = self.startup_params.get() {
            return Ok(params.clone());
        }
        let guard = self.checkout().await?;
        drop(guard);
        Ok(self.startup_params.get().cloned().unwrap_or_default())
    }

    /// Takes a connection, waiting at most the checkout timeout for a free slot.
    /// Cancel safe: a dropped future holds no permit and no connection.
    pub async fn checkout(self: &Arc<Self>) -> Result<Guard, PoolError> {
        self.stats.checkouts.fetch_add(1, Relaxed);
        let permit = match self.permits.clone().try_acquire_owned() {
            Ok(permit) => permit,
            Err(_) => self.wait_for_permit().await?,
        };
        while let Some(conn) = self.pop_idle() {
            if still_healthy(&conn) {
                return Ok(Guard {
                    conn: Some(conn),
                    pool: self.clone(),
                    _permit: permit,
                });
            }
            self.stats.discarded.fetch_add(1, Relaxed);
        }
        let conn = self.connect().await?;
        Ok(Guard {
            conn: Some(conn),
            pool: self.clone(),
            _permit: permit,
        })
    }

    async fn wait_for_permit(self: &Arc<Self>) -> Result<OwnedSemaphorePermit, PoolError> {
        self.stats.waits.fetch_add(1, Relaxed);
        let started = Instant::now();
        let acquire = self.permits.clone().acquire_owned();
        let permit = tokio::time::timeout(self.checkout_timeout, acquire)
            .await
            .map_err(|_| PoolError::Timeout(self.checkout_timeout))?
            .map_err(|_| PoolError::Timeout(self.checkout_timeout))?;
        let waited = started.elapsed();
        self.stats
            .wait_us_total
            .fetch_add(waited.as_micros() as u64, Relaxed);
        metrics::histogram!("pgshard_pool_wait_seconds", "backend" => self.backend.to_string())
            .record(waited.as_secs_f64());
        Ok(permit)
    }

    async fn connect(&self) -> Result<ServerConn, PoolError> {
        self.stats.connects.fetch_add(1, Relaxed);
        match ServerConn::connect(&self.dsn).await {
            Ok(conn) => {
                let _ = self.startup_params.set(conn.params.clone());
                Ok(conn)
            }
            Err(e) => {
                self.stats.connect_errors.fetch_add(1, Relaxed);
                metrics::counter!("pgshard_backend_errors_total", "backend" => self.backend.to_string(), "kind" => "connect")
                    .increment(1);
                tracing::warn!(backend = %self.backend, error = %e, "server connection failed");
                Err(e.into())
            }
        }
    }

    /// Shared server connections open now.
    pub fn shared_count(&self) -> usize {
        self.shared.lock().map(|s| s.conns.len()).unwrap_or(0)
    }

    /// A shared connection carrying the session parameters `fingerprint` that can
    /// take one more request. `None`: the caller uses a connection of its own. When
    /// more shared connections could help (at most `max`, and never more than half
    /// the pool), one is opened in the background, never making the caller wait;
    /// `sync_sql` gives it the caller's parameters. A shared connection idle for a
    /// while gives its place to other settings that need one.
    pub fn shared(
        self: &Arc<Self>,
        fingerprint: u64,
        max: usize,
        depth: usize,
        sync_sql: impl FnOnce() -> String,
    ) -> Option<Arc<MuxConn>> {
        let mut shared = self.shared.lock().ok()?;
        shared.conns.retain(|c| c.is_alive());
        let best = shared
            .conns
            .iter()
            .filter(|c| c.fingerprint == fingerprint && c.accepts(depth))
            .min_by_key(|c| c.inflight())
            .cloned();
        if best.as_ref().is_some_and(|c| c.inflight() == 0) || shared.starting > 0 {
            return best;
        }
        let backoff = shared
            .failed_at
            .is_some_and(|at| at.elapsed() < limits::MUX_OPEN_BACKOFF);
        if backoff {
            return best;
        }
        if shared.conns.len() >= max.min(self.size / 2) {
            // Full: a connection of other settings that sat idle makes room.
            if best.is_none() {
                let idle = shared.conns.iter().find(|c| {
                    c.fingerprint != fingerprint
                        && c.inflight() == 0
                        && c.elapsed() >= limits::MUX_IDLE_RETIRE
                });
                if let Some(idle) = idle {
                    idle.close();
                }
            }
            return best;
        }
        let Ok(permit) = self.permits.clone().try_acquire_owned() else {
            return best;
        };
        shared.starting += 1;
        let pool = self.clone();
        let sql = (fingerprint != 0).then(sync_sql);
        tokio::spawn(async move {
            let opened = pool.open_shared(fingerprint, sql, permit).await;
            if let Ok(mut shared) = pool.shared.lock() {
                shared.starting -= 1;
                match opened {
                    Some(conn) => shared.conns.push(conn),
                    None => shared.failed_at = Some(Instant::now()),
                }
            }
        });
        best
    }

    async fn open_shared(
        &self,
        fingerprint: u64,
        sync_sql: Option<String>,
        permit: OwnedSemaphorePermit,
    ) -> Option<Arc<MuxConn>> {
        let mut server = self.connect().await.ok()?;
        if let Some(sql) = sync_sql {
            let sync = server.execute(&sql);
            match tokio::time::timeout(limits::SERVER_CONNECT_TIMEOUT, sync).await {
                Ok(Ok(())) => {}
                _ => return None,
            }
        }
        tracing::debug!(backend = %self.backend, "shared server connection opened");
        Some(MuxConn::start(
            server,
            self.backend.clone(),
            fingerprint,
            permit,
        ))
    }

    fn pop_idle(&self) -> Option<ServerConn> {
        self.idle.lock().ok()?.pop()
    }

    fn give_back(&self, conn: ServerConn) {
        let reusable =
            conn.idle && !conn.broken && conn.prepared.len() <= limits::SERVER_PREPARED_MAX;
        if !reusable {
            self.stats.discarded.fetch_add(1, Relaxed);
            return;
        }
        if let Ok(mut idle) = self.idle.lock() {
            idle.push(conn);
        }
    }
}

impl Drop for Pool {
    fn drop(&mut self) {
        if let Ok(shared) = self.shared.lock() {
            for conn in &shared.conns {
                conn.close();
            }
        }
    }
}

/// An idle server should have nothing to say; bytes or EOF mean it was terminated
/// (PostgreSQL sends a FATAL before closing) and must not be handed out.
fn still_healthy(conn: &ServerConn) -> bool {
    let mut probe = [0u8; 1];
    matches!(conn.stream.try_read(&mut probe), Err(e) if e.kind() == std::io::ErrorKind::WouldBlock)
}

/// A checked-out server connection; returns to the pool on drop.
pub struct Guard {
    conn: Option<ServerConn>,
    pool: Arc<Pool>,
    _permit: OwnedSemaphorePermit,
}

impl Guard {
    pub fn pool(&self) -> &Arc<Pool> {
        &self.pool
    }
}

impl std::ops::Deref for Guard {
    type Target = ServerConn;
    fn deref(&self) -> &ServerConn {
        // Invariant: `conn` is Some until drop.
        self.conn
            .as_ref()
            .expect("guard holds a connection until dropped")
    }
}

impl std::ops::DerefMut for Guard {
    fn deref_mut(&mut self) -> &mut ServerConn {
        self.conn
            .as_mut()
            .expect("guard holds a connection until dropped")
    }
}

impl Drop for Guard {
    fn drop(&mut self) {
        if let Some(conn) = self.conn.take() {
            self.pool.give_back(conn);
        }
    }
}
