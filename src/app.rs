//! The shared state handed to every task: config, the topology snapshot, the client
//! registry, metrics handles. Passed in, never global, so tests can run several.

use std::sync::Arc;
use std::time::Instant;

use arc_swap::ArcSwap;
use tokio_util::sync::CancellationToken;

use crate::backend::twophase::Coordinator;
use crate::backend::Topology;
use crate::config::Config;
use crate::frontend::auth::Secrets;
use crate::frontend::clients::ClientRegistry;
use crate::frontend::statements::KnownStatements;
use crate::limits;
use crate::maps::History;
use crate::moves::gate::Gate;
use crate::moves::rebalance::Rebalancer;
use crate::router::sql::PlanCache;
use crate::router::ShardMap;
use crate::stats::Stats;

pub struct App {
    pub config: Config,
    /// The running shard map and its pools; requests load it once per transaction.
    pub topology: ArcSwap<Topology>,
    pub clients: ClientRegistry,
    pub secrets: Secrets,
    /// Statements some server accepted; a Parse of one needs no server.
    pub known_statements: KnownStatements,
    /// Routing plans by statement shape.
    pub plans: PlanCache,
    /// Two-phase commits across backends; its decision log is on the default backend.
    pub coordinator: Coordinator,
    /// Holds a moving vshard's statements for a moment (`moves::gate`).
    pub gate: Arc<Gate>,
    /// One shard map change at a time: apply, rollback, reload, a move's switch.
    pub map_changes: tokio::sync::Mutex<()>,
    /// The maps applied so far (`maps::history`).
    pub history: Arc<History>,
    /// The rebalance job, if one ran (`moves::rebalance`).
    pub rebalancer: Rebalancer,
    /// A background retry of an unfinished move's recovery runs.
    pub move_recovery: std::sync::atomic::AtomicBool,
    pub stats: Stats,
    pub shutdown: CancellationToken,
    pub started: Instant,
}

impl App {
    pub fn new(config: Config, map: ShardMap, history: History, stats: Stats) -> Arc<App> {
        let topology = Topology::new(map, None, config.pool_size, config.checkout_timeout);
        let secrets = Secrets::new(&config.users);
        let log = topology.pool(topology.map.default_backend).clone();
        let coordinator = Coordinator::new(log, limits::TWO_PHASE_ABORT_AFTER);
        Arc::new(App {
            config,
            topology: ArcSwap::from_pointee(topology),
            clients: ClientRegistry::default(),
            secrets,
            known_statements: KnownStatements::default(),
            plans: PlanCache::default(),
            coordinator,
            gate: Arc::default(),
            map_changes: tokio::sync::Mutex::new(()),
            history: Arc::new(history),
            rebalancer: Rebalancer::default(),
            move_recovery: Default::default(),
            stats,
            shutdown: CancellationToken::new(),
            started: Instant::now(),
        })
    }
}
