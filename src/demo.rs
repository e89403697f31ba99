//! `pgshard demo`: local PostgreSQL clusters plus the proxy, on an embedded default
//! configuration, until Ctrl-C or SIGTERM; then every process it started is stopped.

use std::path::{Path, PathBuf};

use anyhow::Context;

use crate::cluster::{ClusterSpec, LocalClusters};
use crate::config::Config;
use crate::router::ShardMap;
use crate::server::Proxy;

/// The demo's user and password, for clients and for the backends alike.
pub const USER: &str = "pgshard";
pub const PASSWORD: &str = "pgshard";
/// The database clients connect to (the backends' default database).
pub const DATABASE: &str = "postgres";
/// Printed once the proxy accepts clients; the test harness waits for it.
pub const READY_LINE: &str = "pgshard demo is ready";

#[derive(Debug, Clone)]
pub struct DemoArgs {
    pub backends: usize,
    pub replicas: bool,
    pub port: u16,
    pub http_port: u16,
    pub dir: Option<PathBuf>,
    pub pool_size: usize,
}

pub async fn run(args: DemoArgs) -> anyhow::Result<()> {
    if args.backends == 0 {
        anyhow::bail!("--backends must be at least 1");
    }
    let (dir, temporary) = match &args.dir {
        Some(dir) => (dir.clone(), false),
        None => (
            std::env::temp_dir().join(format!("pgshard-demo-{}", std::process::id())),
            true,
        ),
    };
    let spec = ClusterSpec {
        dir: dir.clone(),
        backends: args.backends,
        replicas: args.replicas,
        user: USER.into(),
        password: PASSWORD.into(),
        port_base: None,
    };
    let mut clusters = tokio::task::spawn_blocking(move || LocalClusters::start(&spec))
        .await
        .context("cluster start panicked")??;
    let result = serve(&args, &dir, &clusters).await;
    tokio::task::spawn_blocking(move || clusters.stop())
        .await
        .ok();
    if temporary {
        let _ = std::fs::remove_dir_all(&dir);
    }
    result
}

async fn serve(args: &DemoArgs, dir: &Path, clusters: &LocalClusters) -> anyhow::Result<()> {
    let config_path = write_files(args, dir, clusters)?;
    let config = Config::load(&config_path)?;
    let proxy = Proxy::bind(config).await?;
    let addr = proxy.local_addr()?;
    let app = proxy.app.clone();
    let http = proxy.http_addr();
    let running = tokio::spawn(proxy.run());
    println!("{READY_LINE}");
    println!("  psql \"postgresql://{USER}:{PASSWORD}@{addr}/{DATABASE}\"");
    println!(
        "  admin console: psql \"postgresql://{USER}:{PASSWORD}@{addr}/pgshard\" -c 'SHOW SHARDS'"
    );
    if let Some(http) = http {
        println!("  admin HTTP API: http://{http}/api/shards  metrics: http://{http}/metrics");
    }
    println!("  config: {}", config_path.display());
    println!("  Ctrl-C stops the proxy and the clusters.");
    wait_for_signal().await;
    tracing::info!("stopping");
    app.shutdown.cancel();
    let _ = running.await;
    Ok(())
}

/// Writes `pgshard.toml` and `shardmap.toml` into `dir`; returns the config's path.
fn write_files(args: &DemoArgs, dir: &Path, clusters: &LocalClusters) -> anyhow::Result<PathBuf> {
    let backends: Vec<(String, String, Vec<String>)> = clusters
        .primaries()
        .map(|p| {
            let replicas = clusters
                .replicas_of(&p.name)
                .map(|r| clusters.socket_dsn(r, DATABASE))
                .collect();
            (p.name.clone(), clusters.socket_dsn(p, DATABASE), replicas)
        })
        .collect();
    std::fs::write(
        dir.join("shardmap.toml"),
        ShardMap::even_toml(&backends, 1000),
    )?;
    let config = format!(
        "listen = \"127.0.0.1:{}\"\nhttp_listen = \"127.0.0.1:{}\"\nshard_map = \"shardmap.toml\"\n\
         database = \"{DATABASE}\"\npool_size = {}\n\n\
         [[users]]\nname = \"{USER}\"\npassword = \"{PASSWORD}\"\nauth = \"scram-sha-256\"\nadmin = true\n",
        args.port, args.http_port, args.pool_size
    );
    let path = dir.join("pgshard.toml");
    std::fs::write(&path, config)?;
    Ok(path)
}

/// Waits for Ctrl-C or SIGTERM.
pub async fn wait_for_signal() {
    let ctrl_c = tokio::signal::ctrl_c();
    match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
        Ok(mut term) => {
            tokio::select! {
                _ = ctrl_c => {}
                _ = term.recv() => {}
            }
        }
        Err(_) => {
            let _ = ctrl_c.await;
        }
    }
}
