//! `pgshard rebalance`: plans moves that even out the backends, by vshard count or
//! by measured load (statements routed to each vshard since the proxy started),
//! including onto a backend just added to the map; runs them one at a time in the
//! background; reports progress; stops between two moves when asked.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Instant;

use super::mover::move_vshard;
use crate::app::App;
use crate::router::ShardMap;

#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum By {
    /// Each backend gets vshards / backends vshards (give or take one).
    Count,
    /// Each backend gets about the same share of the statements routed by key.
    Load,
}

#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct Planned {
    pub vshard: u32,
    pub from: String,
    pub to: String,
}

/// Moves that even out `map` by vshard count, at most `max`.
pub fn by_count(map: &ShardMap, max: usize) -> Vec<Planned> {
    let n = map.backends.len();
    let (base, extra) = (map.vshards() as usize / n, map.vshards() as usize % n);
    let mut counts = map.vshard_counts();
    // The backends holding the most keep the extra vshards: fewer moves.
    let mut order: Vec<usize> = (0..n).collect();
    order.sort_by_key(|&b| std::cmp::Reverse(counts[b]));
    let mut want = vec![base; n];
    for &b in order.iter().take(extra) {
        want[b] += 1;
    }
    let mut owned: Vec<Vec<u32>> = vec![Vec::new(); n];
    for (v, &b) in map.assignment.iter().enumerate() {
        owned[b].push(v as u32);
    }
    let mut out = Vec::new();
    while out.len() < max {
        let over = (0..n)
            .filter(|&b| counts[b] > want[b])
            .max_by_key(|&b| counts[b] - want[b]);
        let under = (0..n)
            .filter(|&b| counts[b] < want[b])
            .max_by_key(|&b| want[b] - counts[b]);
        let (Some(from), Some(to)) = (over, under) else {
            break;
        };
        // The highest vshard first: ranges stay contiguous.
        let Some(vshard) = owned[from].pop() else {
            break;
        };
        counts[from] -= 1;
        counts[to] += 1;
        out.push(planned(map, vshard, from, to));
    }
    out
}

/// Moves that even out `map` by `load` per vshard, at most `max`: each takes a
/// vshard from the busiest backend to the idlest one when that narrows the gap.
pub fn by_load(map: &ShardMap, load: &[u64], max: usize) -> Vec<Planned> {
    let n = map.backends.len();
    let mut owner = map.assignment.clone();
    let mut totals = vec![0u64; n];
    for (v, &b) in owner.iter().enumerate() {
        totals[b] += load.get(v).copied().unwrap_or(0);
    }
    let mut out = Vec::new();
    while out.len() < max {
        let (Some(from), Some(to)) = (
            (0..n).max_by_key(|&b| totals[b]),
            (0..n).min_by_key(|&b| totals[b]),
        ) else {
            break;
        };
        let gap = totals[from] - totals[to];
        // The vshard whose load comes closest to half the gap without passing it.
        let best = (0..owner.len())
            .filter(|&v| owner[v] == from)
            .map(|v| (v, load.get(v).copied().unwrap_or(0)))
            .filter(|&(_, l)| l > 0 && l < gap)
            .min_by_key(|&(_, l)| (gap / 2).abs_diff(l));
        let Some((vshard, l)) = best else {
            break;
        };
        owner[vshard] = to;
        totals[from] -= l;
        totals[to] += l;
        out.push(planned(map, vshard as u32, from, to));
    }
    out
}

fn planned(map: &ShardMap, vshard: u32, from: usize, to: usize) -> Planned {
    Planned {
        vshard,
        from: map.backends[from].name.clone(),
        to: map.backends[to].name.clone(),
    }
}

/// Where a rebalance stands.
#[derive(Debug, Clone, Default, serde::Serialize)]
pub struct Progress {
    pub running: bool,
    pub planned: usize,
    pub done: usize,
    pub failed: usize,
    pub rows_copied: u64,
    pub elapsed_s: f64,
    /// Seconds left at the pace so far.
    pub eta_s: Option<f64>,
    pub current: Option<u32>,
    pub stopped: bool,
    pub errors: Vec<String>,
    pub moves: Vec<Planned>,
}

/// The rebalance job of a proxy (one at a time).
#[derive(Default)]
pub struct Rebalancer {
    progress: Mutex<Progress>,
    stop: AtomicBool,
}

impl Rebalancer {
    fn lock(&self) -> std::sync::MutexGuard<'_, Progress> {
        self.progress.lock().unwrap_or_else(|e| e.into_inner())
    }

    pub fn progress(&self) -> Progress {
        self.lock().clone()
    }

    /// Asks the running rebalance to stop after its current move.
    pub fn stop(&self) {
        self.stop.store(true, Ordering::Release);
    }
}

/// Plans a rebalance and, unless `dry_run`, starts it in the background.
pub fn start(app: &Arc<App>, by: By, max: usize, dry_run: bool) -> Result<Progress, String> {
    let map = app.topology.load().map.clone();
    let moves = match by {
        By::Count => by_count(&map, max),
        By::Load => by_load(&map, &map.load.snapshot(), max),
    };
    let plan = Progress {
        running: !dry_run && !moves.is_empty(),
        planned: moves.len(),
        moves,
        ..Progress::default()
    };
    if dry_run {
        return Ok(plan);
    }
    {
        let mut progress = app.rebalancer.lock();
        if progress.running {
            return Err("a rebalance is running; stop it first".into());
        }
        *progress = plan.clone();
    }
    app.rebalancer.stop.store(false, Ordering::Release);
    tracing::info!(moves = plan.planned, ?by, "rebalance started");
    tokio::spawn(run(app.clone(), plan.moves.clone()));
    Ok(plan)
}

async fn run(app: Arc<App>, moves: Vec<Planned>) {
    let started = Instant::now();
    let total = moves.len();
    for planned in moves {
        if app.rebalancer.stop.load(Ordering::Acquire) {
            app.rebalancer.lock().stopped = true;
            tracing::info!("rebalance stopped");
            break;
        }
        app.rebalancer.lock().current = Some(planned.vshard);
        let result = move_vshard(&app, planned.vshard, &planned.to).await;
        let mut progress = app.rebalancer.lock();
        let mut stop = false;
        match result {
            Ok(report) => {
                progress.done += 1;
                progress.rows_copied += report.rows_copied;
            }
            Err(e) => {
                // A move left unfinished must be finished before any other starts.
                stop = matches!(
                    e,
                    super::MoveError::Unfinished(..) | super::MoveError::Busy(_)
                );
                progress.failed += 1;
                progress.errors.push(e.to_string());
            }
        }
        let finished = progress.done + progress.failed;
        progress.elapsed_s = started.elapsed().as_secs_f64();
        progress.eta_s = Some(progress.elapsed_s / finished as f64 * (total - finished) as f64);
        progress.current = None;
        if stop {
            progress.stopped = true;
            tracing::warn!("rebalance stopped: a move did not finish");
            break;
        }
    }
    let mut progress = app.rebalancer.lock();
    progress.running = false;
    progress.elapsed_s = started.elapsed().as_secs_f64();
    tracing::info!(
        done = progress.done,
        failed = progress.failed,
        "rebalance finished"
    );
}

#[cfg(test)]
mod tests {
    use super::*;

    fn map(backends: usize, assign: &str) -> ShardMap {
        let mut text = "version = 1\nvshards = 10\ndefault_backend = \"b0\"\n".to_string();
        for i in 0..backends {
            text +=
                &format!("[[backends]]\nname = \"b{i}\"\nprimary = \"postgresql://u@h:{i}/d\"\n");
        }
        ShardMap::parse(&format!("{text}[assign]\n{assign}\n")).unwrap()
    }

    fn apply(map: &ShardMap, moves: &[Planned]) -> Vec<usize> {
        let mut map = map.clone();
        for m in moves {
            assert_eq!(map.owner_name(m.vshard), Some(m.from.as_str()));
            map.assignment[m.vshard as usize] = map.backend_id(&m.to).unwrap();
        }
        map.vshard_counts()
    }

    #[test]
    fn counts_even_out_onto_a_new_backend() {
        let map = map(3, "\"0-4\" = \"b0\"\n\"5-9\" = \"b1\"");
        let moves = by_count(&map, 100);
        assert_eq!(moves.len(), 3);
        assert_eq!(apply(&map, &moves), vec![4, 3, 3]);
        assert!(moves.iter().all(|m| m.to == "b2"));
        assert_eq!(by_count(&map, 2).len(), 2, "capped");
        let even = self::map(2, "\"0-4\" = \"b0\"\n\"5-9\" = \"b1\"");
        assert!(by_count(&even, 100).is_empty());
    }

    #[test]
    fn load_moves_busy_vshards_to_the_idle_backend() {
        let map = map(2, "\"0-4\" = \"b0\"\n\"5-9\" = \"b1\"");
        let load = [50, 50, 10, 10, 0, 1, 1, 1, 1, 1];
        let moves = by_load(&map, &load, 100);
        let mut totals = [0u64; 2];
        let mut owner = map.assignment.clone();
        for m in &moves {
            owner[m.vshard as usize] = map.backend_id(&m.to).unwrap();
        }
        for (v, &b) in owner.iter().enumerate() {
            totals[b] += load[v];
        }
        assert_eq!(totals, [62, 63]);
        assert!(by_load(&map, &[0; 10], 100).is_empty());
    }
}
