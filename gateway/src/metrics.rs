//! What the gateway tells Prometheus at `/metrics`.

use std::sync::Arc;

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::Histogram;
use prometheus_client::registry::Registry;

use crate::state::TaskState;

/// The label of a task count.
#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct StatusLabel {
    /// `pending`, `running`, ...
    pub status: String,
}

/// The gateway's metrics; cheap to clone.
#[derive(Clone)]
pub struct GatewayMetrics {
    registry: Arc<Registry>,
    /// Tasks held, by status (read from the store at each scrape).
    pub tasks: Family<StatusLabel, Gauge>,
    /// Tasks accepted (`201`).
    pub submitted: Counter,
    /// Open event streams.
    pub sse_clients: Gauge,
    /// Seconds from a runner's event to the gateway storing it.
    pub event_lag: Histogram,
    /// 1 while this gateway records what the broker brings (with PostgreSQL, one replica
    /// at a time), 0 while it stands by.
    pub recording: Gauge,
}

impl Default for GatewayMetrics {
    fn default() -> Self {
        let mut registry = Registry::with_prefix("troupe_gateway");
        let tasks = Family::<StatusLabel, Gauge>::default();
        registry.register("tasks", "Tasks held, by status", tasks.clone());
        let submitted = Counter::default();
        registry.register("tasks_submitted", "Tasks accepted", submitted.clone());
        let sse_clients = Gauge::default();
        registry.register("sse_clients", "Open event streams", sse_clients.clone());
        // 1 ms .. about 65 s.
        let event_lag = Histogram::new(prometheus_client::metrics::histogram::exponential_buckets(
            0.001, 2.0, 17,
        ));
        registry.register(
            "event_lag_seconds",
            "Seconds from a runner's task event to the gateway storing it",
            event_lag.clone(),
        );
        let recording = Gauge::default();
        registry.register(
            "recording",
            "1 while this gateway records what the broker brings, 0 while it stands by",
            recording.clone(),
        );
        Self {
            registry: Arc::new(registry),
            tasks,
            submitted,
            sse_clients,
            event_lag,
            recording,
        }
    }
}

impl GatewayMetrics {
    /// Sets the task counts (every status, zero where none).
    pub fn set_tasks(&self, counts: &[(TaskState, u64)]) {
        for state in TaskState::ALL {
            let count = counts.iter().find(|(s, _)| *s == state).map_or(0, |(_, n)| *n);
            self.tasks
                .get_or_create(&StatusLabel {
                    status: state.as_str().to_owned(),
                })
                .set(i64::try_from(count).unwrap_or(i64::MAX));
        }
    }

    /// The OpenMetrics text of every metric.
    pub fn render(&self) -> String {
        let mut out = String::new();
        // Writing to a String cannot fail.
        let _ = prometheus_client::encoding::text::encode(&mut out, &self.registry);
        out
    }
}
