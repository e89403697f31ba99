//! The `pgshard` command line.

use std::path::PathBuf;

use clap::{Parser, Subcommand};
use pgshard::admin::cli;
use pgshard::config::Config;
use pgshard::demo::{self, DemoArgs};
use pgshard::server::Proxy;

#[derive(Parser)]
#[command(name = "pgshard", version, about = "A PostgreSQL-wire sharding proxy")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run the proxy with a configuration file.
    Run {
        #[arg(long, short, default_value = "pgshard.toml")]
        config: PathBuf,
    },
    /// Start local PostgreSQL clusters and the proxy in front of them.
    Demo {
        /// Number of primaries.
        #[arg(long, default_value_t = 2)]
        backends: usize,
        /// Add one streaming replica per primary.
        #[arg(long)]
        replicas: bool,
        /// Port the proxy listens on (0: any free port).
        #[arg(long, default_value_t = 6432)]
        port: u16,
        /// Port of the admin HTTP API (0: any free port).
        #[arg(long, default_value_t = 6480)]
        http_port: u16,
        /// Folder for the clusters, config and shard map (default: a temporary one,
        /// removed at exit).
        #[arg(long)]
        dir: Option<PathBuf>,
        /// Server connections per backend.
        #[arg(long, default_value_t = pgshard::limits::POOL_SIZE_DEFAULT)]
        pool_size: usize,
    },
    /// Show, compare, apply or roll back the running proxy's shard map.
    Map {
        #[command(subcommand)]
        command: MapCommand,
        /// The running proxy's admin HTTP API.
        #[arg(long, global = true, default_value = cli::ADMIN_DEFAULT)]
        admin: String,
    },
    /// Move one vshard to another backend, online.
    Move {
        vshard: u32,
        /// The backend that gets it.
        #[arg(long)]
        to: String,
        #[arg(long, default_value = cli::ADMIN_DEFAULT)]
        admin: String,
    },
    /// Move vshards until the backends are even (Ctrl-C stops after the move under way).
    Rebalance {
        /// What to even out: `count` (vshards per backend) or `load` (statements
        /// routed per vshard since the proxy started).
        #[arg(long, default_value = "count", value_parser = ["count", "load"])]
        by: String,
        /// Run at most this many moves.
        #[arg(long)]
        max_moves: Option<usize>,
        /// Print the plan only.
        #[arg(long)]
        dry_run: bool,
        #[arg(long, default_value = cli::ADMIN_DEFAULT)]
        admin: String,
    },
}

#[derive(Subcommand)]
enum MapCommand {
    /// Print the running map (TOML).
    Show,
    /// The maps applied so far.
    History,
    /// What applying FILE would change.
    Diff { file: String },
    /// Check FILE and make it the running map.
    Apply {
        file: String,
        /// Accept vshards changing backend without moving their rows.
        #[arg(long)]
        force: bool,
    },
    /// Apply the previous map again, as a new version.
    Rollback,
    /// Reload the proxy's map file (as SIGHUP does).
    Reload,
}

fn main() -> anyhow::Result<()> {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "info".into()),
        )
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .init();
    let cli = Cli::parse();
    let runtime = runtime()?;
    runtime.block_on(async {
        match cli.command {
            Command::Run { config } => run(config).await,
            Command::Demo {
                backends,
                replicas,
                port,
                http_port,
                dir,
                pool_size,
            } => {
                demo::run(DemoArgs {
                    backends,
                    replicas,
                    port,
                    http_port,
                    dir,
                    pool_size,
                })
                .await
            }
            admin => {
                if let Err(message) = run_admin(admin).await {
                    eprintln!("pgshard: {message}");
                    std::process::exit(1);
                }
                Ok(())
            }
        }
    })
}

async fn run_admin(command: Command) -> Result<(), String> {
    match command {
        Command::Map { command, admin } => {
            let admin = cli::Admin::new(&admin)?;
            match command {
                MapCommand::Show => cli::map_show(&admin).await,
                MapCommand::History => cli::map_history(&admin).await,
                MapCommand::Diff { file } => cli::map_diff(&admin, &file).await,
                MapCommand::Apply { file, force } => cli::map_apply(&admin, &file, force).await,
                MapCommand::Rollback => cli::map_rollback(&admin).await,
                MapCommand::Reload => cli::map_reload(&admin).await,
            }
        }
        Command::Move { vshard, to, admin } => {
            cli::move_vshard(&cli::Admin::new(&admin)?, vshard, &to).await
        }
        Command::Rebalance {
            by,
            max_moves,
            dry_run,
            admin,
        } => cli::rebalance(&cli::Admin::new(&admin)?, &by, max_moves, dry_run).await,
        Command::Run { .. } | Command::Demo { .. } => Ok(()),
    }
}

/// The tokio runtime: `PGSHARD_WORKERS` worker threads, by default half the cores (at
/// least one). With one worker everything runs on the calling thread, like PgBouncer.
/// The proxy shares its machine with its clients and often its servers: on 2 cores a
/// second worker thread costs more in cross-thread wakeups than it brings (see
/// benches/README.md).
fn runtime() -> anyhow::Result<tokio::runtime::Runtime> {
    let workers = match std::env::var("PGSHARD_WORKERS") {
        Ok(value) => parse_workers(&value)?,
        Err(std::env::VarError::NotPresent) => {
            default_workers(std::thread::available_parallelism().map_or(1, |n| n.get()))
        }
        Err(std::env::VarError::NotUnicode(value)) => parse_workers(&value.to_string_lossy())?,
    };
    let runtime = if workers == 1 {
        tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
    } else {
        tokio::runtime::Builder::new_multi_thread()
            .worker_threads(workers)
            .enable_all()
            .build()
    };
    Ok(runtime?)
}

fn default_workers(cores: usize) -> usize {
    (cores / 2).max(1)
}

fn parse_workers(value: &str) -> anyhow::Result<usize> {
    match value.trim().parse::<usize>() {
        Ok(n) if (1..=MAX_WORKERS).contains(&n) => Ok(n),
        _ => anyhow::bail!(
            "PGSHARD_WORKERS: must be a whole number 1..={MAX_WORKERS}, got {value:?}"
        ),
    }
}

/// Most worker threads `PGSHARD_WORKERS` may ask for.
const MAX_WORKERS: usize = 1024;

async fn run(config: PathBuf) -> anyhow::Result<()> {
    let config = Config::load(&config)?;
    let proxy = Proxy::bind(config).await?;
    // Scripts and tests wait for this line (the port may have been chosen by the OS).
    println!("pgshard listening on {}", proxy.local_addr()?);
    if let Some(http) = proxy.http_addr() {
        println!("pgshard admin HTTP API on http://{http}");
    }
    let app = proxy.app.clone();
    let running = tokio::spawn(proxy.run());
    demo::wait_for_signal().await;
    app.shutdown.cancel();
    let _ = running.await;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn workers_default_to_half_the_cores() {
        assert_eq!(default_workers(1), 1);
        assert_eq!(default_workers(2), 1);
        assert_eq!(default_workers(3), 1);
        assert_eq!(default_workers(8), 4);
    }

    #[test]
    fn workers_setting_is_checked() {
        assert_eq!(parse_workers("1").unwrap(), 1);
        assert_eq!(parse_workers(" 4 ").unwrap(), 4);
        for bad in ["0", "-1", "two", "", "1025"] {
            let err = parse_workers(bad).unwrap_err().to_string();
            assert!(err.starts_with("PGSHARD_WORKERS: must be"), "{bad}: {err}");
        }
    }
}
