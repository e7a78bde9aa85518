//! Reconcile metrics (controller-rs's): how many reconciles ran, by kind and
//! outcome, and how long they took.

use std::time::Duration;

use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::histogram::Histogram;
use xmppfed_telemetry::Metrics;

type Labels = Vec<(&'static str, &'static str)>;

fn duration_histogram() -> Histogram {
    // 5 ms … 20 s: a reconcile is a handful of API calls.
    Histogram::new([
        0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 20.0,
    ])
}

#[derive(Clone)]
pub struct ReconcileMetrics {
    reconciles: Family<Labels, Counter>,
    duration: Family<Labels, Histogram, fn() -> Histogram>,
}

impl Default for ReconcileMetrics {
    /// Metrics no registry exports (tests, benchmarks).
    fn default() -> Self {
        Self {
            reconciles: Family::default(),
            duration: Family::new_with_constructor(duration_histogram),
        }
    }
}

impl ReconcileMetrics {
    pub fn register(metrics: &Metrics) -> Self {
        let unregistered = Self::default();
        Self {
            reconciles: metrics.register(
                "operator_reconciles",
                "Reconciles run, by kind (FederationGateway, DomainWhitelist, ThrottlePolicy) and outcome (ok, error)",
                unregistered.reconciles,
            ),
            duration: metrics.register(
                "operator_reconcile_duration_seconds",
                "How long one reconcile took, by kind",
                unregistered.duration,
            ),
        }
    }

    pub fn observe(&self, kind: &'static str, took: Duration, ok: bool) {
        let outcome = if ok { "ok" } else { "error" };
        self.reconciles
            .get_or_create(&vec![("kind", kind), ("outcome", outcome)])
            .inc();
        self.duration
            .get_or_create(&vec![("kind", kind)])
            .observe(took.as_secs_f64());
    }

    /// Reconciles counted so far of `kind` with `outcome` (for tests).
    pub fn count(&self, kind: &'static str, outcome: &'static str) -> u64 {
        self.reconciles
            .get_or_create(&vec![("kind", kind), ("outcome", outcome)])
            .get()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reconciles_are_counted_and_timed_under_the_registry() {
        let registry = Metrics::new("xmppfed-operator", "test");
        let metrics = ReconcileMetrics::register(&registry);
        metrics.observe("FederationGateway", Duration::from_millis(30), true);
        metrics.observe("FederationGateway", Duration::from_millis(30), false);
        metrics.observe("DomainWhitelist", Duration::from_millis(3), true);
        assert_eq!(metrics.count("FederationGateway", "ok"), 1);
        assert_eq!(metrics.count("FederationGateway", "error"), 1);
        let text = registry.encode();
        assert!(
            text.contains(
                r#"xmppfed_operator_reconciles_total{kind="FederationGateway",outcome="error"} 1"#
            ),
            "{text}"
        );
        assert!(
            text.contains(
                r#"xmppfed_operator_reconcile_duration_seconds_bucket{le="0.05",kind="FederationGateway"} 2"#
            ),
            "{text}"
        );
    }
}
