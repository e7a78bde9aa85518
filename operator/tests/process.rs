//! The operator binary without a reachable cluster: it stays up, says why it is
//! not ready, exports its spans and serves metrics.
#![allow(clippy::unwrap_used, clippy::expect_used)] // a test: a panic is a failure with its reason

use std::process::Command;
use std::time::Duration;

use xmppfed_e2e::daemon::Daemon;
use xmppfed_e2e::metrics;
use xmppfed_e2e::otlp::OtlpReceiver;

#[tokio::test(flavor = "multi_thread")]
async fn without_a_cluster_it_is_live_not_ready_and_observable() {
    let receiver = OtlpReceiver::start().await.unwrap();
    let mut command = Command::new(env!("CARGO_BIN_EXE_xmppfed-operator"));
    command
        .args(["--admin-listen", "127.0.0.1:0"])
        .env("KUBECONFIG", "/nonexistent/kubeconfig")
        .env_remove("KUBERNETES_SERVICE_HOST")
        .env("OTEL_EXPORTER_OTLP_ENDPOINT", receiver.endpoint())
        .env("OTEL_BSP_SCHEDULE_DELAY", "100")
        .env_remove("RUST_LOG");
    let mut operator = Daemon::spawn(command).unwrap();
    let started = operator
        .wait_for_log("operator started", Duration::from_secs(20))
        .unwrap();
    let admin = started["admin"].as_str().unwrap().to_owned();

    let http = reqwest::Client::new();
    let healthz = http
        .get(format!("http://{admin}/healthz"))
        .send()
        .await
        .unwrap();
    assert_eq!(healthz.status(), 200);

    // Readiness names the component and the reason.
    let readyz = http
        .get(format!("http://{admin}/readyz"))
        .send()
        .await
        .unwrap();
    assert_eq!(readyz.status(), 503);
    let body = readyz.text().await.unwrap();
    assert!(body.starts_with("kubernetes-api: not ready:"), "{body}");

    let text = http
        .get(format!("http://{admin}/metrics"))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    let scrape = metrics::parse(&text).unwrap();
    let build = metrics::samples(&scrape, "xmppfed_build_info");
    assert_eq!(build[0].labels.get("service"), Some("xmppfed-operator"));

    let span = receiver
        .wait_for_span("kubernetes.connect", Duration::from_secs(10))
        .await
        .unwrap_or_else(|| panic!("no span; received {:?}", receiver.spans()));
    assert_eq!(span.service_name.as_deref(), Some("xmppfed-operator"));

    let status = operator.terminate(Duration::from_secs(15)).unwrap();
    assert!(status.success(), "exit status {status}");
}

#[test]
fn leader_election_without_the_downward_api_is_a_clear_error() {
    let output = Command::new(env!("CARGO_BIN_EXE_xmppfed-operator"))
        .args([
            "--admin-listen",
            "127.0.0.1:0",
            "--leader-election-lease",
            "xmppfed-operator",
        ])
        .env_remove("POD_NAMESPACE")
        .env_remove("POD_NAME")
        .output()
        .unwrap();
    assert_eq!(output.status.code(), Some(2));
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(stderr.contains("POD_NAMESPACE"), "{stderr}");
}
