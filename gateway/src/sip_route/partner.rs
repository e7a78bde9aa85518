//! Where the partner's Access Edge is, as Microsoft's federation finds its
//! partners: a configured route first, else DNS SRV
//! `_sipfederationtls._tcp.<domain>` (the record Skype for Business and
//! Teams publish, port 5061; "Plan for Skype for Business Server Edge
//! Server DNS"), else the configured fallback. The name its certificate
//! must prove is the route's host or the SRV target, never an address.

use std::collections::BTreeSet;
use std::net::SocketAddr;
use std::sync::{Arc, RwLock};
use std::time::Duration;

use xmppfed_config::SipConfig;

use crate::dns::{Dns, SrvTarget};

/// A lookup that takes longer is given up (and the message tried later).
const LOOKUP_TIMEOUT: Duration = Duration::from_secs(10);

#[derive(Debug, thiserror::Error)]
pub(crate) enum PartnerError {
    #[error("{0} says {1} offers no federation")]
    NoFederation(String, String),
    #[error("no {0} record and no sip.fallback: {1}'s edge cannot be found")]
    NotFound(String, String),
    #[error("{0} does not resolve: {1}")]
    Unresolved(String, String),
}

pub(crate) struct PartnerEdges {
    partner: String,
    route: Option<SrvTarget>,
    fallback: Option<SrvTarget>,
    dns: Dns,
    /// The names that speak for the partner: its domain, the configured
    /// hosts and the SRV targets found so far.
    known: Arc<RwLock<BTreeSet<String>>>,
}

impl PartnerEdges {
    pub(crate) fn new(sip: &SipConfig, dns: Dns) -> Self {
        let partner = sip.partner_domain.to_ascii_lowercase();
        let route = sip
            .routes
            .iter()
            .find(|r| r.domain.eq_ignore_ascii_case(&partner))
            .map(|r| SrvTarget {
                host: r.host.to_ascii_lowercase(),
                port: r.port,
            });
        let fallback = sip.fallback.as_ref().map(|f| SrvTarget {
            host: f.host.to_ascii_lowercase(),
            port: f.port,
        });
        let known = std::iter::once(partner.clone())
            .chain(route.iter().chain(fallback.iter()).map(|t| t.host.clone()))
            .collect();
        Self {
            partner,
            route,
            fallback,
            dns,
            known: Arc::new(RwLock::new(known)),
        }
    }

    /// The names that speak for the partner, one of which an inbound
    /// peer's certificate must prove (the edge's `trusting`).
    pub(crate) fn trusts(&self) -> impl Fn() -> Vec<String> + Send + Sync + 'static {
        let known = self.known.clone();
        move || {
            let known = known.read().unwrap_or_else(|p| p.into_inner());
            known.iter().cloned().collect()
        }
    }

    /// The edges to try, best first, each with the name its certificate must
    /// prove. An SRV target outside the partner's domain is skipped unless
    /// configured (Microsoft's edges require the target in the domain; a
    /// Teams tenant's `sipfed.online.lync.com` is named by `sip.fallback`):
    /// a spoofed DNS answer cannot send messages elsewhere.
    pub(crate) async fn targets(&self) -> Result<Vec<SrvTarget>, PartnerError> {
        if let Some(route) = &self.route {
            return Ok(vec![route.clone()]);
        }
        let name = format!("_sipfederationtls._tcp.{}.", self.partner);
        let found = tokio::time::timeout(LOOKUP_TIMEOUT, self.dns.srv(&name))
            .await
            .unwrap_or_default();
        // RFC 2782: a "." target says the service is decidedly not offered.
        if found.iter().any(|t| t.host == ".") {
            return Err(PartnerError::NoFederation(name, self.partner.clone()));
        }
        let suffix = format!(".{}", self.partner);
        let fallback = self.fallback.iter().map(|f| f.host.as_str());
        let configured: BTreeSet<&str> = fallback.collect();
        let mut targets: Vec<SrvTarget> = found
            .into_iter()
            .map(|t| SrvTarget {
                host: t.host.to_ascii_lowercase(),
                port: t.port,
            })
            .filter(|t| {
                let ours = t.host.ends_with(&suffix) || configured.contains(t.host.as_str());
                if !ours {
                    tracing::warn!(target = %t.host, %name, "SRV target outside the partner's domain skipped");
                }
                ours
            })
            .collect();
        if targets.is_empty() {
            targets.extend(self.fallback.clone());
        }
        if targets.is_empty() {
            return Err(PartnerError::NotFound(name, self.partner.clone()));
        }
        self.known
            .write()
            .unwrap_or_else(|p| p.into_inner())
            .extend(targets.iter().map(|t| t.host.clone()));
        Ok(targets)
    }
}

/// The addresses of one edge.
pub(crate) async fn addresses(target: &SrvTarget) -> Result<Vec<SocketAddr>, PartnerError> {
    let unresolved = |why: String| PartnerError::Unresolved(target.host.clone(), why);
    tokio::time::timeout(
        LOOKUP_TIMEOUT,
        tokio::net::lookup_host((target.host.as_str(), target.port)),
    )
    .await
    .map_err(|_| unresolved(format!("no answer in {LOOKUP_TIMEOUT:?}")))?
    .map(|a| a.collect())
    .map_err(|e| unresolved(e.to_string()))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::dns::testing::SrvServer;

    fn sip(extra: &str) -> SipConfig {
        let text = format!(
            "[xmpp]\ndomain = \"teams.test\"\n[s2s]\nrequire_tls = false\n[teams]\nmode = \"sip-federation\"\n\
             [sip]\nedge_fqdn = \"gw.test\"\npartner_domain = \"Contoso.test\"\n\
             cert_file = \"/c\"\nkey_file = \"/k\"\nca_file = \"/ca\"\n{extra}"
        );
        xmppfed_config::GatewayConfig::from_toml_str(&text)
            .unwrap()
            .sip
            .unwrap()
    }

    fn target(host: &str, port: u16) -> SrvTarget {
        SrvTarget {
            host: host.into(),
            port,
        }
    }

    #[tokio::test]
    async fn a_route_then_srv_then_the_fallback() {
        let dns = SrvServer::start(vec![
            (
                "_sipfederationtls._tcp.contoso.test.",
                10,
                "sip.contoso.test.",
                5061,
            ),
            (
                "_sipfederationtls._tcp.contoso.test.",
                5,
                "edge1.contoso.test.",
                5061,
            ),
            ("_sipfederationtls._tcp.nofed.test.", 0, ".", 0),
            (
                "_sipfederationtls._tcp.spoofed.test.",
                0,
                "sip.evil.example.",
                5061,
            ),
        ])
        .await;
        let fallback = "fallback = { host = \"sipfed.online.lync.com\" }\n";
        let edges = PartnerEdges::new(&sip(fallback), Dns::at(dns.addr));
        assert_eq!(
            edges.targets().await.unwrap(),
            vec![
                target("edge1.contoso.test", 5061),
                target("sip.contoso.test", 5061)
            ],
            "SRV records by priority, ahead of the fallback"
        );

        let route = "routes = [{ domain = \"contoso.test\", host = \"edge.lab\", port = 15061 }]\n";
        let edges = PartnerEdges::new(&sip(route), Dns::at(dns.addr));
        assert_eq!(
            edges.targets().await.unwrap(),
            vec![target("edge.lab", 15061)]
        );

        let other = |extra: &str| {
            let mut config = sip(extra);
            config.partner_domain = "fabrikam.test".into();
            PartnerEdges::new(&config, Dns::at(dns.addr))
        };
        assert_eq!(
            other(fallback).targets().await.unwrap(),
            vec![target("sipfed.online.lync.com", 5061)],
            "no SRV record: the fallback"
        );
        let none = other("").targets().await.unwrap_err().to_string();
        assert!(
            none.contains("_sipfederationtls._tcp.fabrikam.test."),
            "{none}"
        );

        let mut config = sip(fallback);
        config.partner_domain = "nofed.test".into();
        let refused = PartnerEdges::new(&config, Dns::at(dns.addr))
            .targets()
            .await;
        let refused = refused.unwrap_err().to_string();
        assert!(refused.contains("offers no federation"), "{refused}");

        // A target outside the partner's domain is not followed.
        let mut config = sip("");
        config.partner_domain = "spoofed.test".into();
        let edges = PartnerEdges::new(&config, Dns::at(dns.addr));
        assert!(
            edges.targets().await.is_err(),
            "evil.example is not followed"
        );

        // The names that speak for the partner: its domain and configured
        // hosts, then the SRV targets once DNS has named them.
        let edges = PartnerEdges::new(&sip(fallback), Dns::at(dns.addr));
        let trusts = edges.trusts();
        assert_eq!(trusts(), ["contoso.test", "sipfed.online.lync.com"]);
        edges.targets().await.unwrap();
        assert_eq!(
            trusts(),
            [
                "contoso.test",
                "edge1.contoso.test",
                "sip.contoso.test",
                "sipfed.online.lync.com"
            ]
        );
    }
}
