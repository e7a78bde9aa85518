//! What the node test runs beside the operator: the partner's Prosody on
//! this host, the Graph emulator as a pod behind a Service, and a pod's
//! memory as the kubelet counts it.

use super::*;
use k8s_openapi::api::discovery::v1::EndpointSlice;

/// A pod's cgroup directory (v1 or v2, any QoS class).
fn pod_cgroup(uid: &str) -> Option<std::path::PathBuf> {
    let name = format!("pod{uid}");
    let roots = ["/sys/fs/cgroup/memory/kubepods", "/sys/fs/cgroup/kubepods"];
    roots.iter().find_map(|root| {
        let root = std::path::Path::new(root);
        [
            root.join(&name),
            root.join("burstable").join(&name),
            root.join("besteffort").join(&name),
        ]
        .into_iter()
        .find(|d| d.is_dir())
    })
}

/// A pod's memory working set in bytes, from its cgroup, as the kubelet
/// computes it: usage less inactive file pages.
pub fn working_set(uid: &str) -> Option<u64> {
    let dir = pod_cgroup(uid)?;
    let read = |file: &str| std::fs::read_to_string(dir.join(file)).ok();
    let (usage, inactive_key) = match read("memory.usage_in_bytes") {
        Some(v1) => (v1, "total_inactive_file "),
        None => (read("memory.current")?, "inactive_file "),
    };
    let usage: u64 = usage.trim().parse().ok()?;
    let inactive = read("memory.stat")?
        .lines()
        .find_map(|l| l.strip_prefix(inactive_key)?.trim().parse::<u64>().ok())
        .unwrap_or(0);
    Some(usage.saturating_sub(inactive))
}

/// The most a pod's memory cgroup has held since it began (page cache
/// included, so an upper bound of the working set's peak).
pub fn peak(uid: &str) -> Option<u64> {
    let dir = pod_cgroup(uid)?;
    ["memory.max_usage_in_bytes", "memory.peak"]
        .iter()
        .find_map(|f| std::fs::read_to_string(dir.join(f)).ok())?
        .trim()
        .parse()
        .ok()
}

/// The processes of a pod's containers (its sandbox's too), from its cgroup.
pub fn pod_processes(uid: &str) -> Vec<u32> {
    fn walk(dir: &std::path::Path, out: &mut Vec<u32>) {
        if let Ok(procs) = std::fs::read_to_string(dir.join("cgroup.procs")) {
            out.extend(procs.lines().filter_map(|l| l.trim().parse::<u32>().ok()));
        }
        for entry in std::fs::read_dir(dir).into_iter().flatten().flatten() {
            if entry.file_type().is_ok_and(|t| t.is_dir()) {
                walk(&entry.path(), out);
            }
        }
    }
    let mut out = Vec::new();
    if let Some(dir) = pod_cgroup(uid) {
        walk(&dir, &mut out);
    }
    out.sort_unstable();
    out.dedup();
    out
}

/// The example whitelist's remote domain.
pub const PEER: &str = "xmpp.partner.example";
/// This host on the pod network (../shared/kube README: bridge cni0).
pub const HOST_ON_POD_NETWORK: &str = "10.244.0.1";

/// Prosody for [`PEER`] on this host, with Bob signed in; `bob` is `None`
/// (and that part of the test skipped, saying so) where Prosody or slixmpp
/// is missing and the node suite is not required.
pub struct Peer {
    pub server: xmppfed_e2e::prosody::Prosody,
    /// The user signed in (Bob for the example gateway).
    pub bob: Option<xmppfed_e2e::xmpp_client::XmppClient>,
    pub s2s_port: u16,
    /// The gateway's s2s Service address that Prosody routes to.
    pub s2s_service: String,
}

/// Which gateway a [`Peer`] federates with, and who signs in on it.
pub struct PeerFor<'a> {
    /// The FederationGateway (its s2s Service is `<gateway>-s2s`).
    pub gateway: &'a str,
    pub domain: &'a str,
    /// The local part of the user signed in (password `<user>pw`).
    pub user: &'a str,
    /// Prosody's s2s port (the gateway's static route names it).
    pub s2s_port: u16,
}

impl Peer {
    /// For the example gateway `contoso`, with Bob.
    pub async fn start(admin: &Client, ns: &str) -> Self {
        let s2s_port = xmppfed_e2e::prosody::kernel_port().unwrap();
        Self::start_for(
            admin,
            ns,
            PeerFor {
                gateway: "contoso",
                domain: "teams.contoso.example",
                user: "bob",
                s2s_port,
            },
        )
        .await
    }

    pub async fn start_for(admin: &Client, ns: &str, peer: PeerFor<'_>) -> Self {
        use xmppfed_e2e::prosody::{self, Prosody, ProsodyOptions};
        let service = format!("{}-s2s", peer.gateway);
        let s2s_ip = eventually(
            "the gateway's s2s Service",
            Duration::from_secs(60),
            || async {
                Api::<Service>::namespaced(admin.clone(), ns)
                    .get(&service)
                    .await
                    .ok()?
                    .spec?
                    .cluster_ip
            },
        )
        .await;
        let s2s_port = peer.s2s_port;
        let server = Prosody::start(&ProsodyOptions {
            host_routes: vec![(peer.domain.into(), s2s_ip.clone(), 5269)],
            interfaces: vec!["127.0.0.1".into(), HOST_ON_POD_NETWORK.into()],
            s2s_port: Some(s2s_port),
            tls: true,
            ..ProsodyOptions::new(PEER)
        })
        .unwrap();
        let python = prosody::python();
        assert!(
            python.is_some() || !node_required(),
            "XMPPFED_TEST_NODE=required but there is no Python with slixmpp (scripts/test.sh installs it)"
        );
        let bob = python.map(|python| {
            let password = format!("{}pw", peer.user);
            server.register(peer.user, &password).unwrap();
            let jid = format!("{}@{PEER}", peer.user);
            let port = server.c2s_port;
            tokio::task::block_in_place(|| {
                xmppfed_e2e::xmpp_client::XmppClient::connect(&python, &jid, &password, port)
            })
            .unwrap()
        });
        if bob.is_none() {
            eprintln!("skipped: federation with Prosody needs a Python with slixmpp");
        }
        Self {
            server,
            bob,
            s2s_port,
            s2s_service: s2s_ip,
        }
    }
}

/// The gateway's federation Service (`<gateway>-s2s`) serves: it selects
/// the replica that holds the lease (labelled leader), so it has an
/// endpoint once that pod is labelled; and kube-proxy has programmed it, so
/// a connection from this host to `ip:port` is accepted (a Prosody that
/// finds nothing there bounces the stanza rather than retrying).
pub async fn federation_service_ready(
    admin: &Client,
    ns: &str,
    gateway: &str,
    ip: &str,
    port: u16,
) {
    let slices: Api<EndpointSlice> = Api::namespaced(admin.clone(), ns);
    let serving =
        ListParams::default().labels(&format!("kubernetes.io/service-name={gateway}-s2s"));
    eventually(
        "an endpoint behind the federation Service",
        Duration::from_secs(60),
        || async {
            slices
                .list(&serving)
                .await
                .ok()?
                .items
                .iter()
                .flat_map(|s| s.endpoints.iter())
                .any(|e| e.conditions.as_ref().and_then(|c| c.ready) == Some(true))
                .then_some(())
        },
    )
    .await;
    let service = format!("{ip}:{port}");
    eventually(
        "the federation Service accepting connections",
        Duration::from_secs(30),
        || async {
            tokio::net::TcpStream::connect(&service)
                .await
                .ok()
                .map(|_| ())
        },
    )
    .await;
}

/// Whether the pod's Ready condition is True.
pub fn pod_ready(p: &Pod) -> bool {
    p.status
        .as_ref()
        .and_then(|s| s.conditions.as_ref())
        .is_some_and(|cs| cs.iter().any(|c| c.type_ == "Ready" && c.status == "True"))
}

/// The Graph emulator as a Pod behind a Service, over HTTPS with a
/// certificate for the Service's ClusterIP (there is no cluster DNS), seeded
/// with the example's tenant: its app and secret, the allow list's users and
/// group, and the licence SKU.
pub struct GraphPod {
    pub url: String,
    /// The emulator's CA, PEM.
    pub ca: String,
}

impl GraphPod {
    pub async fn start(admin: &Client, ns: &str, dir: &std::path::Path) -> Self {
        let services: Api<Service> = Api::namespaced(admin.clone(), ns);
        let service: Service = serde_json::from_value(json!({
            "metadata": {"name": "graph"},
            "spec": {"selector": {"app": "graph-emulator"},
                     "ports": [{"name": "https", "port": 443, "targetPort": 8800}]}
        }))
        .unwrap();
        let ip = services
            .create(&PostParams::default(), &service)
            .await
            .unwrap()
            .spec
            .unwrap()
            .cluster_ip
            .unwrap();
        let ca = xmppfed_e2e::prosody::TestCa::new(dir).unwrap();
        let (cert, key) = ca.issue_for("graph", &format!("IP:{ip}")).unwrap();
        let read = |p: &std::path::Path| std::fs::read_to_string(p).unwrap();
        let seed = tenant_seed();
        let tls: Secret = serde_json::from_value(json!({
            "metadata": {"name": "graph-tls"}, "type": "kubernetes.io/tls",
            "stringData": {"tls.crt": read(&cert), "tls.key": read(&key)}
        }))
        .unwrap();
        Api::<Secret>::namespaced(admin.clone(), ns)
            .create(&PostParams::default(), &tls)
            .await
            .unwrap();
        let config_maps: Api<ConfigMap> = Api::namespaced(admin.clone(), ns);
        for (name, key, value) in [
            ("graph-seed", "seed.json", seed.to_string()),
            ("graph-ca", "ca.crt", read(&ca.cert)),
        ] {
            let cm: ConfigMap = serde_json::from_value(json!({
                "metadata": {"name": name}, "data": {key: value}
            }))
            .unwrap();
            config_maps
                .create(&PostParams::default(), &cm)
                .await
                .unwrap();
        }
        let pod = emulator_pod();
        let pods: Api<Pod> = Api::namespaced(admin.clone(), ns);
        pods.create(&PostParams::default(), &pod).await.unwrap();
        eventually(
            "the Graph emulator Pod Ready",
            Duration::from_secs(60),
            || async {
                let p = pods.get("graph-emulator").await.ok()?;
                pod_ready(&p).then_some(())
            },
        )
        .await;
        Self {
            url: format!("https://{ip}"),
            ca: read(&ca.cert),
        }
    }

    /// A client trusting the emulator's CA only.
    pub fn client(&self) -> reqwest::Client {
        let ca = reqwest::Certificate::from_pem(self.ca.as_bytes()).unwrap();
        reqwest::Client::builder()
            .tls_certs_only([ca])
            .build()
            .unwrap()
    }

    /// The emulated tenant's state (`GET /_emulator/state`), from this host
    /// through the Service.
    pub async fn state(&self) -> serde_json::Value {
        self.client()
            .get(format!("{}/_emulator/state", self.url))
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap()
    }

    /// What a chat holds, oldest first: each message's content.
    pub async fn chat_contents(&self, chat: &str) -> Vec<String> {
        let listed: serde_json::Value = self
            .client()
            .get(format!("{}/_emulator/chats/{chat}/messages", self.url))
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        listed["value"]
            .as_array()
            .into_iter()
            .flatten()
            .filter_map(|m| m["content"].as_str().map(str::to_owned))
            .collect()
    }

    /// POSTs to the emulator's control API; fails the test unless it succeeds.
    pub async fn control(&self, path: &str, body: serde_json::Value) {
        let response = self
            .client()
            .post(format!("{}{path}", self.url))
            .json(&body)
            .send()
            .await
            .unwrap();
        assert!(
            response.status().is_success(),
            "{path}: {}",
            response.status()
        );
    }
}

/// The example gateway's tenant: its app with the permissions the gateway
/// asks for, three users (one through the federated group), a Teams SKU.
fn tenant_seed() -> serde_json::Value {
    json!({
        "tenantId": "8f0d2a8e-1b2c-4d5e-9f00-112233445566",
        "apps": [{"clientId": "0a1b2c3d-4e5f-6789-abcd-ef0123456789",
                  "clientSecret": "PLACEHOLDER-client-secret-of-the-entra-app-registration",
                  "roles": ["User.ReadWrite.All", "GroupMember.Read.All", "Presence.ReadWrite.All",
                            "LicenseAssignment.ReadWrite.All", "ProfilePhoto.ReadWrite.All"],
                  "scopes": ["Presence.ReadWrite", "Chat.Create", "Chat.ReadWrite", "ChatMessage.Send"]}],
        "users": [
            {"userPrincipalName": "alice@contoso.example", "displayName": "Alice Liddell"},
            {"userPrincipalName": "bob@contoso.example", "displayName": "Bob Builder"},
            {"userPrincipalName": "carol@contoso.example", "displayName": "Carol Member"}
        ],
        "groups": [{"id": "11111111-2222-3333-4444-555555555555", "displayName": "Federated",
                    "members": ["carol@contoso.example"]}],
        "skus": [{"skuId": "3b555118-da6a-4418-894f-7df1e2096870", "skuPartNumber": "TEAMS_ESSENTIALS",
                  "prepaidUnits": 10, "servicePlans": ["TEAMS1"]}]
    })
}

/// The emulator as a pod: non-root, its seed and TLS from volumes, ready
/// once it listens.
fn emulator_pod() -> Pod {
    serde_json::from_value(json!({
        "metadata": {"name": "graph-emulator", "labels": {"app": "graph-emulator"}},
        "spec": {
            "securityContext": {"runAsNonRoot": true, "runAsUser": 65532},
            "containers": [{
                "name": "graph",
                "image": concat!("ghcr.io/xmppfed/graph-emulator:", env!("CARGO_PKG_VERSION")),
                "imagePullPolicy": "IfNotPresent",
                "args": ["--seed", "/etc/graph-emulator/seed.json", "--listen", "0.0.0.0:8800",
                         "--tls-cert", "/etc/graph-emulator/tls/tls.crt",
                         "--tls-key", "/etc/graph-emulator/tls/tls.key"],
                "ports": [{"containerPort": 8800}],
                "readinessProbe": {"tcpSocket": {"port": 8800}, "periodSeconds": 1},
                "volumeMounts": [
                    {"name": "seed", "mountPath": "/etc/graph-emulator", "readOnly": true},
                    {"name": "tls", "mountPath": "/etc/graph-emulator/tls", "readOnly": true}
                ]
            }],
            "volumes": [
                {"name": "seed", "configMap": {"name": "graph-seed"}},
                {"name": "tls", "secret": {"secretName": "graph-tls"}}
            ]
        }
    }))
    .unwrap()
}
