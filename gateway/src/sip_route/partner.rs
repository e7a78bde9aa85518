//! Where the partner's Access Edge is, as Microsoft's federation finds its
//! partners: a configured route first, else DNS SRV
//! `_sipfederationtls._tcp.<domain>` (the record Skype for Business and
//! Teams publish, port 5061; "Plan for Skype for Business Server Edge
//! Server DNS"), else the configured fallback. The name its certificate
//! must prove is the route's host or the SRV target, never an address.

use std::net::SocketAddr;

use xmppfed_config::SipConfig;

use crate::dns::{Dns, SrvTarget};

pub(crate) struct PartnerEdges {
    partner: String,
    route: Option<SrvTarget>,
    fallback: Option<SrvTarget>,
    dns: Dns,
}

impl PartnerEdges {
    pub(crate) fn new(sip: &SipConfig, dns: Dns) -> Self {
        let partner = sip.partner_domain.to_ascii_lowercase();
        let route = sip
            .routes
            .iter()
            .find(|r| r.domain.eq_ignore_ascii_case(&partner))
            .map(|r| SrvTarget {
                host: r.host.clone(),
                port: r.port,
            });
        let fallback = sip.fallback.as_ref().map(|f| SrvTarget {
            host: f.host.clone(),
            port: f.port,
        });
        Self {
            partner,
            route,
            fallback,
            dns,
        }
    }

    /// The edges to try, best first, each with the name its certificate must
    /// prove; empty (with why) when there is none.
    pub(crate) async fn targets(&self) -> Result<Vec<SrvTarget>, String> {
        if let Some(route) = &self.route {
            return Ok(vec![route.clone()]);
        }
        let name = format!("_sipfederationtls._tcp.{}.", self.partner);
        let mut found = self.dns.srv(&name).await;
        // RFC 2782: a "." target says the service is decidedly not offered.
        if found.iter().any(|t| t.host == ".") {
            return Err(format!("{name} says {} offers no federation", self.partner));
        }
        if found.is_empty() {
            found.extend(self.fallback.clone());
        }
        if found.is_empty() {
            return Err(format!(
                "no {name} record and no sip.fallback: {}'s edge cannot be found",
                self.partner
            ));
        }
        Ok(found)
    }
}

/// The addresses of one edge.
pub(crate) async fn addresses(target: &SrvTarget) -> Result<Vec<SocketAddr>, String> {
    tokio::net::lookup_host((target.host.as_str(), target.port))
        .await
        .map(|a| a.collect())
        .map_err(|e| format!("{} does not resolve: {e}", target.host))
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
        let none = other("").targets().await.unwrap_err();
        assert!(
            none.contains("_sipfederationtls._tcp.fabrikam.test."),
            "{none}"
        );

        let mut config = sip(fallback);
        config.partner_domain = "nofed.test".into();
        let refused = PartnerEdges::new(&config, Dns::at(dns.addr))
            .targets()
            .await;
        assert!(refused.unwrap_err().contains("offers no federation"));
    }
}
