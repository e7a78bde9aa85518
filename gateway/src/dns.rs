//! DNS SRV lookups (RFC 2782), shared by the s2s resolver
//! (`_xmpp-server._tcp`, RFC 6120 §3.2) and the SIP federation route
//! (`_sipfederationtls._tcp`, docs/sip-federation.md).

use hickory_resolver::TokioResolver;
use hickory_resolver::proto::rr::RData;
use hickory_resolver::proto::rr::rdata::SRV;

/// One SRV target, in the order to try.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SrvTarget {
    /// Without the trailing dot; `.` when the service is not offered
    /// (RFC 2782: a target of "." means "decidedly not available").
    pub host: String,
    pub port: u16,
}

pub struct Dns(Option<TokioResolver>);

impl Dns {
    /// The system's resolver; without a usable configuration, no DNS (only
    /// configured routes work, which the log says).
    pub fn system() -> Self {
        let unusable = |e: &dyn std::fmt::Display| {
            tracing::warn!(error = %e, "no usable system DNS configuration: only configured routes work");
        };
        match TokioResolver::builder_tokio().map(|b| b.build()) {
            Ok(Ok(resolver)) => Self(Some(resolver)),
            Ok(Err(e)) => {
                unusable(&e);
                Self(None)
            }
            Err(e) => {
                unusable(&e);
                Self(None)
            }
        }
    }

    /// A resolver asking only `server` (UDP): the tests' name server.
    #[cfg(test)]
    pub(crate) fn at(server: std::net::SocketAddr) -> Self {
        use hickory_resolver::config::{NameServerConfig, ResolverConfig};
        use hickory_resolver::net::runtime::TokioRuntimeProvider;
        let mut name_server = NameServerConfig::udp(server.ip());
        for connection in &mut name_server.connections {
            connection.port = server.port();
        }
        let config = ResolverConfig::from_name_servers(vec![name_server]);
        let builder = TokioResolver::builder_with_config(config, TokioRuntimeProvider::default());
        Self(builder.build().ok())
    }

    /// The SRV targets of `name` (absolute), by priority then weight; empty
    /// when there are none or DNS cannot say.
    pub async fn srv(&self, name: &str) -> Vec<SrvTarget> {
        let Some(dns) = &self.0 else {
            return Vec::new();
        };
        match dns.srv_lookup(name).await {
            Ok(lookup) => order_srv(
                lookup
                    .answers()
                    .iter()
                    .filter_map(|r| match &r.data {
                        RData::SRV(srv) => Some(srv.clone()),
                        _ => None,
                    })
                    .collect(),
            ),
            Err(e) => {
                tracing::debug!(%name, error = %e, "no SRV records");
                Vec::new()
            }
        }
    }
}

/// SRV records by priority, then weight (heaviest first within a priority).
fn order_srv(mut records: Vec<SRV>) -> Vec<SrvTarget> {
    records.sort_by_key(|r| (r.priority, std::cmp::Reverse(r.weight)));
    records
        .into_iter()
        .map(|r| {
            let host = r.target.to_ascii();
            let host = host.strip_suffix('.').unwrap_or(&host);
            SrvTarget {
                host: if host.is_empty() {
                    ".".to_owned()
                } else {
                    host.to_owned()
                },
                port: r.port,
            }
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn srv_ordering() {
        use hickory_resolver::proto::rr::Name;
        let srv = |p, w, host: &str| SRV::new(p, w, 5269, Name::from_ascii(host).unwrap());
        let out = order_srv(vec![
            srv(20, 0, "c.test."),
            srv(10, 1, "b.test."),
            srv(10, 5, "a.test."),
            srv(30, 0, "."),
        ]);
        let hosts: Vec<_> = out.iter().map(|t| t.host.as_str()).collect();
        assert_eq!(hosts, ["a.test", "b.test", "c.test", "."]);
    }

    /// A real lookup over UDP, against a name server answering SRV.
    #[tokio::test]
    async fn srv_over_the_wire() {
        let server = crate::dns::testing::SrvServer::start(vec![
            (
                "_sipfederationtls._tcp.contoso.test.",
                20,
                "backup.contoso.test.",
                5062,
            ),
            (
                "_sipfederationtls._tcp.contoso.test.",
                10,
                "sip.contoso.test.",
                5061,
            ),
        ])
        .await;
        let dns = Dns::at(server.addr);
        assert_eq!(
            dns.srv("_sipfederationtls._tcp.contoso.test.").await,
            vec![
                SrvTarget {
                    host: "sip.contoso.test".into(),
                    port: 5061
                },
                SrvTarget {
                    host: "backup.contoso.test".into(),
                    port: 5062
                },
            ]
        );
        assert!(
            dns.srv("_sipfederationtls._tcp.other.test.")
                .await
                .is_empty()
        );
    }
}

/// A name server answering SRV questions from a fixed table, for tests.
#[cfg(test)]
pub mod testing {
    use std::net::SocketAddr;
    use std::sync::Arc;

    use hickory_resolver::proto::op::{Message, MessageType, ResponseCode};
    use hickory_resolver::proto::rr::rdata::SRV;
    use hickory_resolver::proto::rr::{Name, RData, Record};

    /// (name, priority, target, port); weight 0, TTL 60.
    pub type SrvEntry = (&'static str, u16, &'static str, u16);

    pub struct SrvServer {
        pub addr: SocketAddr,
        task: tokio::task::JoinHandle<()>,
    }

    impl Drop for SrvServer {
        fn drop(&mut self) {
            self.task.abort();
        }
    }

    impl SrvServer {
        pub async fn start(entries: Vec<SrvEntry>) -> Self {
            let socket = Arc::new(
                tokio::net::UdpSocket::bind("127.0.0.1:0")
                    .await
                    .expect("a UDP port on 127.0.0.1"),
            );
            let addr = socket.local_addr().expect("its address");
            let task = tokio::spawn(async move {
                let mut buf = vec![0u8; 4096];
                while let Ok((n, from)) = socket.recv_from(&mut buf).await {
                    let Ok(query) = Message::from_vec(&buf[..n]) else {
                        continue;
                    };
                    if let Ok(bytes) = answer(&query, &entries).to_vec() {
                        let _ = socket.send_to(&bytes, from).await;
                    }
                }
            });
            Self { addr, task }
        }
    }

    fn answer(query: &Message, entries: &[SrvEntry]) -> Message {
        let mut response = Message::response(query.metadata.id, query.metadata.op_code);
        response.metadata.message_type = MessageType::Response;
        response.metadata.authoritative = true;
        response.metadata.recursion_desired = query.metadata.recursion_desired;
        response.metadata.recursion_available = true;
        let mut found = false;
        for question in &query.queries {
            response.queries.push(question.clone());
            let asked = question.name().to_ascii().to_ascii_lowercase();
            for (name, priority, target, port) in entries {
                if asked == name.to_ascii_lowercase() {
                    let Ok(target) = Name::from_ascii(target) else {
                        continue;
                    };
                    found = true;
                    response.answers.push(Record::from_rdata(
                        question.name().clone(),
                        60,
                        RData::SRV(SRV::new(*priority, 0, *port, target)),
                    ));
                }
            }
        }
        if !found {
            response.metadata.response_code = ResponseCode::NXDomain;
        }
        response
    }
}
