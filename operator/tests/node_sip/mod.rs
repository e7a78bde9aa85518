//! The SIP federation route on the real node (issue 17): a FederationGateway
//! with `teams.mode: SipFederation` (no tenant), rendered by the operator
//! Pod into a gateway pod whose edge's certificate and roots come from a
//! Secret and a ConfigMap, and whose port `sip` is on the federation
//! Service. Contoso's side is the fake Skype for Business Access Edge
//! (e2e/src/access_edge) on this host, which the pod reaches by its route
//! and which reaches the pod through the Service; Dave is on a Prosody on
//! this host. Messages go both ways, exactly once, before and after the pod
//! is replaced.

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use k8s_openapi::api::core::v1::{ConfigMap, Pod, Service};
use kube::api::{Api, DeleteParams, PostParams};
use kube::{Client, ResourceExt};
use serde_json::{Value, json};
use xmppfed_e2e::access_edge::policy::{AllowedDomain, Policy};
use xmppfed_e2e::access_edge::{AccessEdge, Received};
use xmppfed_e2e::cluster::eventually;
use xmppfed_e2e::prosody::TestCa;
use xmppfed_e2e::xmpp_client::XmppClient;
use xmppfed_operator::crd::FederationGateway;

use crate::node_peers::{HOST_ON_POD_NETWORK, PEER, Peer, PeerFor, pod_ready};
use crate::support::{apply_all, licence_text};

const GW: &str = "fabrikam";
const DOMAIN: &str = "teams.fabrikam.example";
const EDGE_FQDN: &str = "sip.teams.fabrikam.example";
const PARTNER: &str = "fabrikam.com";
const ALICE: &str = "sip:alice@fabrikam.com";
const DAVE: &str = "sip:dave@xmpp.partner.example";

/// Fabrikam's Access Edge as its admin set it up for the gateway.
fn policy() -> Policy {
    Policy {
        allow_federated_users: true,
        enable_partner_discovery: false,
        allowed: vec![AllowedDomain {
            domain: PEER.into(),
            proxy_fqdn: Some(EDGE_FQDN.into()),
        }],
        blocked: Vec::new(),
        send_diagnostics_to_external: false,
        users: vec![ALICE.into()],
    }
}

fn documents(ca: &TestCa, private: &str, edge: SocketAddr, peer_port: u16) -> Vec<Value> {
    let read = |p: &std::path::Path| std::fs::read_to_string(p).unwrap();
    let (sip_cert, sip_key) = ca.issue(EDGE_FQDN).unwrap();
    let (s2s_cert, s2s_key) = ca.issue(DOMAIN).unwrap();
    let image = crate::support::examples("sip-federation.yaml")
        .into_iter()
        .find(|d| d["kind"] == "FederationGateway")
        .map(|g| g["spec"]["image"].clone())
        .unwrap();
    let tls = |name: &str, cert: &std::path::Path, key: &std::path::Path| {
        json!({"apiVersion": "v1", "kind": "Secret", "type": "kubernetes.io/tls",
               "metadata": {"name": name}, "stringData": {"tls.crt": read(cert), "tls.key": read(key)}})
    };
    vec![
        tls("fabrikam-sip-tls", &sip_cert, &sip_key),
        tls("fabrikam-s2s-tls", &s2s_cert, &s2s_key),
        json!({"apiVersion": "v1", "kind": "Secret", "metadata": {"name": "fabrikam-licence"},
               "stringData": {"licence": licence_text(private, "node-sip", 1)}}),
        json!({
            "apiVersion": "xmppfed.io/v1alpha1", "kind": "FederationGateway",
            "metadata": {"name": GW, "labels": {"xmppfed.io/tier": "production"}},
            "spec": {
                "domain": DOMAIN, "image": image,
                "teams": {"mode": "SipFederation"},
                "sip": {"edgeFqdn": EDGE_FQDN, "partnerDomain": PARTNER, "tlsSecret": "fabrikam-sip-tls",
                        "trustedCaConfigMap": {"name": "fabrikam-sip-ca", "key": "ca.crt"},
                        "routes": [{"domain": PARTNER, "host": HOST_ON_POD_NETWORK, "port": edge.port()}]},
                "s2s": {"tlsSecret": "fabrikam-s2s-tls",
                        "staticRoutes": [{"domain": PEER, "host": HOST_ON_POD_NETWORK, "port": peer_port}]},
                "database": {"engine": "sqlite"},
                "licenceSecret": {"name": "fabrikam-licence", "key": "licence"}
            }
        }),
    ]
}

async fn gateway_pod_ready(pods: &Api<Pod>, not: Option<&str>) -> Pod {
    eventually(
        "the SIP gateway pod Ready",
        Duration::from_secs(180),
        || async {
            let pod = pods.get(&format!("{GW}-0")).await.ok()?;
            (pod_ready(&pod) && pod.uid().as_deref() != not).then_some(pod)
        },
    )
    .await
}

/// Dave → Alice and Alice → Dave once each: how long each took.
async fn both_ways(edge: &AccessEdge, dave: &mut XmppClient, round: &str) -> (f64, f64) {
    let to_teams = format!("Hello Fabrikam over SIP federation ({round})");
    let sent = Instant::now();
    dave.command(json!({"cmd": "message", "to": format!("alice@{DOMAIN}"), "body": to_teams, "id": format!("sip-{round}")}))
        .unwrap();
    edge.wait_for(Duration::from_secs(60), |r| {
        r.iter()
            .any(|m| matches!(m, Received::Message { text, .. } if *text == to_teams))
    })
    .await
    .unwrap_or_else(|e| panic!("Alice never got Dave's message ({round}): {e:#}"));
    let out = sent.elapsed().as_secs_f64();

    let to_xmpp = format!("Hello Dave from Skype for Business ({round})");
    let sent = Instant::now();
    let mut status = 0;
    // The Service may still point at the old pod for a moment after a roll.
    for _ in 0..60 {
        status = edge.send_im(ALICE, DAVE, &to_xmpp).await.unwrap_or(0);
        if status == 200 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    assert_eq!(status, 200, "the pod took Alice's message ({round})");
    tokio::task::block_in_place(|| {
        dave.wait_for(Duration::from_secs(60), |e: &Value| {
            e["event"] == "message" && e["body"] == to_xmpp
        })
    })
    .unwrap_or_else(|e| panic!("Dave never got Alice's message ({round}): {e:#}"));
    (out, sent.elapsed().as_secs_f64())
}

/// The leader's probe of fabrikam.com's edge, reported by the operator as
/// the FederationGateway's PartnerReachable condition. Fabrikam's admin has
/// allowed xmpp.partner.example only, while the namespace's DomainWhitelist
/// (as node_faults left it, having added later.example while the gateway
/// ran) also names later.example: the condition says so, with the fix. Once the
/// admin allows it, the next message has the leader ask again: True.
async fn partner_reachable(admin: &Client, ns: &str, edge: &AccessEdge, dave: &mut XmppClient) {
    let gateways: Api<FederationGateway> = Api::namespaced(admin.clone(), ns);
    let partner = |want: &'static str| {
        let gateways = gateways.clone();
        move || {
            let gateways = gateways.clone();
            async move {
                let g = gateways.get(GW).await.ok()?;
                let conditions = g.status?.conditions;
                let c = conditions.iter().find(|c| c.type_ == "PartnerReachable")?;
                (c.status == want).then(|| (c.reason.clone(), c.message.clone()))
            }
        }
    };
    let (reason, message) =
        match xmppfed_e2e::cluster::within(Duration::from_secs(90), partner("False")).await {
            Some(refused) => refused,
            None => panic!("no PartnerReachable=False: {}", explain(admin, ns).await),
        };
    assert_eq!(reason, "PartnerRefusesDomain", "{message}");
    assert!(
        message.contains(&format!(
            "New-CsAllowedDomain -Identity later.example -ProxyFqdn {EDGE_FQDN}"
        )),
        "{message}"
    );
    eprintln!("PartnerReachable=False {reason}: {message}");
    edge.policy(|p| {
        p.allowed.push(AllowedDomain {
            domain: "later.example".into(),
            proxy_fqdn: Some(EDGE_FQDN.into()),
        })
    });
    let fixed = Instant::now();
    both_ways(edge, dave, "later.example allowed").await;
    let Some((reason, _)) =
        xmppfed_e2e::cluster::within(Duration::from_secs(90), partner("True")).await
    else {
        panic!("no PartnerReachable=True: {}", explain(admin, ns).await)
    };
    assert_eq!(reason, "PartnerAccepts");
    eprintln!(
        "PartnerReachable=True ({reason}) {:.1} s after fabrikam.com allowed later.example",
        fixed.elapsed().as_secs_f64()
    );
}

/// The gateway's conditions, its pods' annotations and its log.
async fn explain(admin: &Client, ns: &str) -> String {
    let g = Api::<FederationGateway>::namespaced(admin.clone(), ns)
        .get(GW)
        .await
        .unwrap();
    let pods = Api::<Pod>::namespaced(admin.clone(), ns);
    let annotations: Vec<_> = pods
        .list(&Default::default())
        .await
        .unwrap()
        .items
        .into_iter()
        .map(|p| (p.name_any(), p.metadata.annotations))
        .collect();
    let log = pods
        .logs(&format!("{GW}-0"), &Default::default())
        .await
        .unwrap_or_default();
    format!(
        "{:#?}\npods: {annotations:#?}\nlog:\n{log}",
        g.status.map(|s| s.conditions)
    )
}

pub async fn sip_federation_gateway(
    admin: &Client,
    ns: &str,
    private: &str,
    dir: &std::path::Path,
) {
    let dir = dir.join("sip");
    std::fs::create_dir_all(&dir).unwrap();
    let ca = TestCa::new(&dir).unwrap();
    let (cert, key) = ca
        .issue_for(
            "sip.fabrikam.com",
            &format!("DNS:sip.fabrikam.com,IP:{HOST_ON_POD_NETWORK}"),
        )
        .unwrap();
    let edge = AccessEdge::start(
        "0.0.0.0:0".parse().unwrap(),
        "sip.fabrikam.com",
        (&cert, &key, &ca.cert),
        policy(),
    )
    .await
    .unwrap();
    let roots: ConfigMap = serde_json::from_value(json!({
        "metadata": {"name": "fabrikam-sip-ca"},
        "data": {"ca.crt": std::fs::read_to_string(&ca.cert).unwrap()}
    }))
    .unwrap();
    Api::<ConfigMap>::namespaced(admin.clone(), ns)
        .create(&PostParams::default(), &roots)
        .await
        .unwrap();
    let peer_port = xmppfed_e2e::prosody::kernel_port().unwrap();
    let applied = Instant::now();
    apply_all(
        admin,
        ns,
        "xmppfed-node-sip",
        documents(&ca, private, edge.addr, peer_port),
    )
    .await;
    let pods: Api<Pod> = Api::namespaced(admin.clone(), ns);
    let first = gateway_pod_ready(&pods, None).await;
    eprintln!(
        "SIP federation gateway pod Ready {:.1} s after the FederationGateway was applied",
        applied.elapsed().as_secs_f64()
    );
    let mut peer = Peer::start_for(
        admin,
        ns,
        PeerFor {
            gateway: GW,
            domain: DOMAIN,
            user: "dave",
            s2s_port: peer_port,
        },
    )
    .await;
    let Some(mut dave) = peer.bob.take() else {
        return;
    };
    let service = Api::<Service>::namespaced(admin.clone(), ns)
        .get(&format!("{GW}-s2s"))
        .await
        .unwrap();
    let ip = service.spec.and_then(|s| s.cluster_ip).unwrap();
    let serving = || async {
        for port in [5269, 5061] {
            crate::node_peers::federation_service_ready(admin, ns, GW, &ip, port).await;
        }
    };
    serving().await;
    edge.route(PEER, format!("{ip}:5061").parse().unwrap());

    let (out, back) = both_ways(&edge, &mut dave, "first pod").await;
    eprintln!("SIP federation through the pod: Dave → Alice {out:.1} s, Alice → Dave {back:.1} s");
    partner_reachable(admin, ns, &edge, &mut dave).await;

    // The pod deleted as a roll deletes it (its streams and SIP connections
    // closed in its grace period; a pod killed outright is node_faults'
    // case): its replacement serves the same store.
    pods.delete(&first.name_any(), &DeleteParams::default())
        .await
        .unwrap();
    let deleted = Instant::now();
    gateway_pod_ready(&pods, first.uid().as_deref()).await;
    serving().await;
    eprintln!(
        "SIP gateway pod replaced, Ready and behind its Service in {:.1} s",
        deleted.elapsed().as_secs_f64()
    );
    edge.route(PEER, format!("{ip}:5061").parse().unwrap());
    let (out, back) = both_ways(&edge, &mut dave, "replaced pod").await;
    eprintln!(
        "after the pod was replaced: Dave → Alice {out:.1} s, Alice → Dave {back:.1} s (a new session after the stale one)"
    );

    // Exactly once, both ways.
    tokio::time::sleep(Duration::from_secs(3)).await;
    tokio::task::block_in_place(|| dave.drain(Duration::from_millis(500)));
    for round in ["first pod", "later.example allowed", "replaced pod"] {
        let text = format!("Hello Dave from Skype for Business ({round})");
        let got = dave
            .seen()
            .iter()
            .filter(|e| e["event"] == "message" && e["body"] == text)
            .count();
        assert_eq!(got, 1, "{text}");
        let text = format!("Hello Fabrikam over SIP federation ({round})");
        let got = edge
            .received()
            .iter()
            .filter(|m| matches!(m, Received::Message { text: t, .. } if *t == text))
            .count();
        assert_eq!(got, 1, "{text}");
    }
    Api::<FederationGateway>::namespaced(admin.clone(), ns)
        .delete(GW, &DeleteParams::default())
        .await
        .unwrap();
}
