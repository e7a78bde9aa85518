//! Where to connect for a remote domain (RFC 6120 §3.2, XEP-0368): a static
//! route if configured, else `_xmpps-server._tcp` (direct TLS) then
//! `_xmpp-server._tcp` SRV records in priority order, else the domain itself
//! on 5269.

use std::collections::HashMap;

use hickory_resolver::TokioResolver;
use hickory_resolver::proto::rr::RData;
use hickory_resolver::proto::rr::rdata::SRV;
use xmppfed_config::StaticRoute;

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
    dns: Option<TokioResolver>,
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
        let dns = match TokioResolver::builder_tokio() {
            Ok(builder) => builder.build().ok(),
            Err(e) => {
                tracing::warn!(error = %e, "no system DNS configuration: only static s2s routes work");
                None
            }
        };
        Self { static_routes, dns }
    }

    /// Every target for `domain`, best first.
    pub async fn resolve(&self, domain: &str) -> Vec<Target> {
        if let Some(target) = self.static_routes.get(domain) {
            return vec![target.clone()];
        }
        let mut targets = Vec::new();
        if let Some(dns) = &self.dns {
            for (service, direct_tls) in
                [("_xmpps-server._tcp", true), ("_xmpp-server._tcp", false)]
            {
                let name = format!("{service}.{domain}.");
                match dns.srv_lookup(name.as_str()).await {
                    Ok(lookup) => {
                        let records: Vec<SRV> = lookup
                            .answers()
                            .iter()
                            .filter_map(|r| match &r.data {
                                RData::SRV(srv) => Some(srv.clone()),
                                _ => None,
                            })
                            .collect();
                        targets.extend(order_srv(records, direct_tls));
                    }
                    Err(e) => tracing::debug!(%name, error = %e, "no SRV records"),
                }
            }
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

/// SRV records by priority, then weight (heaviest first within a priority).
fn order_srv(mut records: Vec<SRV>, direct_tls: bool) -> Vec<Target> {
    records.sort_by_key(|r| (r.priority, std::cmp::Reverse(r.weight)));
    records
        .into_iter()
        .map(|r| {
            let host = r.target.to_ascii();
            let host = host.strip_suffix('.').unwrap_or(&host);
            Target {
                host: if host.is_empty() {
                    ".".to_owned()
                } else {
                    host.to_owned()
                },
                port: r.port,
                direct_tls,
            }
        })
        .collect()
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

    #[test]
    fn srv_ordering() {
        use hickory_resolver::proto::rr::Name;
        let srv = |p, w, host: &str| SRV::new(p, w, 5269, Name::from_ascii(host).unwrap());
        let out = order_srv(
            vec![
                srv(20, 0, "c.test."),
                srv(10, 1, "b.test."),
                srv(10, 5, "a.test."),
            ],
            false,
        );
        let hosts: Vec<_> = out.iter().map(|t| t.host.as_str()).collect();
        assert_eq!(hosts, ["a.test", "b.test", "c.test"]);
    }
}
