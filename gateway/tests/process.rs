//! The gateway binary as an operator of it meets it: configuration, telemetry,
//! admin endpoints, and a clean stop on SIGTERM.
#![allow(clippy::unwrap_used, clippy::expect_used)] // a test: a panic is a failure with its reason

use std::process::Command;
use std::time::Duration;

use xmppfed_e2e::daemon::Daemon;
use xmppfed_e2e::metrics;
use xmppfed_e2e::otlp::OtlpReceiver;

const BIN: &str = env!("CARGO_BIN_EXE_xmppfed-gateway");

fn write_config(dir: &tempfile::TempDir, admin: &str) -> std::path::PathBuf {
    let path = dir.path().join("gateway.toml");
    std::fs::write(
        &path,
        format!(
            "[xmpp]\ndomain = \"teams.test\"\n\
             [s2s]\nlisten = \"127.0.0.1:0\"\nrequire_tls = false\n\
             [webhook]\nlisten = \"127.0.0.1:0\"\n\
             [admin]\nlisten = \"{admin}\"\n\
             [store]\nengine = \"sqlite\"\npath = \"{}\"\n",
            dir.path().join("gw.db").display()
        ),
    )
    .unwrap();
    path
}

#[tokio::test(flavor = "multi_thread")]
async fn spans_reach_otlp_metrics_parse_and_sigterm_stops_cleanly() {
    let receiver = OtlpReceiver::start().await.unwrap();
    let dir = tempfile::tempdir().unwrap();
    let config = write_config(&dir, "127.0.0.1:0");

    let mut command = Command::new(BIN);
    command
        .args(["run", "--config"])
        .arg(&config)
        .env("OTEL_EXPORTER_OTLP_ENDPOINT", receiver.endpoint())
        .env("OTEL_SERVICE_NAME", "gateway-under-test")
        .env_remove("OTEL_SDK_DISABLED")
        .env_remove("OTEL_TRACES_EXPORTER")
        .env_remove("RUST_LOG");
    let mut gateway = Daemon::spawn(command).unwrap();
    let started = gateway
        .wait_for_log("gateway started", Duration::from_secs(20))
        .unwrap();
    assert_eq!(started["span"]["name"], "startup", "{started}");
    let admin = started["admin"].as_str().unwrap().to_owned();

    let http = reqwest::Client::new();
    let get = |path: &str| http.get(format!("http://{admin}{path}")).send();

    let healthz = get("/healthz").await.unwrap();
    assert_eq!(healthz.status(), 200);
    let readyz = get("/readyz").await.unwrap();
    assert_eq!(readyz.status(), 200);
    assert_eq!(readyz.text().await.unwrap(), "ok\n");

    let response = get("/metrics").await.unwrap();
    assert_eq!(response.status(), 200);
    let content_type = response.headers()["content-type"]
        .to_str()
        .unwrap()
        .to_owned();
    assert!(
        content_type.starts_with("application/openmetrics-text"),
        "{content_type}"
    );
    let scrape = metrics::parse(&response.text().await.unwrap()).unwrap();
    let build = metrics::samples(&scrape, "xmppfed_build_info");
    assert_eq!(build.len(), 1, "{:?}", scrape.samples);
    assert_eq!(build[0].labels.get("service"), Some("xmppfed-gateway"));
    let info = metrics::samples(&scrape, "xmppfed_gateway_info");
    assert_eq!(info[0].labels.get("domain"), Some("teams.test"));
    assert_eq!(info[0].labels.get("store"), Some("sqlite"));

    // The batch exporter's schedule (5 s by default) has not fired yet: the span
    // arrives because SIGTERM flushes the pipeline on the way out.
    let status = gateway.terminate(Duration::from_secs(15)).unwrap();
    assert!(status.success(), "exit status {status}");
    let span = receiver
        .wait_for_span("startup", Duration::from_secs(5))
        .await
        .unwrap_or_else(|| panic!("no startup span; received {:?}", receiver.spans()));
    assert_eq!(span.service_name.as_deref(), Some("gateway-under-test"));
    assert_eq!(span.trace_id.len(), 16);
    assert!(
        span.attributes
            .contains(&("domain".to_owned(), "teams.test".to_owned())),
        "{:?}",
        span.attributes
    );
}

#[test]
fn check_config_names_bad_fields_and_accepts_good_files() {
    let dir = tempfile::tempdir().unwrap();
    let good = write_config(&dir, "127.0.0.1:0");
    let out = Command::new(BIN)
        .arg("check-config")
        .arg(&good)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        String::from_utf8_lossy(&out.stdout)
            .contains("valid configuration for XMPP domain teams.test")
    );

    let bad = dir.path().join("bad.toml");
    std::fs::write(
        &bad,
        "[xmpp]\ndomain = \"teams.test\"\n[s2s]\nrequire_tls = false\n\
         dialback_secret = { file = \"/nonexistent/secret\" }\n[throttle.default]\nburst = 0\n",
    )
    .unwrap();
    let out = Command::new(BIN)
        .arg("check-config")
        .arg(&bad)
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("throttle.default.burst: must be greater than 0"),
        "{stderr}"
    );

    // Structurally valid, but a named secret cannot be read.
    let fixed = std::fs::read_to_string(&bad)
        .unwrap()
        .replace("burst = 0", "burst = 5");
    std::fs::write(&bad, fixed).unwrap();
    let out = Command::new(BIN)
        .arg("check-config")
        .arg(&bad)
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("s2s.dialback_secret") && stderr.contains("/nonexistent/secret"),
        "{stderr}"
    );
    let out = Command::new(BIN)
        .args(["check-config", "--skip-secrets"])
        .arg(&bad)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

#[test]
fn a_taken_admin_port_is_a_clear_startup_error() {
    let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = taken.local_addr().unwrap().to_string();
    let dir = tempfile::tempdir().unwrap();
    let config = write_config(&dir, &addr);
    let out = Command::new(BIN)
        .args(["run", "--config"])
        .arg(&config)
        .env("XMPPFED_LOG_FORMAT", "json")
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains(&format!("cannot bind the admin port {addr}")),
        "{stderr}"
    );
}

/// A configuration with a `[licence]` section: `nodes` seats, signed by a fresh key.
fn licensed_config(dir: &tempfile::TempDir, nodes: u32) -> std::path::PathBuf {
    let (private, public) = xmppfed_licence::generate_key().unwrap();
    let licence = xmppfed_licence::Licence {
        id: "L-test".into(),
        licensee: "Contoso".into(),
        nodes,
        issued: "2026-01-01T00:00:00Z".parse().unwrap(),
        expires: "2099-01-01T00:00:00Z".parse().unwrap(),
        features: vec![],
    };
    let licence_file = dir.path().join("licence");
    std::fs::write(
        &licence_file,
        xmppfed_licence::issue(&licence, &private).unwrap(),
    )
    .unwrap();
    let config = write_config(dir, "127.0.0.1:0");
    let mut text = std::fs::read_to_string(&config).unwrap();
    text.push_str(&format!(
        "[licence]\nfile = \"{}\"\npublic_key = \"{public}\"\nnode_name_env = \"TEST_NODE_NAME\"\n",
        licence_file.display()
    ));
    std::fs::write(&config, text).unwrap();
    config
}

#[tokio::test(flavor = "multi_thread")]
async fn a_licensed_node_serves_and_reports_its_seat() {
    let dir = tempfile::tempdir().unwrap();
    let config = licensed_config(&dir, 2);
    let mut command = Command::new(BIN);
    command
        .args(["run", "--config"])
        .arg(&config)
        .env("TEST_NODE_NAME", "contoso-1");
    let mut gateway = Daemon::spawn(command).unwrap();
    let seat = gateway
        .wait_for_log("licence seat verified", Duration::from_secs(20))
        .unwrap();
    assert_eq!(seat["licence"], "L-test");
    let started = gateway
        .wait_for_log("gateway started", Duration::from_secs(20))
        .unwrap();
    let admin = started["admin"].as_str().unwrap().to_owned();
    let text = reqwest::get(format!("http://{admin}/metrics"))
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    let scrape = metrics::parse(&text).unwrap();
    let valid = metrics::samples(&scrape, "xmppfed_licence_valid");
    assert_eq!(valid.len(), 1, "{text}");
    assert!(
        matches!(valid[0].value, prometheus_parse::Value::Gauge(v) if v == 1.0),
        "{text}"
    );
    let readyz = reqwest::get(format!("http://{admin}/readyz"))
        .await
        .unwrap();
    assert_eq!(readyz.status(), 200);
    assert!(
        gateway
            .terminate(Duration::from_secs(15))
            .unwrap()
            .success()
    );
}

#[test]
fn a_node_beyond_its_seats_refuses_to_serve() {
    let dir = tempfile::tempdir().unwrap();
    let config = licensed_config(&dir, 2);
    let out = Command::new(BIN)
        .args(["run", "--config"])
        .arg(&config)
        .env("TEST_NODE_NAME", "contoso-2")
        .env("XMPPFED_LOG_FORMAT", "json")
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("refusing to serve: node contoso-2 holds no licence seat: 2 seat(s)"),
        "{stderr}"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn with_graph_the_internal_allow_list_is_read_and_readiness_follows() {
    let client_id = "0f0f0f0f-1111-4222-8333-444444444444";
    let tenant = "5c0ffee0-0000-4000-8000-0000000000ee";
    let seed: xmppfed_e2e::graph::Seed = serde_json::from_value(serde_json::json!({
        "tenantId": tenant,
        "apps": [{"clientId": client_id, "clientSecret": "s3cret", "roles": ["User.Read.All", "GroupMember.Read.All"]}],
        "users": [{"userPrincipalName": "alice@contoso.com", "displayName": "Alice"},
                  {"userPrincipalName": "dave@contoso.com", "displayName": "Dave"}],
        "groups": [{"id": "9a1e2b3c-0000-4000-8000-0000000000f1", "displayName": "Federated", "members": ["dave@contoso.com"]}]
    }))
    .unwrap();
    let emulator = xmppfed_e2e::graph::GraphEmulator::start(seed)
        .await
        .unwrap();
    let dir = tempfile::tempdir().unwrap();
    let secret = dir.path().join("client-secret");
    std::fs::write(&secret, "s3cret").unwrap();
    let config = write_config(&dir, "127.0.0.1:0");
    let mut text = std::fs::read_to_string(&config).unwrap();
    text.push_str(&format!(
        "[graph]\ntenant_id = \"{tenant}\"\nclient_id = \"{client_id}\"\nclient_secret = {{ file = \"{}\" }}\n\
         authority_url = \"{}\"\ngraph_url = \"{}\"\n[shadow_accounts]\nupn_domain = \"shadow.contoso.com\"\nlicence_sku = \"6af4b3d6-14bb-4a2a-960c-6c902aad34f3\"\nusage_location = \"GB\"\ncredential_key = {{ file = \"{}\" }}\n\
         [allow]\nremote_domains = [\"xmpp.test\"]\ninternal_users = [\"alice@contoso.com\"]\ninternal_groups = [\"9a1e2b3c-0000-4000-8000-0000000000f1\"]\n",
        secret.display(),
        emulator.authority_url(),
        emulator.graph_url(),
        secret.display()
    ));
    std::fs::write(&config, text).unwrap();
    let mut command = Command::new(BIN);
    command
        .args(["run", "--config"])
        .arg(&config)
        .env_remove("RUST_LOG");
    let mut gateway = Daemon::spawn(command).unwrap();
    let started = gateway
        .wait_for_log("gateway started", Duration::from_secs(20))
        .unwrap();
    let refreshed = gateway
        .wait_for_log("Teams directory refreshed", Duration::from_secs(20))
        .unwrap();
    assert_eq!(
        refreshed["users"], 2,
        "alice by UPN, dave through the group: {refreshed}"
    );
    let admin = started["admin"].as_str().unwrap().to_owned();
    let readyz = reqwest::get(format!("http://{admin}/readyz"))
        .await
        .unwrap();
    assert_eq!(readyz.status(), 200);
    assert!(emulator.tenant().violations.is_empty());
}
