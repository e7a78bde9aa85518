//! s2s metrics: stanzas per remote domain and direction, streams, errors.

use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use xmppfed_telemetry::Metrics;

use super::stanza::Stanza;

type Labels = Vec<(&'static str, String)>;

#[derive(Clone)]
pub struct S2sMetrics {
    stanzas: Family<Labels, Counter>,
    streams: Family<Labels, Gauge>,
    stream_errors: Family<Labels, Counter>,
    auth: Family<Labels, Counter>,
    bounced: Family<Labels, Counter>,
    refused: Family<Labels, Counter>,
    connections_refused: Family<Labels, Counter>,
}

pub fn kind(stanza: &Stanza) -> &'static str {
    match stanza {
        Stanza::Message(_) => "message",
        Stanza::Presence(_) => "presence",
        Stanza::Iq(_) => "iq",
    }
}

impl S2sMetrics {
    pub fn register(metrics: &Metrics) -> Self {
        Self {
            stanzas: metrics.register(
                "s2s_stanzas",
                "Stanzas exchanged with remote XMPP servers, by direction, remote domain and kind",
                Family::default(),
            ),
            streams: metrics.register(
                "s2s_streams",
                "Open server-to-server streams, by direction",
                Family::default(),
            ),
            stream_errors: metrics.register(
                "s2s_stream_errors",
                "Streams we ended with a stream error, by condition",
                Family::default(),
            ),
            auth: metrics.register(
                "s2s_authentications",
                "Peer authentications, by method and outcome",
                Family::default(),
            ),
            bounced: metrics.register(
                "s2s_bounced_stanzas",
                "Stanzas returned to their sender as undeliverable, by condition",
                Family::default(),
            ),
            refused: metrics.register(
                "s2s_refused",
                "Streams or stanzas refused because the remote domain is not allowed, by direction",
                Family::default(),
            ),
            connections_refused: metrics.register(
                "s2s_connections_refused",
                "Inbound connections refused because too many were waiting to authenticate, by limit (total, per-address)",
                Family::default(),
            ),
        }
    }

    pub fn stanza_in(&self, domain: &str, kind: &'static str) {
        self.stanzas
            .get_or_create(&vec![
                ("direction", "in".into()),
                ("domain", domain.into()),
                ("kind", kind.into()),
            ])
            .inc();
    }

    pub fn stanza_out(&self, domain: &str, kind: &'static str) {
        self.stanzas
            .get_or_create(&vec![
                ("direction", "out".into()),
                ("domain", domain.into()),
                ("kind", kind.into()),
            ])
            .inc();
    }

    /// Counts a stream open until the guard drops.
    pub fn stream_open(&self, direction: &'static str) -> StreamGuard {
        let gauge = self
            .streams
            .get_or_create(&vec![("direction", direction.into())])
            .clone();
        gauge.inc();
        StreamGuard(gauge)
    }

    pub fn stream_error(&self, condition: &str) {
        self.stream_errors
            .get_or_create(&vec![("condition", condition.into())])
            .inc();
    }

    pub fn auth(&self, method: &'static str, outcome: &'static str) {
        self.auth
            .get_or_create(&vec![
                ("method", method.into()),
                ("outcome", outcome.into()),
            ])
            .inc();
    }

    pub fn bounced(&self, condition: &str) {
        self.bounced
            .get_or_create(&vec![("condition", condition.into())])
            .inc();
    }

    /// Not labelled by domain: refused domains are the peer's choice, and
    /// labels they choose would let them grow our metrics without bound.
    pub fn refused(&self, direction: &'static str) {
        self.refused
            .get_or_create(&vec![("direction", direction.into())])
            .inc();
    }
}

impl S2sMetrics {
    pub fn connection_refused(&self, reason: &'static str) {
        self.connections_refused
            .get_or_create(&vec![("reason", reason.into())])
            .inc();
    }
}

pub struct StreamGuard(Gauge);

impl Drop for StreamGuard {
    fn drop(&mut self) {
        self.0.dec();
    }
}
