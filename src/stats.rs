//! Metrics: handles registered once and kept, so the hot path never looks a metric up
//! by name. Served as Prometheus text at `/metrics` (see `admin::http`).
//! Labels come from closed sets and backend names, never from keys or SQL.

use metrics::{Counter, Gauge, Histogram};
use metrics_exporter_prometheus::{PrometheusBuilder, PrometheusHandle};

pub struct Stats {
    pub clients: Gauge,
    pub queries_simple: Counter,
    pub queries_extended: Counter,
    pub query_seconds: Histogram,
    /// Requests served on a shared (pipelined) server connection.
    pub shared_requests: Counter,
    pub prometheus: Option<PrometheusHandle>,
}

impl Stats {
    /// Installs the process-wide Prometheus recorder (the `metrics` crate has one
    /// global recorder) and registers pgshard's metrics with it.
    pub fn install() -> Stats {
        let prometheus = PrometheusBuilder::new()
            .set_buckets(&[0.0001, 0.0005, 0.001, 0.005, 0.01, 0.05, 0.1, 0.5, 1.0, 5.0])
            .ok()
            .and_then(|b| b.install_recorder().ok());
        Stats::register(prometheus)
    }

    /// Handles only, with whatever recorder is installed (none in unit tests).
    pub fn register(prometheus: Option<PrometheusHandle>) -> Stats {
        metrics::describe_gauge!("pgshard_client_connections", "Client connections open now");
        metrics::describe_counter!("pgshard_queries_total", "Queries by protocol kind");
        metrics::describe_histogram!("pgshard_query_duration_seconds", "Request to ReadyForQuery");
        metrics::describe_histogram!(
            "pgshard_pool_wait_seconds",
            "Time waited for a server connection"
        );
        metrics::describe_counter!(
            "pgshard_shared_requests_total",
            "Requests pipelined on a shared server connection"
        );
        metrics::describe_counter!(
            "pgshard_unrouted_statements_total",
            "Statements not routed by one key (run on every backend, or refused), by kind"
        );
        metrics::describe_counter!(
            "pgshard_backend_errors_total",
            "Backend errors by backend and kind"
        );
        metrics::describe_counter!(
            "pgshard_client_errors_total",
            "Errors sent to clients by kind"
        );
        Stats {
            clients: metrics::gauge!("pgshard_client_connections"),
            queries_simple: metrics::counter!("pgshard_queries_total", "kind" => "simple"),
            queries_extended: metrics::counter!("pgshard_queries_total", "kind" => "extended"),
            query_seconds: metrics::histogram!("pgshard_query_duration_seconds"),
            shared_requests: metrics::counter!("pgshard_shared_requests_total"),
            prometheus,
        }
    }

    pub fn client_error(kind: &'static str) {
        metrics::counter!("pgshard_client_errors_total", "kind" => kind).increment(1);
    }

    pub fn render(&self) -> String {
        self.prometheus
            .as_ref()
            .map(|p| p.render())
            .unwrap_or_default()
    }
}
