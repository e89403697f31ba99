//! The one server connection a transaction runs on (transaction pooling): checked
//! out carrying the client's settings, attached (after the BEGIN the client was
//! already answered, when there is one), and released at ReadyForQuery 'I'.

use std::sync::Arc;

use bytes::Bytes;

use super::Session;
use crate::backend::pool::{Guard, Pool, PoolError};
use crate::backend::server::ServerError;
use crate::config::PoolMode;
use crate::error::ClientError;
use crate::frontend::params::ClientParams;
use crate::limits;
use crate::router::BackendId;

impl Session {
    /// A server connection from `pool` for this client: not idle (an early drop
    /// discards it rather than pool one left mid-transaction), carrying the
    /// client's settings.
    pub(super) async fn checkout(&mut self, pool: &Arc<Pool>) -> Result<Guard, ClientError> {
        let mut server = pool.checkout().await.map_err(|e| match e {
            PoolError::Timeout(_) => ClientError::PoolTimeout(pool.backend.to_string()),
            PoolError::Server(_) => ClientError::ServerUnavailable(pool.backend.to_string()),
        })?;
        server.idle = false;
        if server.params_fingerprint != self.params.fingerprint() {
            self.restore_params(&mut server).await?;
        }
        Ok(server)
    }

    pub(super) async fn attach(&mut self, id: BackendId) -> Result<(), ClientError> {
        let topology = self.topology();
        let pool = topology.pool(id).clone();
        self.touched = false;
        let server = match self.deferred_begin.take() {
            // The BEGIN the client was already told about.
            Some(begin) => {
                self.begin = Some(begin.clone());
                self.checkout_begun(&pool, &begin).await?
            }
            None => {
                self.begin = None;
                self.pipeline.tx_status = b'I';
                self.checkout(&pool).await?
            }
        };
        self.unnamed_here = false;
        self.info.attach(&pool.backend, &server.cancel);
        self.server = Some(server);
        self.backend = Some(id);
        Ok(())
    }

    /// A server from `pool` that has run `begin`. A pooled connection may have died
    /// while idle (terminated by an admin, a restart) without the pool seeing it
    /// yet: nothing of the transaction ran there, so another is tried.
    pub(super) async fn checkout_begun(
        &mut self,
        pool: &Arc<Pool>,
        begin: &Bytes,
    ) -> Result<Guard, ClientError> {
        for _ in 0..limits::BEGIN_ATTEMPTS {
            let mut server = self.checkout(pool).await?;
            match server.exchange(begin).await {
                Ok(frames) if frames.iter().any(|f| f.first() == Some(&b'E')) => {
                    server.broken = true;
                    break;
                }
                Ok(_) => return Ok(server),
                // The connection failed: `exchange` marked it broken.
                Err(_) => {}
            }
        }
        Err(ClientError::ServerLost(pool.backend.to_string()))
    }

    /// Gives the server this client's session parameters (one round trip, only when
    /// the server carries other settings). If the server refuses them, the server is
    /// discarded (the failed statement rolled back its RESET ALL too) and the client
    /// is told, and its settings go back to the defaults so it is not stuck.
    pub(super) async fn restore_params(&mut self, server: &mut Guard) -> Result<(), ClientError> {
        let sql = self.params.sync_sql();
        let result = tokio::time::timeout(limits::SERVER_CONNECT_TIMEOUT, server.execute(&sql));
        let reason = match result.await {
            Ok(Ok(())) => {
                server.params_fingerprint = self.params.fingerprint();
                return Ok(());
            }
            Ok(Err(ServerError::Server(fields))) => fields.message,
            Ok(Err(e)) => e.to_string(),
            Err(_) => "timed out".into(),
        };
        server.broken = true;
        self.params = ClientParams::default();
        Err(ClientError::SessionRestore(reason))
    }

    pub(super) fn maybe_release(&mut self) {
        if self.app.config.pool_mode == PoolMode::Session {
            return;
        }
        let Some(server) = &self.server else { return };
        if self.pipeline.is_idle() && server.rbuf.is_empty() && self.swbuf.is_empty() {
            self.release();
        }
    }

    pub(super) fn release(&mut self) {
        self.backend = None;
        if let Some(mut server) = self.server.take() {
            server.idle = true;
            server
                .pool()
                .stats
                .transactions
                .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        }
        self.info.detach();
    }
}
