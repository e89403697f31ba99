//! Starting the proxy: load config and shard map, bind listeners, run until shutdown.

use std::sync::Arc;

use anyhow::Context;
use tokio::net::TcpListener;

use crate::app::App;
use crate::config::Config;
use crate::maps::{History, How};
use crate::router::ShardMap;
use crate::stats::Stats;

/// A proxy that is listening; `run` serves until `app.shutdown` is cancelled.
pub struct Proxy {
    pub app: Arc<App>,
    listener: TcpListener,
    http: Option<TcpListener>,
}

impl Proxy {
    pub async fn bind(config: Config) -> anyhow::Result<Proxy> {
        let map = ShardMap::load(&config.shard_map)?;
        if config.pool_mode == crate::config::PoolMode::Session && map.backends.len() > 1 {
            anyhow::bail!(
                "pool_mode = \"session\" works with one backend only (a session keeps its \
                 server connection, so it cannot follow keys to other backends); the shard \
                 map lists {}",
                map.backends.len()
            );
        }
        let listener = TcpListener::bind(config.listen)
            .await
            .with_context(|| format!("cannot listen on {}", config.listen))?;
        let http = match config.http_listen {
            Some(addr) => Some(
                TcpListener::bind(addr)
                    .await
                    .with_context(|| format!("cannot listen on {addr}"))?,
            ),
            None => None,
        };
        let history = History::open(&config.state_dir.join("maps")).with_context(|| {
            format!(
                "cannot open the map history in {}",
                config.state_dir.display()
            )
        })?;
        history.record(&map, How::Start)?;
        metrics::gauge!("pgshard_map_version").set(map.version as f64);
        let app = App::new(config, map, history, Stats::install());
        Ok(Proxy {
            app,
            listener,
            http,
        })
    }

    pub fn local_addr(&self) -> std::io::Result<std::net::SocketAddr> {
        self.listener.local_addr()
    }

    /// The admin HTTP API's address, when it listens.
    pub fn http_addr(&self) -> Option<std::net::SocketAddr> {
        self.http.as_ref().and_then(|l| l.local_addr().ok())
    }

    pub async fn run(self) {
        let Proxy {
            app,
            listener,
            http,
        } = self;
        // Before clients (and admins): a move a crash interrupted is completed or
        // undone.
        crate::moves::recovery::at_start(&app).await;
        if let Some(http) = http {
            tokio::spawn(crate::admin::http::serve(app.clone(), http));
        }
        tokio::spawn(recover_two_phase(app.clone()));
        tokio::spawn(reload_on_hangup(app.clone()));
        tracing::info!(addr = %app.config.listen, "pgshard is listening");
        crate::frontend::serve(app, listener).await;
    }
}

/// Resolves prepared transactions left by two-phase commits, at start and then
/// periodically (see `backend::twophase`).
async fn recover_two_phase(app: Arc<App>) {
    loop {
        let pools = app.topology.load().pools.clone();
        match app.coordinator.recover(&pools).await {
            Ok(done) if done.committed + done.rolled_back > 0 => {
                tracing::info!(
                    committed = done.committed,
                    rolled_back = done.rolled_back,
                    "two-phase recovery"
                );
            }
            Ok(_) => {}
            Err(e) => tracing::warn!(error = %e, "two-phase recovery failed; will retry"),
        }
        tokio::select! {
            _ = tokio::time::sleep(app.config.two_phase_recovery_interval) => {}
            _ = app.shutdown.cancelled() => return,
        }
    }
}

/// SIGHUP reloads the shard map file (as the console's RELOAD does).
async fn reload_on_hangup(app: Arc<App>) {
    use tokio::signal::unix::{signal, SignalKind};
    let Ok(mut hangups) = signal(SignalKind::hangup()) else {
        tracing::warn!("cannot listen for SIGHUP; reload with RELOAD or the API");
        return;
    };
    loop {
        tokio::select! {
            _ = hangups.recv() => {}
            _ = app.shutdown.cancelled() => return,
        }
        tracing::info!("SIGHUP: reloading the shard map file");
        // apply_map logs the outcome.
        let _ = app.reload_map().await;
    }
}
