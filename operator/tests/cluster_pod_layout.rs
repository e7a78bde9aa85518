//! The gateway as its pod would run, on the cluster `KUBECONFIG` names
//! (skipped, saying so, when none; see e2e::cluster): the operator renders a
//! gateway; this test reads the StatefulSet's pod template back from the API
//! server, lays its volumes out exactly where the template mounts them (in a
//! mount namespace of its own: `unshare -m`, bind mounts), sets the
//! environment the kubelet would (downward API values from the real Pod, the
//! ServiceAccount token from a TokenRequest, the cluster's CA), and starts the
//! gateway binary with the template's arguments. The gateway must accept the
//! rendered configuration, verify its licence seat, and label *its pod* through
//! the real API server with that token (the RoleBinding the operator made,
//! of the gateway ClusterRole the chart ships, allows exactly that).
//!
//! Needs root (mount namespaces) and the gateway binary (built by `cargo test
//! --workspace`). Graph is Microsoft's here, out of reach, so readiness is not
//! asserted; pods that run for real against the Graph emulator are issue 19.
#![allow(clippy::unwrap_used, clippy::expect_used)] // a test: a panic is a failure with its reason

mod support;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use k8s_openapi::api::apps::v1::StatefulSet;
use k8s_openapi::api::authentication::v1::{TokenRequest, TokenRequestSpec};
use k8s_openapi::api::core::v1::{ConfigMap, Namespace, Pod, Secret, ServiceAccount};
use kube::Client;
use kube::api::{Api, DeleteParams, PostParams};
use support::{apply_all, examples_licensed, licence_text, with_secret};
use xmppfed_e2e::cluster::{self, eventually};
use xmppfed_e2e::daemon::Daemon;

const SERVICE_ACCOUNT_DIR: &str = "/var/run/secrets/kubernetes.io/serviceaccount";

fn gateway_binary() -> Option<PathBuf> {
    let path = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../target/debug/xmppfed-gateway");
    path.is_file().then_some(path)
}

/// A self-signed certificate and key for `domain` (PEM), from openssl.
fn certificate(dir: &Path, domain: &str) -> (String, String) {
    let (crt, key) = (dir.join("s2s.crt"), dir.join("s2s.key"));
    let status = Command::new("openssl")
        .args([
            "req",
            "-x509",
            "-newkey",
            "ec",
            "-pkeyopt",
            "ec_paramgen_curve:P-256",
        ])
        .args(["-nodes", "-days", "2", "-subj", &format!("/CN={domain}")])
        .args(["-addext", &format!("subjectAltName=DNS:{domain}")])
        .arg("-keyout")
        .arg(&key)
        .arg("-out")
        .arg(&crt)
        .output()
        .expect("openssl");
    assert!(status.status.success(), "{status:?}");
    (
        std::fs::read_to_string(crt).unwrap(),
        std::fs::read_to_string(key).unwrap(),
    )
}

fn write(dir: &Path, files: BTreeMap<String, Vec<u8>>) {
    std::fs::create_dir_all(dir).unwrap();
    for (name, bytes) in files {
        std::fs::write(dir.join(name), bytes).unwrap();
    }
}

/// Each volume of the pod template, as the kubelet would fill it, and the
/// service account's token directory: (volume name → directory, token directory).
async fn lay_out_volumes(
    client: &Client,
    ns: &str,
    template: &k8s_openapi::api::core::v1::PodSpec,
    scratch: &Path,
) -> (BTreeMap<String, PathBuf>, PathBuf) {
    let configmaps: Api<ConfigMap> = Api::namespaced(client.clone(), ns);
    let secrets: Api<Secret> = Api::namespaced(client.clone(), ns);
    let mut sources: BTreeMap<String, PathBuf> = BTreeMap::new();
    for volume in template.volumes.iter().flatten() {
        let dir = scratch.join("volumes").join(&volume.name);
        let files: BTreeMap<String, Vec<u8>> = if let Some(cm) = &volume.config_map {
            let cm = configmaps.get(&cm.name).await.unwrap();
            cm.data
                .unwrap_or_default()
                .into_iter()
                .map(|(k, v)| (k, v.into_bytes()))
                .collect()
        } else if let Some(s) = &volume.secret {
            let name = s.secret_name.as_deref().unwrap();
            let secret = secrets
                .get(name)
                .await
                .unwrap_or_else(|e| panic!("Secret {name}: {e}"));
            secret
                .data
                .unwrap_or_default()
                .into_iter()
                .map(|(k, v)| (k, v.0))
                .collect()
        } else if volume.empty_dir.is_some() {
            BTreeMap::new()
        } else {
            panic!("a volume the test cannot lay out: {volume:?}");
        };
        write(&dir, files);
        sources.insert(volume.name.clone(), dir);
    }
    // The claim template's volume: an empty directory, as a new PVC is.
    let data = scratch.join("volumes/data");
    std::fs::create_dir_all(&data).unwrap();
    sources.insert("data".into(), data);
    // automountServiceAccountToken: the token, the cluster's CA, the namespace.
    let accounts: Api<ServiceAccount> = Api::namespaced(client.clone(), ns);
    let account = template.service_account_name.clone().unwrap();
    let token = accounts
        .create_token_request(
            &account,
            &PostParams::default(),
            &TokenRequest {
                spec: TokenRequestSpec {
                    audiences: vec![],
                    expiration_seconds: Some(600),
                    ..TokenRequestSpec::default()
                },
                ..TokenRequest::default()
            },
        )
        .await
        .unwrap()
        .status
        .unwrap()
        .token;
    let ca = eventually("kube-root-ca.crt", Duration::from_secs(30), || async {
        configmaps
            .get_opt("kube-root-ca.crt")
            .await
            .ok()??
            .data?
            .remove("ca.crt")
    })
    .await;
    let sa_dir = scratch.join("volumes/serviceaccount");
    write(
        &sa_dir,
        BTreeMap::from([
            ("token".to_owned(), token.into_bytes()),
            ("ca.crt".to_owned(), ca.into_bytes()),
            ("namespace".to_owned(), ns.as_bytes().to_vec()),
        ]),
    );

    (sources, sa_dir)
}

/// The gateway as the container would run: the mounts in a mount namespace
/// (nothing changes outside the process), the container's arguments and
/// environment, the API server where a pod finds it.
async fn pod_command(
    gateway: &Path,
    container: &k8s_openapi::api::core::v1::Container,
    sources: &BTreeMap<String, PathBuf>,
    sa_dir: PathBuf,
    ns: &str,
    uid: &str,
) -> Command {
    let mut script = String::from("set -e\nmount -t tmpfs none /var/lib\n");
    let mut mounts: Vec<(String, PathBuf)> = container
        .volume_mounts
        .iter()
        .flatten()
        .map(|m| (m.mount_path.clone(), sources[&m.name].clone()))
        .collect();
    mounts.push((SERVICE_ACCOUNT_DIR.into(), sa_dir));
    for (target, source) in &mounts {
        if target == "/tmp" {
            continue; // the host's /tmp holds the sources themselves
        }
        script.push_str(&format!(
            "mkdir -p '{target}'\nmount --bind '{}' '{target}'\n",
            source.display()
        ));
    }
    script.push_str("exec \"$@\"\n");
    let mut command = Command::new("unshare");
    command
        .args(["-m", "--propagation", "private", "sh", "-c", &script, "sh"])
        .arg(gateway)
        .args(container.args.iter().flatten());
    for var in container.env.iter().flatten() {
        let value = match (&var.value, &var.value_from) {
            (Some(v), _) => v.clone(),
            (None, Some(from)) => match from.field_ref.as_ref().map(|f| f.field_path.as_str()) {
                Some("metadata.name") => "contoso-0".into(),
                Some("metadata.namespace") => ns.into(),
                Some("metadata.uid") => uid.to_owned(),
                other => panic!("an environment source the test cannot fill: {other:?}"),
            },
            (None, None) => String::new(),
        };
        command.env(&var.name, value);
    }
    let api = kube::Config::infer().await.unwrap().cluster_url;
    command
        .env("KUBERNETES_SERVICE_HOST", api.host().unwrap())
        .env(
            "KUBERNETES_SERVICE_PORT",
            api.port_u16().unwrap_or(443).to_string(),
        )
        .env_remove("OTEL_EXPORTER_OTLP_ENDPOINT")
        .env_remove("RUST_LOG");
    command
}

/// This process can stand in for a pod: it may lay out volumes (root, for
/// `unshare -m`) and the gateway binary is built. Its path, or `None` (skip,
/// said why).
fn stand_in_for_a_pod() -> Option<PathBuf> {
    let root_ok = Command::new("unshare")
        .args(["-m", "true"])
        .status()
        .is_ok_and(|s| s.success());
    if !root_ok {
        eprintln!("skipped: laying out a pod's volumes needs root (unshare -m)");
        return None;
    }
    let Some(gateway) = gateway_binary() else {
        assert!(
            !cluster::required(),
            "XMPPFED_TEST_CLUSTER=required but target/debug/xmppfed-gateway is not built"
        );
        eprintln!("skipped: needs target/debug/xmppfed-gateway (cargo test --workspace builds it)");
        return None;
    };
    Some(gateway)
}

/// Waits for the stand-in to label contoso-0 the leader; says what the pod
/// and the stand-in looked like when it does not.
async fn leader_label(pods: &Api<Pod>, uid: &str, running: &mut Daemon) {
    let labelled = cluster::within(Duration::from_secs(90), || async {
        let pod = pods.get("contoso-0").await.ok()?;
        let role = pod
            .metadata
            .labels?
            .get(xmppfed_config::POD_ROLE_LABEL)?
            .clone();
        (role == "leader").then_some(role)
    })
    .await;
    if labelled.is_none() {
        let now = pods.get("contoso-0").await.ok();
        panic!(
            "contoso-0 was not labelled leader within 90 s; the stand-in ran as uid {uid}, \
             the pod now: uid {:?}, labels {:?}; the stand-in said: {:#?}",
            now.as_ref().and_then(|p| p.metadata.uid.clone()),
            now.as_ref().and_then(|p| p.metadata.labels.clone()),
            running.lines_so_far()
        );
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn the_gateway_runs_from_what_the_operator_rendered() {
    let Some(client) = cluster::client("the_gateway_runs_from_what_the_operator_rendered").await
    else {
        return;
    };
    let Some(gateway) = stand_in_for_a_pod() else {
        return;
    };
    support::install_crds(&client).await;
    let namespaces: Api<Namespace> = Api::all(client.clone());
    let ns_name = support::namespace(&client, "xmppfed-pod").await;
    let ns = ns_name.as_str();
    let scratch = tempfile::tempdir().unwrap();

    // The operator, and the example with a real licence and certificate.
    let (private, public) = xmppfed_licence::generate_key().unwrap();
    let gateway_role =
        support::GatewayClusterRole::make(&client, &format!("{ns_name}-gateway")).await;
    let controller = support::Controller::start_binding(client.clone(), public, &gateway_role.name);
    let (crt, key) = certificate(scratch.path(), "teams.contoso.example");
    let docs = examples_licensed(
        &["minimal-sqlite.yaml"],
        "xmppfed-licence",
        &licence_text(&private, "pod-it", 1),
    );
    let docs = with_secret(docs, "contoso-s2s-tls", "tls.crt", &crt);
    let mut docs = with_secret(docs, "contoso-s2s-tls", "tls.key", &key);
    // This process stands in for the pod: where a node runs pods, the real
    // one must not start (an image no node has), or both would be contoso-0.
    for doc in &mut docs {
        if doc["kind"] == "FederationGateway" {
            doc["spec"]["image"] = serde_json::json!("xmppfed.invalid/stand-in-only:0");
        }
    }
    apply_all(&client, ns, "xmppfed-pod-test", docs).await;
    let statefulsets: Api<StatefulSet> = Api::namespaced(client.clone(), ns);
    let pods: Api<Pod> = Api::namespaced(client.clone(), ns);
    let pod = eventually(
        "the StatefulSet and its pod contoso-0",
        Duration::from_secs(60),
        || async {
            // The pod of the StatefulSet's latest revision: one the
            // controller is about to replace would take its label along.
            let set = statefulsets.get_opt("contoso").await.ok()??;
            let status = set.status?;
            (status.observed_generation? == set.metadata.generation?).then_some(())?;
            let pod = pods.get_opt("contoso-0").await.ok()??;
            let revision = pod
                .metadata
                .labels
                .as_ref()?
                .get("controller-revision-hash")?;
            (Some(revision) == status.update_revision.as_ref()).then_some(pod)
        },
    )
    .await;
    let template = statefulsets
        .get("contoso")
        .await
        .unwrap()
        .spec
        .unwrap()
        .template
        .spec
        .unwrap();
    let container = &template.containers[0];

    let (sources, sa_dir) = lay_out_volumes(&client, ns, &template, scratch.path()).await;

    let uid = pod.metadata.uid.clone().unwrap();
    let command = pod_command(&gateway, container, &sources, sa_dir, ns, &uid).await;
    let mut running = Daemon::spawn(command).unwrap();
    running
        .wait_for_log("gateway started", Duration::from_secs(60))
        .unwrap_or_else(|e| panic!("the gateway did not start: {e}"));
    assert!(
        running
            .lines_so_far()
            .iter()
            .any(|l| l.contains("licence seat verified")),
        "no licence seat: {:?}",
        running.lines_so_far()
    );

    // It labels its own pod through the real API server with its token.
    leader_label(&pods, &uid, &mut running).await;
    assert!(running.is_running());

    drop(running);
    controller.stop().await;
    gateway_role.remove().await;
    namespaces
        .delete(ns, &DeleteParams::default())
        .await
        .unwrap();
}
