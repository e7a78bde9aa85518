//! The Prometheus registry. Components register their metric families at
//! startup; `/metrics` encodes them in the OpenMetrics text format.

use std::sync::{Arc, Mutex};

use prometheus_client::encoding::text::encode;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::{Metric, Registry};

/// Shared registry; cheap to clone.
#[derive(Clone)]
pub struct Metrics {
    registry: Arc<Mutex<Registry>>,
}

impl std::fmt::Debug for Metrics {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Metrics")
    }
}

impl Metrics {
    /// A registry whose families all start with `xmppfed_`, holding
    /// `xmppfed_build_info{service,version} 1`.
    pub fn new(service: &str, version: &str) -> Self {
        let mut registry = Registry::with_prefix("xmppfed");
        let build_info = Family::<Vec<(String, String)>, Gauge>::default();
        build_info
            .get_or_create(&vec![
                ("service".to_owned(), service.to_owned()),
                ("version".to_owned(), version.to_owned()),
            ])
            .set(1);
        registry.register(
            "build_info",
            "Build of the running binary (always 1)",
            build_info,
        );
        Self {
            registry: Arc::new(Mutex::new(registry)),
        }
    }

    /// Registers a metric and hands it back for the caller to update.
    pub fn register<M: Metric + Clone>(&self, name: &str, help: &str, metric: M) -> M {
        self.lock().register(name, help, metric.clone());
        metric
    }

    /// The registry in OpenMetrics text format.
    pub fn encode(&self) -> String {
        let mut out = String::new();
        // Writing into a String cannot fail.
        let _ = encode(&mut out, &self.lock());
        out
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Registry> {
        self.registry.lock().unwrap_or_else(|p| p.into_inner())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use prometheus_client::metrics::counter::Counter;

    #[test]
    fn registered_metrics_are_encoded_with_the_prefix() {
        let m = Metrics::new("test", "1.2.3");
        let c = m.register("stanzas_in", "Stanzas received", Counter::<u64>::default());
        c.inc_by(3);
        let text = m.encode();
        assert!(text.contains("xmppfed_stanzas_in_total 3"), "{text}");
        assert!(
            text.contains(r#"xmppfed_build_info{service="test",version="1.2.3"} 1"#),
            "{text}"
        );
        assert!(text.trim_end().ends_with("# EOF"), "{text}");
    }
}
