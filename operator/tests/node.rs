//! Pods on a real node: the cluster `KUBECONFIG` names, with a Ready node
//! (../shared/kube `node-up.sh`; CI sets XMPPFED_TEST_NODE=required then, and
//! a missing node fails instead of skipping).
//!
//! One user's path, in order. `helm install` runs the operator *as a Pod*,
//! from the image scripts/images.py lays out from operator/Dockerfile around
//! this build's binary, with the chart's ServiceAccount, probes and
//! securityContext. The example gateway it runs from that Pod says in its
//! status why it is not ready, and is never Ready until it can work: first its
//! container crashes on the example's placeholder certificate (the crash's
//! last words in Ready), then, with a real certificate, it runs but cannot
//! reach Microsoft's identity platform (pods have no route off this machine):
//! TenantReady says so. Pointed at the Graph emulator running as a Pod behind
//! a Service (spec.tenant.endpoints, HTTPS with the emulator's CA), it becomes
//! Ready, and a Prosody on this host federates with it through its s2s
//! Service both ways. Then a wrong client secret shows as TenantReady
//! `InvalidClientSecret` with its fix, a wrong image stalls the roll and Ready
//! names the kubelet's reason, and deleting the gateway leaves nothing behind.
#![allow(clippy::unwrap_used, clippy::expect_used)] // a test: a panic is a failure with its reason

mod support;

use std::path::PathBuf;
use std::process::Command;
use std::time::{Duration, Instant};

use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::core::v1::{
    ConfigMap, Event, Namespace, Node, PersistentVolumeClaim, Pod, Secret, Service,
};
use k8s_openapi::api::discovery::v1::EndpointSlice;
use kube::api::{Api, DeleteParams, ListParams, PostParams};
use kube::{Client, ResourceExt};
use serde_json::json;
use support::{apply_all, examples_licensed, licence_text};
use xmppfed_e2e::cluster::eventually;
use xmppfed_operator::crd::FederationGateway;

const RELEASE: &str = "xmppfed-operator";

fn node_required() -> bool {
    std::env::var("XMPPFED_TEST_NODE").is_ok_and(|v| v == "required")
}

/// Whether a node is Ready to run pods.
async fn ready_node(client: &Client) -> Option<String> {
    Api::<Node>::all(client.clone())
        .list(&ListParams::default())
        .await
        .ok()?
        .items
        .into_iter()
        .find(|n| {
            n.status
                .as_ref()
                .and_then(|s| s.conditions.as_ref())
                .is_some_and(|cs| cs.iter().any(|c| c.type_ == "Ready" && c.status == "True"))
        })
        .map(|n| n.name_any())
}

/// The gateway, operator and emulator images from target/debug, imported
/// into the node (`cargo test --workspace` has built the binaries).
fn make_images() {
    let root = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("..");
    let made = support::run_ok(
        Command::new("python3")
            .arg(root.join("scripts/images.py"))
            .arg("--no-build"),
        "scripts/images.py",
    );
    eprint!("{made}");
}

/// Uninstalls the release whatever happens: an operator Pod left running
/// would reconcile the next tests' gateways.
struct Release {
    helm: PathBuf,
    ns: String,
}

impl Drop for Release {
    fn drop(&mut self) {
        let _ = Command::new(&self.helm)
            .args(["uninstall", RELEASE, "--namespace", &self.ns, "--wait"])
            .output();
    }
}

fn condition<'a>(
    g: &'a FederationGateway,
    type_: &str,
) -> Option<&'a xmppfed_operator::crd::Condition> {
    g.status
        .as_ref()?
        .conditions
        .iter()
        .find(|c| c.type_ == type_)
}

/// Polls `gw` until `check` gives a value, failing if it is ever Ready.
async fn never_ready_until<T>(
    gateways: &Api<FederationGateway>,
    gw: &str,
    what: &str,
    timeout: Duration,
    check: impl Fn(&FederationGateway) -> Option<T>,
) -> T {
    eventually(what, timeout, || async {
        let g = gateways.get(gw).await.ok()?;
        if let Some(ready) = condition(&g, "Ready") {
            assert_ne!(
                ready.status, "True",
                "a gateway that cannot work is shown Ready: {}",
                ready.message
            );
        }
        check(&g)
    })
    .await
}

#[tokio::test(flavor = "multi_thread")]
async fn the_operator_runs_as_a_pod_and_its_gateway_says_why_it_is_not_ready() {
    let test = "the_operator_runs_as_a_pod_and_its_gateway_says_why_it_is_not_ready";
    let Some((admin, helm)) = support::cluster_and_helm(test).await else {
        return;
    };
    let Some(node) = ready_node(&admin).await else {
        assert!(
            !node_required(),
            "XMPPFED_TEST_NODE=required but no node is Ready"
        );
        eprintln!("skipped: {test} needs a Ready node (../shared/kube/node-up.sh)");
        return;
    };
    eprintln!("node {node} is Ready");
    make_images();
    support::install_crds(&admin).await;

    let ns = format!("xmppfed-node-{}", std::process::id());
    let chart = format!("{}/../charts/xmppfed-operator", env!("CARGO_MANIFEST_DIR"));
    let (private, public) = xmppfed_licence::generate_key().unwrap();
    let key = format!("licence.publicKey={public}");
    let installed = Instant::now();
    support::helm_run(
        &helm,
        &[
            "install",
            RELEASE,
            &chart,
            "--namespace",
            &ns,
            "--create-namespace",
            "--set",
            "crds.install=false",
            "--set",
            &key,
        ],
    );
    let _release = Release {
        helm: helm.clone(),
        ns: ns.clone(),
    };

    // The operator Pod: Ready through its own readiness probe, from our image,
    // as the chart's ServiceAccount and user.
    let pods: Api<Pod> = Api::namespaced(admin.clone(), &ns);
    let selector = ListParams::default().labels("app.kubernetes.io/name=xmppfed-operator");
    let operator = eventually(
        "the operator Pod Ready",
        Duration::from_secs(120),
        || async {
            pods.list(&selector)
                .await
                .ok()?
                .items
                .into_iter()
                .find(|p| {
                    p.status
                        .as_ref()
                        .and_then(|s| s.conditions.as_ref())
                        .is_some_and(|cs| {
                            cs.iter().any(|c| c.type_ == "Ready" && c.status == "True")
                        })
                })
        },
    )
    .await;
    eprintln!(
        "operator Pod {} Ready {:.1} s after helm install",
        operator.name_any(),
        installed.elapsed().as_secs_f64()
    );
    let spec = operator.spec.as_ref().unwrap();
    let deployment = Api::<Deployment>::namespaced(admin.clone(), &ns)
        .get(RELEASE)
        .await
        .unwrap();
    let template = deployment.spec.unwrap().template.spec.unwrap();
    assert_eq!(spec.service_account_name, template.service_account_name);
    assert_eq!(spec.service_account_name.as_deref(), Some(RELEASE));
    assert_eq!(spec.node_name.as_deref(), Some(node.as_str()));
    assert_eq!(
        spec.containers[0].image.as_deref(),
        Some(concat!(
            "ghcr.io/xmppfed/operator:",
            env!("CARGO_PKG_VERSION")
        ))
    );
    let security = spec.security_context.as_ref().unwrap();
    assert_eq!(security.run_as_user, Some(65532));
    let status = operator.status.as_ref().unwrap();
    let container = &status.container_statuses.as_ref().unwrap()[0];
    assert!(container.ready);
    assert_eq!(container.restart_count, 0, "the operator never restarted");

    // The example gateway, licensed, reconciled by the operator Pod alone.
    let docs = examples_licensed(
        &["minimal-sqlite.yaml", "domain-whitelist.yaml"],
        "xmppfed-licence",
        &licence_text(&private, "node-it", 1),
    );
    apply_all(&admin, &ns, "xmppfed-node-test", docs).await;
    let gateways: Api<FederationGateway> = Api::namespaced(admin.clone(), &ns);
    let gw = "contoso";
    never_ready_until(
        &gateways,
        gw,
        "the gateway Licensed by the operator Pod",
        Duration::from_secs(60),
        |g| {
            condition(g, "Licensed")
                .filter(|c| c.status == "True")
                .map(|_| ())
        },
    )
    .await;

    // As written, the example's certificate is a placeholder: the gateway's
    // container crashes, and Ready quotes what it last said.
    let crashed = never_ready_until(
        &gateways,
        gw,
        "Ready naming the crash loop and the gateway's last words",
        Duration::from_secs(180),
        |g| {
            condition(g, "Ready")
                .filter(|c| c.message.contains("CrashLoopBackOff: "))
                .map(|c| c.message.clone())
        },
    )
    .await;
    eprintln!("as written: Ready=False: {crashed}");
    assert!(
        crashed.to_lowercase().contains("certificate") || crashed.contains("tls"),
        "the crash names the certificate: {crashed}"
    );
    // Its store's volume was bound on the node (StorageClass local).
    let claims = Api::<PersistentVolumeClaim>::namespaced(admin.clone(), &ns)
        .list(&ListParams::default())
        .await
        .unwrap();
    assert_eq!(claims.items.len(), 1, "one store volume for one replica");
    assert_eq!(
        claims.items[0].status.as_ref().unwrap().phase.as_deref(),
        Some("Bound")
    );

    // With a real certificate the gateway runs, but Microsoft's identity
    // platform cannot be reached from this node: TenantReady says so, and the
    // gateway stays not Ready (its credentials were never proven).
    let dir = tempfile::tempdir().unwrap();
    let (cert, key) =
        xmppfed_e2e::prosody::self_signed(dir.path(), "teams.contoso.example").unwrap();
    let tls = json!({
        "apiVersion": "v1", "kind": "Secret", "type": "kubernetes.io/tls",
        "metadata": {"name": "contoso-s2s-tls"},
        "stringData": {
            "tls.crt": std::fs::read_to_string(cert).unwrap(),
            "tls.key": std::fs::read_to_string(key).unwrap(),
        }
    });
    apply_all(&admin, &ns, "xmppfed-node-test", vec![tls]).await;
    let restarted = Instant::now();
    let selector = ListParams::default().labels("app.kubernetes.io/instance=contoso");
    for pod in pods.list(&selector).await.unwrap().items {
        pods.delete(&pod.name_any(), &DeleteParams::default().grace_period(0))
            .await
            .unwrap();
    }
    let unreachable = never_ready_until(
        &gateways,
        gw,
        "TenantReady=False IdentityPlatformUnreachable",
        Duration::from_secs(180),
        |g| {
            condition(g, "TenantReady")
                .filter(|c| c.status == "False" && c.reason == "IdentityPlatformUnreachable")
                .map(|c| c.message.clone())
        },
    )
    .await;
    eprintln!(
        "with a real certificate, {:.1} s after the restart: TenantReady=False: {unreachable}",
        restarted.elapsed().as_secs_f64()
    );
    assert!(
        unreachable.contains("cannot reach the Microsoft identity platform"),
        "{unreachable}"
    );
    let g = gateways.get(gw).await.unwrap();
    let ready = condition(&g, "Ready").unwrap();
    assert_eq!(ready.status, "False");
    assert!(
        ready.message.contains("readiness probe not passing"),
        "the pod runs, not ready: {}",
        ready.message
    );

    // Pointed at the Graph emulator running as a Pod behind a Service
    // (spec.tenant.endpoints, with the emulator's CA from a ConfigMap), the
    // same gateway proves its credentials and becomes Ready.
    let graph = GraphPod::start(&admin, &ns, dir.path()).await;
    // A Prosody on this host serves the example whitelist's remote domain,
    // on the pod network's host address, and routes the gateway's domain to
    // the gateway's s2s Service; the gateway routes back with a static route.
    let peer = Peer::start(&admin, &ns).await;
    let pointed = Instant::now();
    let endpoints = json!({
        "apiVersion": "xmppfed.io/v1alpha1", "kind": "FederationGateway",
        "metadata": {"name": gw},
        "spec": {
            "tenant": {"endpoints": {
                "authorityUrl": graph.url,
                "graphUrl": format!("{}/v1.0", graph.url),
                "caConfigMap": {"name": "graph-ca", "key": "ca.crt"},
            }},
            "s2s": {"staticRoutes": [{"domain": PEER, "host": HOST_ON_POD_NETWORK, "port": peer.s2s_port}]}
        }
    });
    apply_all(&admin, &ns, "xmppfed-node-endpoints", vec![endpoints]).await;
    let ready = eventually("the gateway Ready", Duration::from_secs(240), || async {
        let g = gateways.get(gw).await.ok()?;
        condition(&g, "Ready")
            .filter(|c| c.status == "True")
            .map(|c| c.message.clone())
    })
    .await;
    eprintln!(
        "through the emulator: Ready {:.1} s after spec.tenant.endpoints was applied: {ready}",
        pointed.elapsed().as_secs_f64()
    );
    let g = gateways.get(gw).await.unwrap();
    let status = g.status.as_ref().unwrap();
    let tenant = condition(&g, "TenantReady").unwrap();
    assert_eq!(tenant.status, "True", "{}", tenant.message);
    assert!(
        status.graph_endpoints.as_deref().is_some_and(|e| e
            .starts_with("override of the global cloud")
            && e.contains(&graph.url)),
        "{:?}",
        status.graph_endpoints
    );
    let events = Api::<Event>::namespaced(admin.clone(), &ns)
        .list(&ListParams::default())
        .await
        .unwrap();
    assert!(
        events
            .items
            .iter()
            .any(|e| e.reason.as_deref() == Some("EndpointOverride")),
        "an EndpointOverride Event"
    );
    // The emulated tenant, asked from this host through the Service, saw the
    // gateway's app sign in.
    let state = graph.state().await;
    assert!(
        state["tokenRequests"].as_u64().is_some_and(|n| n > 0),
        "{state}"
    );

    // Federating through the Service, both ways: Bob on Prosody subscribes
    // to Alice in Teams and writes to her; she answers from Teams.
    if let Some(mut bob) = peer.bob {
        // The s2s Service selects the replica that holds the bridge's lease
        // (labelled leader): it has an endpoint once that pod is labelled.
        let slices: Api<EndpointSlice> = Api::namespaced(admin.clone(), &ns);
        let serving = ListParams::default().labels("kubernetes.io/service-name=contoso-s2s");
        eventually(
            "an endpoint behind the s2s Service",
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
        // And kube-proxy has programmed it: a connection from this host
        // through the Service's address is accepted (a Prosody that finds
        // nothing there bounces the stanza rather than retrying).
        let service = format!("{}:5269", peer.s2s_service);
        eventually(
            "the s2s Service accepting connections",
            Duration::from_secs(30),
            || async {
                tokio::net::TcpStream::connect(&service)
                    .await
                    .ok()
                    .map(|_| ())
            },
        )
        .await;
        let alice = "alice@teams.contoso.example";
        bob.command(json!({"cmd": "subscribe", "to": alice}))
            .unwrap();
        let federated = Instant::now();
        let subscribed = tokio::task::block_in_place(|| {
            bob.wait_for(Duration::from_secs(60), |e| {
                e["event"] == "presence" && e["type"] == "subscribed" && e["from"] == alice
            })
        });
        if let Err(e) = subscribed {
            let logs = pods
                .logs("contoso-0", &Default::default())
                .await
                .unwrap_or_default();
            panic!("{e:#}\ngateway:\n{logs}\nProsody:\n{}", peer.server.log());
        }
        eprintln!(
            "Prosody → gateway Service: subscription approved in {:.1} s",
            federated.elapsed().as_secs_f64()
        );
        bob.command(json!({"cmd": "message", "to": alice, "body": "Hello from XMPP", "id": "m1"}))
            .unwrap();
        let chat = eventually(
            "Bob's message in Alice's Teams chat",
            Duration::from_secs(60),
            || async {
                let state = graph.state().await;
                state["chats"].as_array()?.iter().find_map(|c| {
                    (c["messages"].as_u64()? >= 1).then(|| c["id"].as_str().map(str::to_owned))?
                })
            },
        )
        .await;
        graph
            .control(
                &format!("/_emulator/chats/{chat}/messages"),
                json!({"from": "alice@contoso.example", "content": "Hello from Teams", "contentType": "text"}),
            )
            .await;
        let answer = tokio::task::block_in_place(|| {
            bob.wait_for(Duration::from_secs(60), |e| {
                e["event"] == "message"
                    && e["body"].is_string()
                    && e["from"].as_str().is_some_and(|f| f.starts_with(alice))
            })
        })
        .unwrap_or_else(|e| panic!("{e:#}"));
        assert_eq!(answer["body"], "Hello from Teams");
        eprintln!(
            "both ways through the Service in {:.1} s",
            federated.elapsed().as_secs_f64()
        );
    }

    // What the running pods weigh: their memory cgroups' working set (usage
    // less inactive file pages, as the kubelet counts it), read on this host
    // (the API server refuses to proxy to a node on loopback).
    let weigh = |pod: &Pod| pod.metadata.uid.as_deref().and_then(working_set);
    let gateway_pod = pods.get("contoso-0").await.unwrap();
    let (gateway_bytes, operator_bytes) = (weigh(&gateway_pod), weigh(&operator));
    eprintln!(
        "memory (cgroup working set, debug builds): gateway {:.1} MiB, operator {:.1} MiB",
        gateway_bytes.unwrap_or(0) as f64 / 1048576.0,
        operator_bytes.unwrap_or(0) as f64 / 1048576.0
    );
    assert!(
        gateway_bytes.is_some_and(|b| b > 0),
        "the gateway pod's memory cgroup is found and charged"
    );

    // Refused credentials: a wrong client secret in the Secret the gateway
    // names, and the pod restarted (it reads the secret at start): the
    // tenant's refusal and its fix reach TenantReady, and Ready goes False.
    let wrong_secret = json!({
        "apiVersion": "v1", "kind": "Secret", "type": "Opaque",
        "metadata": {"name": "contoso-graph-app"},
        "stringData": {"client-secret": "not-the-secret"}
    });
    apply_all(&admin, &ns, "xmppfed-node-test", vec![wrong_secret]).await;
    pods.delete("contoso-0", &DeleteParams::default())
        .await
        .unwrap();
    let refused = eventually(
        "TenantReady=False InvalidClientSecret",
        Duration::from_secs(120),
        || async {
            let g = gateways.get(gw).await.ok()?;
            let tenant = condition(&g, "TenantReady")
                .filter(|c| c.status == "False" && c.reason == "InvalidClientSecret")?;
            let ready = condition(&g, "Ready")?;
            (ready.status == "False").then(|| tenant.message.clone())
        },
    )
    .await;
    eprintln!("a wrong client secret: TenantReady=False InvalidClientSecret: {refused}");

    // A wrong image rolls the pod onto it and stalls there: Ready names the
    // kubelet's reason within a reconcile (it was True until the roll).
    let wrong = json!({
        "apiVersion": "xmppfed.io/v1alpha1", "kind": "FederationGateway",
        "metadata": {"name": gw},
        "spec": {"image": "ghcr.io/xmppfed/gateway:0.0.0-absent"}
    });
    apply_all(&admin, &ns, "xmppfed-node-image", vec![wrong]).await;
    let pulled = eventually(
        "Ready naming the image the node cannot pull",
        Duration::from_secs(120),
        || async {
            let g = gateways.get(gw).await.ok()?;
            condition(&g, "Ready")
                .filter(|c| {
                    c.status == "False"
                        && ["ErrImagePull", "ImagePullBackOff", "ErrImageNeverPull"]
                            .iter()
                            .any(|r| c.message.contains(r))
                })
                .map(|c| c.message.clone())
        },
    )
    .await;
    eprintln!("a wrong image: Ready=False: {pulled}");

    // Deleting the gateway leaves nothing of it; then the release goes.
    gateways.delete(gw, &DeleteParams::default()).await.unwrap();
    eventually("the gateway gone", Duration::from_secs(60), || async {
        gateways.get_opt(gw).await.ok()?.is_none().then_some(())
    })
    .await;
    drop(_release);
    Api::<Namespace>::all(admin)
        .delete(&ns, &DeleteParams::default())
        .await
        .unwrap();
}

/// A pod's memory working set in bytes, from its cgroup (v1 or v2, either
/// QoS class), as the kubelet computes it: usage less inactive file pages.
fn working_set(uid: &str) -> Option<u64> {
    let name = format!("pod{uid}");
    let roots = ["/sys/fs/cgroup/memory/kubepods", "/sys/fs/cgroup/kubepods"];
    let dir = roots.iter().find_map(|root| {
        let root = std::path::Path::new(root);
        [
            root.join(&name),
            root.join("burstable").join(&name),
            root.join("besteffort").join(&name),
        ]
        .into_iter()
        .find(|d| d.is_dir())
    })?;
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

/// The example whitelist's remote domain.
const PEER: &str = "xmpp.partner.example";
/// This host on the pod network (../shared/kube README: bridge cni0).
const HOST_ON_POD_NETWORK: &str = "10.244.0.1";

/// Prosody for [`PEER`] on this host, with Bob signed in; `bob` is `None`
/// (and that part of the test skipped, saying so) where Prosody or slixmpp
/// is missing and the node suite is not required.
struct Peer {
    server: xmppfed_e2e::prosody::Prosody,
    bob: Option<xmppfed_e2e::xmpp_client::XmppClient>,
    s2s_port: u16,
    /// The gateway's s2s Service address that Prosody routes to.
    s2s_service: String,
}

impl Peer {
    async fn start(admin: &Client, ns: &str) -> Self {
        use xmppfed_e2e::prosody::{self, Prosody, ProsodyOptions};
        let s2s_ip = eventually(
            "the gateway's s2s Service",
            Duration::from_secs(30),
            || async {
                Api::<Service>::namespaced(admin.clone(), ns)
                    .get("contoso-s2s")
                    .await
                    .ok()?
                    .spec?
                    .cluster_ip
            },
        )
        .await;
        let s2s_port = prosody::free_port().unwrap();
        let server = Prosody::start(&ProsodyOptions {
            host_routes: vec![("teams.contoso.example".into(), s2s_ip.clone(), 5269)],
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
            server.register("bob", "bobpw").unwrap();
            let jid = format!("bob@{PEER}");
            let port = server.c2s_port;
            tokio::task::block_in_place(|| {
                xmppfed_e2e::xmpp_client::XmppClient::connect(&python, &jid, "bobpw", port)
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

/// The Graph emulator as a Pod behind a Service, over HTTPS with a
/// certificate for the Service's ClusterIP (there is no cluster DNS), seeded
/// with the example's tenant: its app and secret, the allow list's users and
/// group, and the licence SKU.
struct GraphPod {
    url: String,
    /// The emulator's CA, PEM.
    ca: String,
}

impl GraphPod {
    async fn start(admin: &Client, ns: &str, dir: &std::path::Path) -> Self {
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
        let seed = json!({
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
        });
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
        let pod: Pod = serde_json::from_value(json!({
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
        .unwrap();
        let pods: Api<Pod> = Api::namespaced(admin.clone(), ns);
        pods.create(&PostParams::default(), &pod).await.unwrap();
        eventually(
            "the Graph emulator Pod Ready",
            Duration::from_secs(60),
            || async {
                let p = pods.get("graph-emulator").await.ok()?;
                p.status?
                    .conditions?
                    .iter()
                    .any(|c| c.type_ == "Ready" && c.status == "True")
                    .then_some(())
            },
        )
        .await;
        Self {
            url: format!("https://{ip}"),
            ca: read(&ca.cert),
        }
    }

    /// A client trusting the emulator's CA only.
    fn client(&self) -> reqwest::Client {
        let ca = reqwest::Certificate::from_pem(self.ca.as_bytes()).unwrap();
        reqwest::Client::builder()
            .tls_certs_only([ca])
            .build()
            .unwrap()
    }

    /// The emulated tenant's state (`GET /_emulator/state`), from this host
    /// through the Service.
    async fn state(&self) -> serde_json::Value {
        self.client()
            .get(format!("{}/_emulator/state", self.url))
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap()
    }

    /// POSTs to the emulator's control API; fails the test unless it succeeds.
    async fn control(&self, path: &str, body: serde_json::Value) {
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
