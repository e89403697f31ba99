//! The tables both the console (`SHOW ...`) and the HTTP API serve, built once here.

use std::sync::atomic::Ordering::Relaxed;
use std::time::UNIX_EPOCH;

use crate::app::App;

pub struct Table {
    pub columns: &'static [&'static str],
    pub rows: Vec<Vec<String>>,
}

impl Table {
    /// Rows as JSON objects keyed by column name.
    pub fn to_json(&self) -> serde_json::Value {
        let rows = self.rows.iter().map(|row| {
            let obj = self
                .columns
                .iter()
                .zip(row)
                .map(|(c, v)| (c.to_string(), serde_json::Value::String(v.clone())));
            serde_json::Value::Object(obj.collect())
        });
        serde_json::Value::Array(rows.collect())
    }
}

pub fn shards(app: &App) -> Table {
    let topology = app.topology.load();
    let counts = topology.map.vshard_counts();
    let mut rows = Vec::new();
    for (backend, count) in topology.map.backends.iter().zip(counts) {
        let nodes = std::iter::once(("primary", &backend.primary))
            .chain(backend.replicas.iter().map(|r| ("replica", r)));
        for (role, dsn) in nodes {
            rows.push(vec![
                backend.name.clone(),
                role.into(),
                dsn.host.clone(),
                dsn.port.to_string(),
                count.to_string(),
            ]);
        }
    }
    Table {
        columns: &["name", "role", "host", "port", "vshards"],
        rows,
    }
}

/// Each vshard's backend, and which one is moving.
pub fn vshards(app: &App) -> Table {
    let topology = app.topology.load();
    let map = &topology.map;
    let moving = app.gate.moving();
    let rows = (0..map.vshards())
        .map(|v| {
            let state = if moving == Some(v) { "moving" } else { "" };
            vec![
                v.to_string(),
                map.owner_name(v).unwrap_or("").to_string(),
                state.to_string(),
            ]
        })
        .collect();
    Table {
        columns: &["vshard", "backend", "state"],
        rows,
    }
}

pub fn pools(app: &App) -> Table {
    let topology = app.topology.load();
    let rows = topology
        .pools
        .iter()
        .map(|p| {
            vec![
                p.backend.to_string(),
                p.role.into(),
                p.dsn.host.clone(),
                p.dsn.port.to_string(),
                p.size.to_string(),
                p.active().to_string(),
                p.idle_count().to_string(),
                p.shared_count().to_string(),
                p.stats.waits.load(Relaxed).to_string(),
            ]
        })
        .collect();
    Table {
        columns: &[
            "backend",
            "role",
            "host",
            "port",
            "pool_size",
            "active",
            "idle",
            "shared",
            "waits",
        ],
        rows,
    }
}

pub fn stats(app: &App) -> Table {
    let topology = app.topology.load();
    let rows = topology
        .pools
        .iter()
        .map(|p| {
            let s = &p.stats;
            let waits = s.waits.load(Relaxed);
            let avg_wait = s
                .wait_us_total
                .load(Relaxed)
                .checked_div(waits)
                .unwrap_or(0);
            vec![
                p.backend.to_string(),
                s.transactions.load(Relaxed).to_string(),
                s.queries.load(Relaxed).to_string(),
                s.shared_requests.load(Relaxed).to_string(),
                s.checkouts.load(Relaxed).to_string(),
                waits.to_string(),
                avg_wait.to_string(),
                s.connects.load(Relaxed).to_string(),
                s.connect_errors.load(Relaxed).to_string(),
                s.discarded.load(Relaxed).to_string(),
            ]
        })
        .collect();
    let columns = &[
        "backend",
        "transactions",
        "queries",
        "shared_requests",
        "checkouts",
        "waits",
        "avg_wait_us",
        "server_connects",
        "server_connect_errors",
        "server_discarded",
    ];
    Table { columns, rows }
}

pub fn clients(app: &App) -> Table {
    let rows = app
        .clients
        .list()
        .iter()
        .map(|c| {
            let backend = c.backend();
            let since = c
                .connected_at
                .duration_since(UNIX_EPOCH)
                .map(|d| d.as_secs())
                .unwrap_or(0);
            vec![
                c.pid.to_string(),
                c.user.clone(),
                c.database.clone(),
                c.addr.to_string(),
                c.application_name.clone(),
                if backend.is_some() { "active" } else { "idle" }.into(),
                backend.unwrap_or_default(),
                since.to_string(),
            ]
        })
        .collect();
    let columns = &[
        "pid",
        "user",
        "database",
        "addr",
        "application_name",
        "state",
        "backend",
        "connected_at",
    ];
    Table { columns, rows }
}

pub fn version() -> Table {
    Table {
        columns: &["version"],
        rows: vec![vec![format!("pgshard {}", env!("CARGO_PKG_VERSION"))]],
    }
}
