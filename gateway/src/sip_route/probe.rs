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

use prometheus_client::metrics::gauge::Gauge;
use tokio::sync::{Notify, watch};
use xmppfed_sipfed::EdgeError;
use xmppfed_sipfed::message::status_of;
use xmppfed_telemetry::{ComponentHealth, Metrics};

use super::{SipRoute, partner};

/// How often the partner is asked.
const INTERVAL: Duration = Duration::from_secs(60);
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

/// Where the answer is reported.
pub(super) struct PartnerProbe {
    health: ComponentHealth,
    reachable: Gauge,
    /// `ok` or `Reason: message`, for the pod's annotation.
    state: watch::Sender<Option<String>>,
    /// Wakes the probe early: after a refusal, a message's outcome asks
    /// again at once (the administrator may have fixed it).
    again: Notify,
    refused: AtomicBool,
}

impl PartnerProbe {
    /// Ready until it learns otherwise: a standby never asks.
    pub(super) fn new(metrics: &Metrics, health: ComponentHealth) -> Self {
        health.ready();
        Self {
            health,
            reachable: metrics.register(
                "sip_partner_reachable",
                "1 when the partner's SIP edge last answered our OPTIONS from every domain asked as, 0 when it refused or could not be reached",
                Gauge::default(),
            ),
            state: watch::channel(None).0,
            again: Notify::new(),
            refused: AtomicBool::new(false),
        }
    }

    /// The latest answer, for the pod's annotation.
    pub(super) fn watch(&self) -> watch::Receiver<Option<String>> {
        self.state.subscribe()
    }

    /// A message was exchanged with the partner: ask again now if its last
    /// answer was a refusal.
    pub(super) fn exchanged(&self) {
        if self.refused.load(Ordering::Relaxed) {
            self.again.notify_one();
        }
    }

    fn report(&self, outcome: &Result<(), Refusal>) {
        self.refused.store(outcome.is_err(), Ordering::Relaxed);
        self.reachable.set(i64::from(outcome.is_ok()));
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
    /// [`PartnerProbe::exchanged`]), until aborted.
    pub(super) async fn probe_partner(self: Arc<Self>) {
        loop {
            let outcome = self.ask_partner().await;
            self.probe.report(&outcome);
            tokio::select! {
                () = tokio::time::sleep(INTERVAL) => {}
                () = self.probe.again.notified() => {}
            }
        }
    }

    async fn ask_partner(&self) -> Result<(), Refusal> {
        let domains: Vec<String> = self.allow.exact().into_iter().take(MAX_DOMAINS).collect();
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
        let (from, to) = (
            domain.map(|d| format!("sip:{d}")),
            format!("sip:{}", self.partner),
        );
        let mut last = unreachable(format!("{} has no edge to ask", self.partner));
        for target in targets {
            let addresses = match partner::addresses(&target).await {
                Ok(addresses) => addresses,
                Err(e) => {
                    last = unreachable(e.to_string());
                    continue;
                }
            };
            for addr in addresses {
                let peer = (addr, target.host.as_str());
                let answer = match self.edge.options(peer, from.as_deref(), &to).await {
                    Ok(r) if (200..300).contains(&status_of(&r)) => return Ok(()),
                    Ok(r) => xmppfed_sipfed::edge::refused(status_of(&r), &r),
                    Err(e) => e,
                };
                let asked = Asking {
                    partner: &self.partner,
                    host: &target.host,
                    domain,
                    edge_fqdn: &self.edge_fqdn,
                };
                match asked.classify(&answer) {
                    Asked::Answered(r) => return Err(Asked::Answered(r)),
                    failed => last = failed,
                }
            }
        }
        Err(last)
    }
}

/// An answer other than 200: the partner's own (its policy; no other edge
/// is asked) or a failure to reach it (the next edge is tried).
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
    fn classify(&self, error: &EdgeError) -> Asked {
        let (partner, host, edge_fqdn) = (self.partner, self.host, self.edge_fqdn);
        let domain = self.domain.unwrap_or(edge_fqdn);
        let ours = format!(
            "ours must chain to a CA {partner} trusts, name {edge_fqdn} (the edge its allowed-domain entry for {domain} names) and allow client authentication"
        );
        let (reason, message) = match error {
            EdgeError::Refused {
                status: 403,
                diagnostics,
            } => {
                let refusal = Refusal {
                    reason: "PartnerRefusesDomain",
                    message: format!(
                        "{partner}'s edge {host} refuses federation with {domain}: 403 {diagnostics}. Its administrator must allow {domain} with {edge_fqdn} as its edge: on Skype for Business Server, New-CsAllowedDomain -Identity {domain} -ProxyFqdn {edge_fqdn} and federation enabled on the Access Edge (Set-CsAccessEdgeConfiguration -AllowFederatedUsers $true); on Teams, {domain} allowed in external access"
                    ),
                };
                return Asked::Answered(refusal);
            }
            EdgeError::Refused {
                status,
                diagnostics,
            } if *status != 503 => {
                let message = format!(
                    "{partner}'s edge {host} answers OPTIONS from {domain} with {status} {diagnostics}"
                );
                return Asked::Answered(Refusal {
                    reason: "PartnerRefuses",
                    message,
                });
            }
            EdgeError::Peer(e) => (
                "PartnerCertificateRefused",
                format!(
                    "we refuse the certificate of {partner}'s edge {host}: {e}; it must chain to sip.ca_file (or the system's roots) and name {host} exactly"
                ),
            ),
            EdgeError::Io(_, e) if tls_alert(e) => (
                "OurCertificateRefused",
                format!("{partner}'s edge {host} refuses our certificate ({e}): {ours}"),
            ),
            EdgeError::Io(_, e) if tls_invalid(e) => (
                "PartnerCertificateRefused",
                format!(
                    "we refuse the certificate of {partner}'s edge {host}: {e}; it must chain to sip.ca_file (or the system's roots) and name {host} exactly"
                ),
            ),
            EdgeError::Closed => (
                "OurCertificateRefused",
                format!(
                    "{partner}'s edge {host} closed the connection without answering, as an edge does when it refuses the certificate we present: {ours}"
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

/// The peer sent a TLS alert: it refused us (our certificate, mostly).
fn tls_alert(e: &std::io::Error) -> bool {
    matches!(rustls_error(e), Some(rustls::Error::AlertReceived(_)))
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

    #[test]
    fn a_domain_refusal_is_the_partners_answer_and_says_what_to_allow() {
        let refused = EdgeError::Refused {
            status: 403,
            diagnostics: "1002;reason=\"From URI not authorized\"".into(),
        };
        let Asked::Answered(r) = asking(Some("xmpp.test")).classify(&refused) else {
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
    fn a_busy_edge_or_a_closed_connection_sends_the_probe_to_the_next_edge() {
        let busy = EdgeError::Refused {
            status: 503,
            diagnostics: String::new(),
        };
        let Asked::Failed(r) = asking(Some("xmpp.test")).classify(&busy) else {
            panic!("503: the next edge");
        };
        assert_eq!(r.reason, "PartnerUnreachable");
        let Asked::Failed(r) = asking(Some("xmpp.test")).classify(&EdgeError::Closed) else {
            panic!("closed: the next edge");
        };
        assert_eq!(r.reason, "OurCertificateRefused");
        assert!(r.message.contains("name gw.test"), "{}", r.message);
    }

    #[test]
    fn tls_alerts_and_invalid_certificates_say_whose_certificate() {
        let alert = std::io::Error::new(
            std::io::ErrorKind::InvalidData,
            rustls::Error::AlertReceived(rustls::AlertDescription::BadCertificate),
        );
        let Asked::Failed(r) = asking(None).classify(&EdgeError::Io("TLS".into(), alert)) else {
            panic!("failed");
        };
        assert_eq!(r.reason, "OurCertificateRefused");
        let invalid = std::io::Error::new(
            std::io::ErrorKind::InvalidData,
            rustls::Error::InvalidCertificate(rustls::CertificateError::UnknownIssuer),
        );
        let Asked::Failed(r) = asking(None).classify(&EdgeError::Io("TLS".into(), invalid)) else {
            panic!("failed");
        };
        assert_eq!(r.reason, "PartnerCertificateRefused");
        let refused = std::io::Error::from(std::io::ErrorKind::ConnectionRefused);
        let Asked::Failed(r) = asking(None).classify(&EdgeError::Io("connect".into(), refused))
        else {
            panic!("failed");
        };
        assert_eq!(r.reason, "PartnerUnreachable");
    }
}
