//! `teams.mode: SipFederation`: no tenant, no shadow accounts; the edge's
//! certificate and roots mounted where the rendered `[sip]` reads them, its
//! port on the pod, on the leader's federation Service and open in the
//! NetworkPolicy.

use super::*;
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;
use xmppfed_config::TeamsMode;

fn sip_gateway(sip: &str) -> FederationGateway {
    serde_yaml_ng::from_str(&format!(
        r#"
apiVersion: xmppfed.io/v1alpha1
kind: FederationGateway
metadata: {{ name: contoso, namespace: xmpp, uid: 6f1c2b1e-0000-4000-8000-000000000001 }}
spec:
  domain: teams.contoso.example
  image: ghcr.io/xmppfed/gateway:0.1.0
  teams: {{ mode: SipFederation }}
  s2s: {{ tlsSecret: contoso-tls }}
  licenceSecret: {{ name: xmppfed-licence, key: licence }}
  database: {{ engine: sqlite }}
{sip}"#
    ))
    .unwrap()
}

const SIP: &str = "  sip:\n    edgeFqdn: sip.teams.contoso.example\n    partnerDomain: contoso.com\n    tlsSecret: sip-tls\n    trustedCaConfigMap: { name: partner-roots, key: roots.pem }\n    fallback: { host: sipfed.online.lync.com }\n";

#[test]
fn sip_federation_renders_the_edge_and_opens_its_port() {
    let planned = plan(&sip_gateway(SIP), &[], &[], 1, &SETTINGS).unwrap();
    let config = GatewayConfig::from_toml_str(&planned.config_toml).unwrap();
    assert_eq!(config.teams.mode, TeamsMode::SipFederation);
    assert!(config.graph.is_none(), "no tenant, no Graph");
    let sip = config.sip.as_ref().unwrap();
    assert_eq!(sip.listen.port(), 5061);
    assert_eq!(sip.partner_domain, "contoso.com");
    assert_eq!(
        sip.cert_file,
        std::path::Path::new(paths::SIP_TLS_DIR).join("tls.crt")
    );
    assert_eq!(
        sip.ca_file.as_deref(),
        Some(
            std::path::Path::new(paths::SIP_CA_DIR)
                .join("roots.pem")
                .as_path()
        )
    );
    assert_eq!(sip.fallback.as_ref().unwrap().port, 5061);
    assert!(mounts_config_map(
        &planned,
        "sip-ca",
        "partner-roots",
        paths::SIP_CA_DIR
    ));

    let pod = pod_spec(&planned.objects);
    let secret_of = |volume: &str| {
        pod.volumes
            .iter()
            .flatten()
            .find(|v| v.name == volume)
            .and_then(|v| v.secret.as_ref())
            .and_then(|s| s.secret_name.clone())
    };
    assert_eq!(secret_of("sip-tls").as_deref(), Some("sip-tls"));
    assert_eq!(secret_of("graph-secret"), None);
    let mounted = |dir: &str| {
        pod.containers[0]
            .volume_mounts
            .iter()
            .flatten()
            .any(|m| m.mount_path == dir)
    };
    assert!(mounted(paths::SIP_TLS_DIR));
    let ports = pod.containers[0].ports.as_ref().unwrap();
    assert!(
        ports
            .iter()
            .any(|p| p.name.as_deref() == Some("sip") && p.container_port == 5061)
    );

    // The leader's federation Service carries SIP beside XMPP.
    let federation = &planned.objects.services[0];
    let service = federation.spec.as_ref().unwrap();
    let sip_port = service
        .ports
        .iter()
        .flatten()
        .find(|p| p.name.as_deref() == Some("sip"))
        .expect("a sip port on the federation Service");
    assert_eq!(sip_port.port, 5061);
    assert_eq!(
        sip_port.target_port,
        Some(IntOrString::String("sip".into()))
    );
    assert_eq!(
        service
            .selector
            .as_ref()
            .unwrap()
            .get(render::LEADER.0)
            .map(String::as_str),
        Some(render::LEADER.1),
        "only the lease holder runs the SIP route"
    );

    let policy = planned.objects.network_policy.as_ref().unwrap();
    let spec = policy.spec.as_ref().unwrap();
    let opened = |rules: Vec<&Vec<k8s_openapi::api::networking::v1::NetworkPolicyPort>>| {
        rules
            .into_iter()
            .flatten()
            .any(|p| p.port == Some(IntOrString::Int(5061)))
    };
    let ingress = spec.ingress.iter().flatten().filter(|r| r.from.is_none());
    assert!(
        opened(ingress.filter_map(|r| r.ports.as_ref()).collect()),
        "partner edges reach 5061"
    );
    let egress = spec
        .egress
        .iter()
        .flatten()
        .filter_map(|r| r.ports.as_ref());
    assert!(
        opened(egress.collect()),
        "the gateway reaches partner edges on 5061"
    );
}

#[test]
fn each_mode_names_what_it_lacks() {
    // SIP federation without its section.
    let missing = plan(&sip_gateway(""), &[], &[], 1, &SETTINGS).unwrap_err();
    assert!(missing.to_string().contains("spec.sip"), "{missing}");
    // Graph (the default) without a tenant.
    let mut graph = gateway(sqlite(), "");
    graph.spec.tenant = None;
    let missing = plan(&graph, &[], &[], 1, &SETTINGS).unwrap_err();
    assert!(missing.to_string().contains("spec.tenant"), "{missing}");
}
