//! Whether the partner's edge takes us, asked before a message has to find
//! out: an OPTIONS from each SIP domain we federate as (the exact domains of
//! the remote-domain allow list; a wildcard names no one domain to ask as)
//! to the partner's domain, when the route starts and every minute after.
//! A Skype for Business Access Edge applies its federation policy to the
//! From domain and takes mutual TLS only from the certificate its
//! allowed-domain entry names (`New-CsAllowedDomain -ProxyFqdn`), so the
//! answer says what either side's administrator must change.
//!
//! It is reported in those words: on `/readyz` as degraded (never failing
//! the probe: XMPP still works and messages wait in the outbox), on the pod
//! for the operator's PartnerReachable condition, and as
//! `xmppfed_sip_partner_reachable`.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use tokio::sync::{Notify, watch};
use xmppfed_sipfed::EdgeError;
use xmppfed_sipfed::message::status_of;
use xmppfed_telemetry::{ComponentHealth, Metrics};

use super::{SipRoute, partner};

/// How often the partner is asked.
const INTERVAL: Duration = Duration::from_secs(60);
/// The least time between two probes, however many messages wake it.
const MIN_GAP: Duration = Duration::from_secs(5);
/// At most this many of our domains are asked as, each round.
const MAX_DOMAINS: usize = 16;
/// One domain's question, all edges included (as a message's attempt).
const ASK_BUDGET: Duration = Duration::from_secs(45);

/// Why the partner's edge does not take us: a CamelCase reason (the
/// condition's) and what to change.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) struct Refusal {
    pub reason: &'static str,
    pub message: String,
}

type PartnerLabel = Vec<(&'static str, String)>;

/// Where the answer is reported.
pub(super) struct PartnerProbe {
    health: ComponentHealth,
    /// No sample until this replica has asked: a standby reports nothing.
    reachable: Family<PartnerLabel, Gauge>,
    partner: PartnerLabel,
    /// `ok` or `Reason: message`, for the pod's annotation.
    state: watch::Sender<Option<String>>,
    /// Wakes the probe early: after a refusal, the partner's answer to a
    /// message asks again (the administrator may have fixed it).
    again: Notify,
    refused: AtomicBool,
}

impl PartnerProbe {
    /// Ready until it learns otherwise: a standby never asks.
    pub(super) fn new(metrics: &Metrics, health: ComponentHealth, partner: &str) -> Self {
        health.ready();
        Self {
            health,
            reachable: metrics.register(
                "sip_partner_reachable",
                "1 when the partner's SIP edge took the leader's last probe, 0 when it refused or could not be reached (no sample on a standby)",
                Family::default(),
            ),
            partner: vec![("partner", partner.to_owned())],
            state: watch::channel(None).0,
            again: Notify::new(),
            refused: AtomicBool::new(false),
        }
    }

    /// The latest answer, for the pod's annotation.
    pub(super) fn watch(&self) -> watch::Receiver<Option<String>> {
        self.state.subscribe()
    }

    /// The partner answered a message: ask again soon if its last answer to
    /// the probe was a refusal.
    pub(super) fn exchanged(&self) {
        if self.refused.load(Ordering::Relaxed) {
            self.again.notify_one();
        }
    }

    fn report(&self, outcome: &Result<(), Refusal>) {
        self.refused.store(outcome.is_err(), Ordering::Relaxed);
        let gauge = self.reachable.get_or_create(&self.partner);
        gauge.set(i64::from(outcome.is_ok()));
        let state = match outcome {
            Ok(()) => "ok".to_owned(),
            Err(r) => format!("{}: {}", r.reason, r.message),
        };
        if self.state.borrow().as_deref() == Some(state.as_str()) {
            return;
        }
        match outcome {
            Ok(()) => {
                tracing::info!("the partner's SIP edge takes us");
                self.health.ready();
            }
            Err(r) => {
                tracing::warn!(reason = r.reason, "{}", r.message);
                self.health.degraded(&state);
            }
        }
        self.state.send_replace(Some(state));
    }
}

impl SipRoute {
    /// Asks the partner now, then every minute (sooner after a refusal, see
    /// [`PartnerProbe::exchanged`], but never within [`MIN_GAP`]), until
    /// aborted.
    pub(super) async fn probe_partner(self: Arc<Self>) {
        loop {
            let asked = tokio::time::Instant::now();
            let outcome = self.ask_partner().await;
            self.probe.report(&outcome);
            tokio::select! {
                () = tokio::time::sleep(INTERVAL) => {}
                () = self.probe.again.notified() => {
                    tokio::time::sleep_until(asked + MIN_GAP).await;
                }
            }
        }
    }

    async fn ask_partner(&self) -> Result<(), Refusal> {
        let mut domains = self.allow.exact();
        if domains.len() > MAX_DOMAINS {
            tracing::debug!(
                asked = MAX_DOMAINS,
                of = domains.len(),
                "the partner is asked as the first domains of the allow list only"
            );
            domains.truncate(MAX_DOMAINS);
        }
        if domains.is_empty() {
            // Our edge's own name: any answer shows the edge reachable and
            // the TLS between us sound; its policy cannot be asked.
            return match self.ask_as(None).await {
                Err(Asked::Answered(_)) | Ok(()) => Ok(()),
                Err(Asked::Failed(r)) => Err(r),
            };
        }
        for domain in &domains {
            self.ask_as(Some(domain.as_str()))
                .await
                .map_err(Asked::refusal)?;
        }
        Ok(())
    }

    /// OPTIONS as `domain` to each of the partner's edges until one answers,
    /// within [`ASK_BUDGET`].
    async fn ask_as(&self, domain: Option<&str>) -> Result<(), Asked> {
        let asked = tokio::time::timeout(ASK_BUDGET, self.ask_edges(domain)).await;
        asked.unwrap_or_else(|_| {
            Err(Asked::Failed(Refusal {
                reason: "PartnerUnreachable",
                message: format!("{}'s edges gave no answer in {ASK_BUDGET:?}", self.partner),
            }))
        })
    }

    async fn ask_edges(&self, domain: Option<&str>) -> Result<(), Asked> {
        let unreachable = |message: String| {
            Asked::Failed(Refusal {
                reason: "PartnerUnreachable",
                message,
            })
        };
        let targets = self.edges.targets().await;
        let targets = targets.map_err(|e| unreachable(e.to_string()))?;
        let mut last = unreachable(format!("{} has no edge to ask", self.partner));
        for target in targets {
            let addresses = match partner::addresses(&target).await {
                Ok(addresses) => addresses,
                Err(e) => {
                    last = unreachable(e.to_string());
                    continue;
                }
            };
            let asking = Asking {
                partner: &self.partner,
                host: &target.host,
                domain,
                edge_fqdn: &self.edge_fqdn,
            };
            for addr in addresses {
                match self.ask_edge(&asking, addr).await {
                    Ok(()) => return Ok(()),
                    Err(Asked::Answered(r)) => return Err(Asked::Answered(r)),
                    Err(failed) => last = failed,
                }
            }
        }
        Err(last)
    }

    /// One edge's answer. A connection closed without one is tried once
    /// more on a new connection (a reused one may have been closed by an
    /// idle timeout or a restart) before the certificate is blamed.
    async fn ask_edge(&self, asking: &Asking<'_>, addr: std::net::SocketAddr) -> Result<(), Asked> {
        let from = asking.domain.map(|d| format!("sip:{d}"));
        let to = format!("sip:{}", asking.partner);
        let mut answer = Err(EdgeError::Closed);
        for _ in 0..2 {
            answer = self
                .edge
                .options((addr, asking.host), from.as_deref(), &to)
                .await;
            if !matches!(answer, Err(EdgeError::Closed)) {
                break;
            }
        }
        match answer {
            Ok(response) => asking.answered(status_of(&response), &response),
            Err(e) => Err(asking.failed(&e)),
        }
    }
}

/// An answer that is not the partner taking us: its own (its policy; no
/// other edge is asked) or a failure to reach it (the next edge is tried).
enum Asked {
    Answered(Refusal),
    Failed(Refusal),
}

impl Asked {
    fn refusal(self) -> Refusal {
        let (Asked::Answered(r) | Asked::Failed(r)) = self;
        r
    }
}

/// What was asked, for the words of the answer.
struct Asking<'a> {
    partner: &'a str,
    host: &'a str,
    domain: Option<&'a str>,
    edge_fqdn: &'a str,
}

impl Asking<'_> {
    /// The edge's response. 403 and 603 are its federation policy refusing
    /// the domain; 408 and 5xx are passing faults (the next edge is tried);
    /// any other answer (a 404 or 405 for the domain's own URI, say) came
    /// from past the policy, so the partner takes us.
    fn answered(&self, status: u16, response: &xmppfed_sipfed::Message) -> Result<(), Asked> {
        match status {
            403 | 603 => {}
            408 | 500..=599 => {
                let e = xmppfed_sipfed::edge::refused(status, response);
                return Err(self.failed(&e));
            }
            _ => return Ok(()),
        }
        let EdgeError::Refused { diagnostics, .. } =
            xmppfed_sipfed::edge::refused(status, response)
        else {
            return Ok(());
        };
        let (partner, host, edge_fqdn) = (self.partner, self.host, self.edge_fqdn);
        let domain = self.domain.unwrap_or(edge_fqdn);
        Err(Asked::Answered(Refusal {
            reason: "PartnerRefusesDomain",
            message: format!(
                "{partner}'s edge {host} refuses federation with {domain}: {status} {diagnostics}. Its administrator must allow {domain} with {edge_fqdn} as its edge: on Skype for Business Server, New-CsAllowedDomain -Identity {domain} -ProxyFqdn {edge_fqdn} and federation enabled on the Access Edge (Set-CsAccessEdgeConfiguration -AllowFederatedUsers $true); on Teams, {domain} allowed in external access"
            ),
        }))
    }

    /// A failure to get an answer, and whose certificate it points at.
    fn failed(&self, error: &EdgeError) -> Asked {
        let (partner, host, edge_fqdn) = (self.partner, self.host, self.edge_fqdn);
        let domain = self.domain.unwrap_or(edge_fqdn);
        let ours = format!(
            "ours must chain to a CA {partner} trusts, name {edge_fqdn} (the edge its allowed-domain entry for {domain} names) and allow client authentication"
        );
        let theirs =
            format!("it must chain to sip.ca_file (or the system's roots) and name {host} exactly");
        let (reason, message) = match error {
            EdgeError::Peer(e) => (
                "PartnerCertificateRefused",
                format!("we refuse the certificate of {partner}'s edge {host}: {e}; {theirs}"),
            ),
            EdgeError::Io(_, e) if certificate_alert(e) => (
                "OurCertificateRefused",
                format!("{partner}'s edge {host} refuses our certificate ({e}): {ours}"),
            ),
            EdgeError::Io(_, e) if tls_invalid(e) => (
                "PartnerCertificateRefused",
                format!("we refuse the certificate of {partner}'s edge {host}: {e}; {theirs}"),
            ),
            EdgeError::Closed => (
                "OurCertificateRefused",
                format!(
                    "{partner}'s edge {host} closed the connection without answering, twice: most likely it refuses the certificate we present, as an edge does when it is not the one its allowed-domain entry names; {ours}"
                ),
            ),
            other => (
                "PartnerUnreachable",
                format!("{partner}'s edge {host} cannot be reached: {other}"),
            ),
        };
        Asked::Failed(Refusal { reason, message })
    }
}

fn rustls_error(e: &std::io::Error) -> Option<&rustls::Error> {
    e.get_ref()?.downcast_ref::<rustls::Error>()
}

/// The peer sent a TLS alert about our certificate.
fn certificate_alert(e: &std::io::Error) -> bool {
    use rustls::AlertDescription as A;
    matches!(
        rustls_error(e),
        Some(rustls::Error::AlertReceived(
            A::BadCertificate
                | A::UnsupportedCertificate
                | A::CertificateRevoked
                | A::CertificateExpired
                | A::CertificateUnknown
                | A::UnknownCA
                | A::AccessDenied
                | A::CertificateRequired
        ))
    )
}

/// We refused the peer's certificate during the handshake.
fn tls_invalid(e: &std::io::Error) -> bool {
    matches!(
        rustls_error(e),
        Some(rustls::Error::InvalidCertificate(_) | rustls::Error::NoCertificatesPresented)
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    fn asking(domain: Option<&'static str>) -> Asking<'static> {
        Asking {
            partner: "contoso.test",
            host: "sip.contoso.test",
            domain,
            edge_fqdn: "gw.test",
        }
    }

    fn response(status: &str, extra: &[&str]) -> xmppfed_sipfed::Message {
        let mut head = vec![format!("SIP/2.0 {status}"), "CSeq: 1 OPTIONS".to_owned()];
        head.extend(extra.iter().map(|h| (*h).to_owned()));
        xmppfed_sipfed::Message::from_head(&head).unwrap()
    }

    fn tls(error: rustls::Error) -> EdgeError {
        let io = std::io::Error::new(std::io::ErrorKind::InvalidData, error);
        EdgeError::Io("TLS".into(), io)
    }

    #[test]
    fn a_domain_refusal_is_the_partners_answer_and_says_what_to_allow() {
        let diagnostics = "ms-diagnostics-public: 1002;reason=\"From URI not authorized\"";
        let refused = response("403 Forbidden", &[diagnostics]);
        let Err(Asked::Answered(r)) = asking(Some("xmpp.test")).answered(403, &refused) else {
            panic!("a 403 is the partner's answer");
        };
        assert_eq!(r.reason, "PartnerRefusesDomain");
        assert!(r.message.contains("1002"), "{}", r.message);
        assert!(
            r.message
                .contains("New-CsAllowedDomain -Identity xmpp.test -ProxyFqdn gw.test"),
            "{}",
            r.message
        );
    }

    #[test]
    fn an_answer_from_past_the_policy_takes_us_and_a_fault_tries_the_next_edge() {
        let asked = asking(Some("xmpp.test"));
        for status in [
            "404 Not Found",
            "405 Method Not Allowed",
            "480 Temporarily Unavailable",
        ] {
            let code = status[..3].parse().unwrap();
            assert!(
                asked.answered(code, &response(status, &[])).is_ok(),
                "{status}"
            );
        }
        for status in [
            "503 Service Unavailable",
            "408 Request Timeout",
            "500 Server Error",
        ] {
            let code = status[..3].parse().unwrap();
            let Err(Asked::Failed(r)) = asked.answered(code, &response(status, &[])) else {
                panic!("{status}: the next edge");
            };
            assert_eq!(r.reason, "PartnerUnreachable", "{status}");
        }
    }

    #[test]
    fn failures_say_whose_certificate_if_any() {
        let asked = asking(None);
        let Asked::Failed(r) = asked.failed(&EdgeError::Closed) else {
            panic!("closed: the next edge");
        };
        assert_eq!(r.reason, "OurCertificateRefused");
        assert!(r.message.contains("name gw.test"), "{}", r.message);
        let bad = tls(rustls::Error::AlertReceived(
            rustls::AlertDescription::BadCertificate,
        ));
        assert_eq!(asked.failed(&bad).refusal().reason, "OurCertificateRefused");
        let version = tls(rustls::Error::AlertReceived(
            rustls::AlertDescription::ProtocolVersion,
        ));
        assert_eq!(
            asked.failed(&version).refusal().reason,
            "PartnerUnreachable"
        );
        let invalid = tls(rustls::Error::InvalidCertificate(
            rustls::CertificateError::UnknownIssuer,
        ));
        let r = asked.failed(&invalid).refusal();
        assert_eq!(r.reason, "PartnerCertificateRefused");
        let refused = std::io::Error::from(std::io::ErrorKind::ConnectionRefused);
        let r = asked
            .failed(&EdgeError::Io("connect".into(), refused))
            .refusal();
        assert_eq!(r.reason, "PartnerUnreachable");
    }
}
