//! Where to connect for a remote domain (RFC 6120 §3.2, XEP-0368): a static
//! route if configured, else `_xmpps-server._tcp` (direct TLS) then
//! `_xmpp-server._tcp` SRV records in priority order, else the domain itself
//! on 5269.

use std::collections::HashMap;

use xmppfed_config::StaticRoute;

use crate::dns::Dns;

/// One address to try, in order.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Target {
    pub host: String,
    pub port: u16,
    /// XEP-0368: TLS from the first byte instead of STARTTLS.
    pub direct_tls: bool,
}

pub struct Resolver {
    static_routes: HashMap<String, Target>,
    dns: Dns,
}

impl Resolver {
    pub fn new(routes: &[StaticRoute]) -> Self {
        let static_routes = routes
            .iter()
            .map(|r| {
                (
                    r.domain.to_ascii_lowercase(),
                    Target {
                        host: r.host.clone(),
                        port: r.port,
                        direct_tls: false,
                    },
                )
            })
            .collect();
        Self {
            static_routes,
            dns: Dns::system(),
        }
    }

    /// Every target for `domain`, best first.
    pub async fn resolve(&self, domain: &str) -> Vec<Target> {
        if let Some(target) = self.static_routes.get(domain) {
            return vec![target.clone()];
        }
        let mut targets = Vec::new();
        for (service, direct_tls) in [("_xmpps-server._tcp", true), ("_xmpp-server._tcp", false)] {
            let found = self.dns.srv(&format!("{service}.{domain}.")).await;
            targets.extend(found.into_iter().map(|t| Target {
                host: t.host,
                port: t.port,
                direct_tls,
            }));
        }
        // RFC 6120 §3.2.1: a "." target means the service is not offered.
        if targets.iter().any(|t| t.host == ".") {
            targets.retain(|t| t.host != ".");
            return targets;
        }
        if targets.is_empty() {
            targets.push(Target {
                host: domain.to_owned(),
                port: 5269,
                direct_tls: false,
            });
        }
        targets
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn static_routes_win() {
        let r = Resolver::new(&[StaticRoute {
            domain: "Xmpp.Test".into(),
            host: "127.0.0.1".into(),
            port: 15269,
        }]);
        assert_eq!(
            r.resolve("xmpp.test").await,
            vec![Target {
                host: "127.0.0.1".into(),
                port: 15269,
                direct_tls: false
            }]
        );
    }
}
