//! The gateway's own check of its node seat, offline, with the public key from
//! its configuration. It does not trust the operator: it recomputes the seat the
//! operator assigned (seats go to ordinals 0, 1, … from unexpired licences).

use prometheus_client::metrics::gauge::Gauge;
use xmppfed_config::LicenceConfig;
use xmppfed_licence::{LicenceFile, LicenceState, Timestamp, assign, read_file, replicas};
use xmppfed_telemetry::{ComponentHealth, Metrics};

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum LicenceCheckError {
    #[error("cannot read the licence file {path}: {reason}")]
    Read { path: String, reason: String },
    #[error("environment variable {0} (this node's name, <gateway>-<ordinal>) is not set")]
    NoNodeName(String),
    #[error("node name `{0}` does not end in -<ordinal>")]
    BadNodeName(String),
    #[error("node {node} holds no licence seat: {seats} seat(s) from valid licences{problems}")]
    NoSeat {
        node: String,
        seats: usize,
        problems: String,
    },
}

/// The seat this node holds.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Seat {
    pub node: String,
    pub licence_id: String,
    pub expires: Timestamp,
    pub state: LicenceState,
}

/// Checks this node's seat: `licences_text` is the licence file, `node` its name.
pub fn check_seat(
    licences_text: &str,
    public_key: &str,
    node: &str,
    now: Timestamp,
) -> Result<Seat, LicenceCheckError> {
    let (gateway, ordinal) = node
        .rsplit_once('-')
        .and_then(|(g, o)| Some((g, o.parse::<u32>().ok()?)))
        .ok_or_else(|| LicenceCheckError::BadNodeName(node.to_owned()))?;
    let LicenceFile {
        licences,
        mut problems,
    } = read_file(licences_text, public_key);
    problems.extend(
        licences
            .iter()
            .filter(|l| l.state(now) == LicenceState::Expired)
            .map(|l| format!("{} expired {}", l.id, l.expires)),
    );
    let pods = replicas(gateway, ordinal.saturating_add(1));
    let assignment = assign(&licences, &pods, now);
    match assignment.seats.get(node) {
        Some(l) => Ok(Seat {
            node: node.to_owned(),
            licence_id: l.id.clone(),
            expires: l.expires,
            state: l.state(now),
        }),
        None => Err(LicenceCheckError::NoSeat {
            node: node.to_owned(),
            seats: assignment.seats.len(),
            problems: if problems.is_empty() {
                String::new()
            } else {
                format!(" ({})", problems.join("; "))
            },
        }),
    }
}

/// Reads the configured file and node name, then checks the seat.
pub fn check(config: &LicenceConfig, now: Timestamp) -> Result<Seat, LicenceCheckError> {
    let text = std::fs::read_to_string(&config.file).map_err(|e| LicenceCheckError::Read {
        path: config.file.display().to_string(),
        reason: e.to_string(),
    })?;
    let node = std::env::var(&config.node_name_env)
        .map_err(|_| LicenceCheckError::NoNodeName(config.node_name_env.clone()))?;
    check_seat(&text, &config.public_key, &node, now)
}

/// Licence metrics: `xmppfed_licence_valid` (1 while this node may federate) and
/// `xmppfed_licence_expiry_timestamp_seconds`.
#[derive(Clone)]
pub struct LicenceMetrics {
    valid: Gauge,
    expiry: Gauge,
}

impl LicenceMetrics {
    pub fn register(metrics: &Metrics) -> Self {
        Self {
            valid: metrics.register(
                "licence_valid",
                "1 while this node holds an unexpired licence seat",
                Gauge::default(),
            ),
            expiry: metrics.register(
                "licence_expiry_timestamp_seconds",
                "Expiry of the licence this node's seat comes from",
                Gauge::default(),
            ),
        }
    }

    /// Records a check's outcome and sets the licence component's readiness:
    /// an expired or missing seat stops new federation.
    pub fn record(&self, outcome: &Result<Seat, LicenceCheckError>, health: &ComponentHealth) {
        match outcome {
            Ok(seat) => {
                self.expiry.set(seat.expires.as_second());
                match seat.state {
                    LicenceState::Valid => {
                        self.valid.set(1);
                        health.ready();
                    }
                    LicenceState::ExpiringSoon => {
                        self.valid.set(1);
                        tracing::warn!(licence = %seat.licence_id, expires = %seat.expires, "licence expires soon");
                        health.ready();
                    }
                    LicenceState::Expired => {
                        self.valid.set(0);
                        health.not_ready(&format!(
                            "licence {} expired {}",
                            seat.licence_id, seat.expires
                        ));
                    }
                }
            }
            Err(e) => {
                self.valid.set(0);
                health.not_ready(&e.to_string());
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use xmppfed_licence::{Licence, generate_key, issue};

    fn at(s: &str) -> Timestamp {
        s.parse().unwrap()
    }

    fn licences(private: &str, nodes: u32, expires: &str) -> String {
        let l = Licence {
            id: "L-1".into(),
            licensee: "Contoso".into(),
            nodes,
            issued: at("2026-01-01T00:00:00Z"),
            expires: at(expires),
            features: vec![],
        };
        issue(&l, private).unwrap()
    }

    #[test]
    fn a_node_within_the_seats_is_licensed_and_one_beyond_is_not() {
        let (private, public) = generate_key().unwrap();
        let text = licences(&private, 2, "2028-01-01T00:00:00Z");
        let now = at("2026-11-25T00:00:00Z");
        let seat = check_seat(&text, &public, "contoso-1", now).unwrap();
        assert_eq!(
            (seat.licence_id.as_str(), seat.state),
            ("L-1", LicenceState::Valid)
        );
        let e = check_seat(&text, &public, "contoso-2", now).unwrap_err();
        assert_eq!(
            e.to_string(),
            "node contoso-2 holds no licence seat: 2 seat(s) from valid licences"
        );
    }

    #[test]
    fn forged_licences_and_odd_node_names_are_refused() {
        let (_, public) = generate_key().unwrap();
        let (other, _) = generate_key().unwrap();
        let text = licences(&other, 5, "2028-01-01T00:00:00Z");
        let e = check_seat(&text, &public, "contoso-0", at("2026-11-25T00:00:00Z")).unwrap_err();
        assert!(e.to_string().contains("signature does not match"), "{e}");
        assert_eq!(
            check_seat(&text, &public, "contoso", at("2026-11-25T00:00:00Z")),
            Err(LicenceCheckError::BadNodeName("contoso".into()))
        );
    }

    #[test]
    fn expiry_makes_the_node_not_ready() {
        let (private, public) = generate_key().unwrap();
        let text = licences(&private, 1, "2026-12-01T00:00:00Z");
        let health = xmppfed_telemetry::Health::new();
        let component = health.component("licence");
        let metrics = LicenceMetrics::register(&Metrics::new("t", "0"));

        let soon = check_seat(&text, &public, "gw-0", at("2026-11-25T00:00:00Z"));
        metrics.record(&soon, &component);
        assert!(health.report().ready);
        assert_eq!(metrics.valid.get(), 1);

        let expired = check_seat(&text, &public, "gw-0", at("2026-12-02T00:00:00Z"));
        metrics.record(&expired, &component);
        assert!(!health.report().ready);
        assert_eq!(metrics.valid.get(), 0);
        let report = health.report().to_string();
        assert!(
            report.contains("L-1 expired 2026-12-01T00:00:00Z"),
            "{report}"
        );
    }
}
