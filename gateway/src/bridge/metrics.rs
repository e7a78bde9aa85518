//! Bridge metrics: presence and messages carried each way, throttling, the
//! polling interval, contact relationships and shadow accounts.

use std::sync::atomic::AtomicU64;

use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use xmppfed_telemetry::Metrics;

type Labels = Vec<(&'static str, &'static str)>;

#[derive(Clone)]
pub struct BridgeMetrics {
    presence: Family<Labels, Counter>,
    poll_interval: Gauge<f64, AtomicU64>,
    contacts: Gauge,
    shadows: Family<Labels, Counter>,
    graph_failures: Family<Labels, Counter>,
    messages: MessageMetrics,
    throttled: Family<Labels, Counter>,
    subscriptions_refused: Family<Labels, Counter>,
}

impl BridgeMetrics {
    pub fn register(metrics: &Metrics) -> Self {
        Self {
            presence: metrics.register(
                "bridge_presence_updates",
                "Presence changes carried across the bridge, by direction (to-xmpp counts stanzas sent, to-teams Graph updates)",
                Family::default(),
            ),
            poll_interval: metrics.register(
                "bridge_presence_poll_interval_seconds",
                "The current (adaptive) interval between reads of Teams presence",
                Gauge::default(),
            ),
            contacts: metrics.register(
                "bridge_contacts",
                "Contact relationships between Teams users and remote XMPP contacts",
                Gauge::default(),
            ),
            shadows: metrics.register(
                "bridge_shadow_accounts",
                "Shadow accounts created and removed",
                Family::default(),
            ),
            graph_failures: metrics.register(
                "bridge_graph_failures",
                "Bridge operations that failed on a Graph error, by operation",
                Family::default(),
            ),
            messages: MessageMetrics::register(metrics),
            throttled: metrics.register(
                "throttled",
                "Messages and presence updates refused by a per-user limit, by direction and kind",
                Family::default(),
            ),
            subscriptions_refused: metrics.register(
                "bridge_subscriptions_refused",
                "Graph subscriptions for chat messages Graph refused, by reason (quota: the tenant's 10,000 Teams subscriptions)",
                Family::default(),
            ),
        }
    }

    /// Metrics that go nowhere (benchmarks, unit tests).
    pub fn detached() -> Self {
        Self::register(&Metrics::new("detached", "0"))
    }

    pub fn presence(&self, direction: &'static str, n: u64) {
        self.presence
            .get_or_create(&vec![("direction", direction)])
            .inc_by(n);
    }

    pub fn poll_interval(&self, secs: f64) {
        self.poll_interval.set(secs);
    }

    pub fn contacts(&self, n: usize) {
        self.contacts.set(n as i64);
    }

    pub fn shadow(&self, outcome: &'static str) {
        self.shadows
            .get_or_create(&vec![("outcome", outcome)])
            .inc();
    }

    pub fn message(&self, direction: &'static str, outcome: &'static str) {
        self.messages.count(direction, outcome);
    }

    pub fn throttled(&self, direction: &'static str, kind: &'static str) {
        self.throttled
            .get_or_create(&vec![("direction", direction), ("kind", kind)])
            .inc();
    }

    pub fn graph_failure(&self, operation: &'static str) {
        self.graph_failures
            .get_or_create(&vec![("operation", operation)])
            .inc();
    }

    pub fn subscription_refused(&self, reason: &'static str) {
        self.subscriptions_refused
            .get_or_create(&vec![("reason", reason)])
            .inc();
    }
}

/// `messages_total`, whichever route carries them (Graph or SIP federation).
#[derive(Clone)]
pub struct MessageMetrics(Family<Labels, Counter>);

impl MessageMetrics {
    pub fn register(metrics: &Metrics) -> Self {
        Self(metrics.register(
            "messages",
            "1:1 messages by direction (to-teams, to-xmpp) and outcome (accepted, delivered, retried, failed)",
            Family::default(),
        ))
    }

    pub fn count(&self, direction: &'static str, outcome: &'static str) {
        self.0
            .get_or_create(&vec![("direction", direction), ("outcome", outcome)])
            .inc();
    }
}
