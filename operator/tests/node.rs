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
//! Then two replicas fail over on PostgreSQL (node_failover), and a gateway
//! on the SIP federation route exchanges messages with a fake Skype for
//! Business Access Edge through its pod (node_sip).
#![allow(clippy::unwrap_used, clippy::expect_used)] // a test: a panic is a failure with its reason

mod node_failover;
mod node_faults;
mod node_peers;
mod node_sip;
mod support;

use std::path::PathBuf;
use std::process::Command;
use std::time::{Duration, Instant};

use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::core::v1::{
    ConfigMap, Event, Namespace, Node, PersistentVolumeClaim, Pod, Secret, Service,
};
use kube::api::{Api, DeleteParams, ListParams, PostParams};
use kube::{Client, ResourceExt};
use node_peers::{GraphPod, HOST_ON_POD_NETWORK, PEER, Peer, pod_ready, working_set};
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

/// `helm install` of the chart (the CRDs are already there) into `ns`; the
/// release goes when the value is dropped.
fn install_release(helm: &PathBuf, ns: &str, chart: &str, public: &str) -> Release {
    let key = format!("licence.publicKey={public}");
    support::helm_run(
        helm,
        &[
            "install",
            RELEASE,
            chart,
            "--namespace",
            ns,
            "--create-namespace",
            "--set",
            "crds.install=false",
            "--set",
            &key,
        ],
    );
    Release {
        helm: helm.clone(),
        ns: ns.to_owned(),
    }
}

/// The example gateway, licensed, reconciled by the operator Pod alone.
async fn example_licensed(admin: &Client, ns: &str, private: &str) -> Api<FederationGateway> {
    let docs = examples_licensed(
        &["minimal-sqlite.yaml", "domain-whitelist.yaml"],
        "xmppfed-licence",
        &licence_text(private, "node-it", 1),
    );
    apply_all(admin, ns, "xmppfed-node-test", docs).await;
    let gateways: Api<FederationGateway> = Api::namespaced(admin.clone(), ns);
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
    gateways
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
    let installed = Instant::now();
    let _release = install_release(&helm, &ns, &chart, &public);

    let operator = operator_pod_ready(&admin, &ns, &node, installed).await;
    let pods: Api<Pod> = Api::namespaced(admin.clone(), &ns);

    let gateways = example_licensed(&admin, &ns, &private).await;

    placeholder_certificate_crashes(&admin, &ns, &gateways).await;

    let dir = tempfile::tempdir().unwrap();
    unreachable_tenant_is_named(&admin, &ns, &gateways, dir.path()).await;

    // Pointed at the Graph emulator running as a Pod behind a Service
    // (spec.tenant.endpoints, with the emulator's CA from a ConfigMap), the
    // same gateway proves its credentials and becomes Ready.
    let graph = GraphPod::start(&admin, &ns, dir.path()).await;
    // A Prosody on this host serves the example whitelist's remote domain,
    // on the pod network's host address, and routes the gateway's domain to
    // the gateway's s2s Service; the gateway routes back with a static route.
    let mut peer = Peer::start(&admin, &ns).await;
    pointed_at_the_emulator(&admin, &ns, &gateways, &graph, &peer).await;

    // Federating through the Service, both ways: Bob on Prosody subscribes
    // to Alice in Teams and writes to her; she answers from Teams.
    if let Some(mut bob) = peer.bob.take() {
        let chat = federate(&admin, &ns, &graph, &mut bob, &peer).await;
        node_faults::killed_with_messages_in_flight(&admin, &ns, &graph, &mut bob, &chat).await;
        node_faults::whitelist_changed_with_messages_in_flight(
            &admin, &ns, &graph, &mut bob, &chat,
        )
        .await;
        node_faults::relicensed_with_messages_in_flight(
            &admin, &ns, &graph, &mut bob, &chat, &private,
        )
        .await;
    }

    pods_sized_and_weighed(&pods, &operator).await;
    node_faults::unbindable_volume_is_named(&admin, &ns, &private).await;

    refusals_are_named(&admin, &ns, &gateways).await;

    // Deleting the gateway leaves nothing of it; then the release goes.
    gateways
        .delete("contoso", &DeleteParams::default())
        .await
        .unwrap();
    eventually("the gateway gone", Duration::from_secs(60), || async {
        gateways
            .get_opt("contoso")
            .await
            .ok()?
            .is_none()
            .then_some(())
    })
    .await;

    // Two replicas on one PostgreSQL, failing over with messages in flight.
    node_failover::two_replicas_on_postgres(&admin, &ns, &graph, &private, dir.path()).await;
    // The SIP federation route: no tenant, the fake Access Edge on this host.
    node_sip::sip_federation_gateway(&admin, &ns, &private, dir.path()).await;
    drop(_release);
    Api::<Namespace>::all(admin)
        .delete(&ns, &DeleteParams::default())
        .await
        .unwrap();
}

/// The gateway pod is sized by default (QoS Burstable), and what the running
/// pods weigh.
async fn pods_sized_and_weighed(pods: &Api<Pod>, operator: &Pod) {
    // What the running pods weigh: their memory cgroups' working set (usage
    // less inactive file pages, as the kubelet counts it), read on this host
    // (the API server refuses to proxy to a node on loopback).
    let weigh = |pod: &Pod| pod.metadata.uid.as_deref().and_then(working_set);
    let gateway_pod = pods.get("contoso-0").await.unwrap();
    // Sized by default: requests and a memory limit, so not BestEffort.
    let qos = gateway_pod
        .status
        .as_ref()
        .and_then(|s| s.qos_class.clone());
    assert_eq!(
        qos.as_deref(),
        Some("Burstable"),
        "the gateway pod's QoS class"
    );
    let (gateway_bytes, operator_bytes) = (weigh(&gateway_pod), weigh(operator));
    eprintln!(
        "memory (cgroup working set, debug builds): gateway {:.1} MiB, operator {:.1} MiB",
        gateway_bytes.unwrap_or(0) as f64 / 1048576.0,
        operator_bytes.unwrap_or(0) as f64 / 1048576.0
    );
    assert!(
        gateway_bytes.is_some_and(|b| b > 0),
        "the gateway pod's memory cgroup is found and charged"
    );
    // This pod took the whitelist and licence bursts above.
    let mib = |b: Option<u64>| b.unwrap_or(0) as f64 / 1048576.0;
    let uid = |pod: &Pod| pod.metadata.uid.clone().unwrap_or_default();
    eprintln!(
        "memory peak since each pod began (page cache included): gateway {:.1} MiB \
         (two bursts of {} messages, a live reload and a relicence), operator {:.1} MiB",
        mib(node_peers::peak(&uid(&gateway_pod))),
        node_faults::BURST,
        mib(node_peers::peak(&uid(operator)))
    );
}

/// The operator Pod: Ready through its own readiness probe, from our image,
/// as the chart's ServiceAccount and user.
async fn operator_pod_ready(admin: &Client, ns: &str, node: &str, installed: Instant) -> Pod {
    let pods: Api<Pod> = Api::namespaced(admin.clone(), ns);
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
                .find(pod_ready)
        },
    )
    .await;
    eprintln!(
        "operator Pod {} Ready {:.1} s after helm install",
        operator.name_any(),
        installed.elapsed().as_secs_f64()
    );
    let spec = operator.spec.as_ref().unwrap();
    let deployment = Api::<Deployment>::namespaced(admin.clone(), ns)
        .get(RELEASE)
        .await
        .unwrap();
    let template = deployment.spec.unwrap().template.spec.unwrap();
    assert_eq!(spec.service_account_name, template.service_account_name);
    assert_eq!(spec.service_account_name.as_deref(), Some(RELEASE));
    assert_eq!(spec.node_name.as_deref(), Some(node));
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
    operator
}

/// As written, the example's certificate is a placeholder: the gateway's
/// container crashes, and Ready quotes what it last said.
async fn placeholder_certificate_crashes(
    admin: &Client,
    ns: &str,
    gateways: &Api<FederationGateway>,
) {
    let gw = "contoso";
    let crashed = never_ready_until(
        gateways,
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
    let claims = Api::<PersistentVolumeClaim>::namespaced(admin.clone(), ns)
        .list(&ListParams::default())
        .await
        .unwrap();
    assert_eq!(claims.items.len(), 1, "one store volume for one replica");
    assert_eq!(
        claims.items[0].status.as_ref().unwrap().phase.as_deref(),
        Some("Bound")
    );
}

/// With a real certificate the gateway runs, but Microsoft's identity
/// platform cannot be reached from this node: TenantReady says so, and the
/// gateway stays not Ready (its credentials were never proven).
async fn unreachable_tenant_is_named(
    admin: &Client,
    ns: &str,
    gateways: &Api<FederationGateway>,
    dir: &std::path::Path,
) {
    let gw = "contoso";
    let pods: Api<Pod> = Api::namespaced(admin.clone(), ns);
    let (cert, key) = xmppfed_e2e::prosody::self_signed(dir, "teams.contoso.example").unwrap();
    let tls = json!({
        "apiVersion": "v1", "kind": "Secret", "type": "kubernetes.io/tls",
        "metadata": {"name": "contoso-s2s-tls"},
        "stringData": {
            "tls.crt": std::fs::read_to_string(cert).unwrap(),
            "tls.key": std::fs::read_to_string(key).unwrap(),
        }
    });
    apply_all(admin, ns, "xmppfed-node-test", vec![tls]).await;
    let restarted = Instant::now();
    let selector = ListParams::default().labels("app.kubernetes.io/instance=contoso");
    for pod in pods.list(&selector).await.unwrap().items {
        pods.delete(&pod.name_any(), &DeleteParams::default().grace_period(0))
            .await
            .unwrap();
    }
    let unreachable = never_ready_until(
        gateways,
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
}

/// Pointed at the emulator (spec.tenant.endpoints) with a static route back
/// to the peer: Ready, TenantReady, the override in status and an Event, and
/// the emulated tenant saw the app sign in.
async fn pointed_at_the_emulator(
    admin: &Client,
    ns: &str,
    gateways: &Api<FederationGateway>,
    graph: &GraphPod,
    peer: &Peer,
) {
    let gw = "contoso";
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
    apply_all(admin, ns, "xmppfed-node-endpoints", vec![endpoints]).await;
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
    let events = Api::<Event>::namespaced(admin.clone(), ns)
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
}

/// Federating through the Service, both ways: Bob on Prosody subscribes to
/// Alice in Teams and writes to her; she answers from Teams.
async fn federate(
    admin: &Client,
    ns: &str,
    graph: &GraphPod,
    bob: &mut xmppfed_e2e::xmpp_client::XmppClient,
    peer: &Peer,
) -> String {
    let (server, s2s_service) = (&peer.server, &peer.s2s_service);
    let pods: Api<Pod> = Api::namespaced(admin.clone(), ns);
    node_peers::federation_service_ready(admin, ns, "contoso", s2s_service, 5269).await;
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
        panic!("{e:#}\ngateway:\n{logs}\nProsody:\n{}", server.log());
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
    chat
}

/// Refused credentials: a wrong client secret in the Secret the gateway
/// names, and the pod restarted (it reads the secret at start): the
/// tenant's refusal and its fix reach TenantReady, and Ready goes False.
async fn refusals_are_named(admin: &Client, ns: &str, gateways: &Api<FederationGateway>) {
    let gw = "contoso";
    let pods: Api<Pod> = Api::namespaced(admin.clone(), ns);
    let wrong_secret = json!({
        "apiVersion": "v1", "kind": "Secret", "type": "Opaque",
        "metadata": {"name": "contoso-graph-app"},
        "stringData": {"client-secret": "not-the-secret"}
    });
    apply_all(admin, ns, "xmppfed-node-test", vec![wrong_secret]).await;
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
        "spec": {"image": "ghcr.io/xmppfed/gateway:0.0.0-absent", "progressDeadlineSeconds": 30}
    });
    let rolled = std::time::Instant::now();
    apply_all(admin, ns, "xmppfed-node-image", vec![wrong]).await;
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

    // And the rollout is reported stuck once its deadline (30 s) has passed.
    let stuck = eventually(
        "Progressing=False ProgressDeadlineExceeded",
        Duration::from_secs(120),
        || async {
            let g = gateways.get(gw).await.ok()?;
            condition(&g, "Progressing")
                .filter(|c| c.status == "False" && c.reason == "ProgressDeadlineExceeded")
                .map(|c| c.message.clone())
        },
    )
    .await;
    assert!(
        ["ErrImagePull", "ImagePullBackOff", "ErrImageNeverPull"]
            .iter()
            .any(|r| stuck.contains(r)),
        "{stuck}"
    );
    // Counted from this roll, not from an earlier one still under way.
    assert!(
        rolled.elapsed() >= Duration::from_secs(30),
        "{:?}",
        rolled.elapsed()
    );
    eprintln!(
        "a wrong image: Progressing=False ProgressDeadlineExceeded {:.1} s after the roll: {stuck}",
        rolled.elapsed().as_secs_f64()
    );
}
