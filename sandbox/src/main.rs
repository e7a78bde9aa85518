//! The sandbox: the gateway on its embedded default (examples/local/gateway.toml,
//! an SQLite store, s2s on 127.0.0.1:5270) bridged to an emulated Microsoft 365
//! tenant in the same process, with a few Teams users to act as. Federate a
//! local Prosody with `teams.localhost` and talk to them from any XMPP client.
//!
//! `xmppfed-sandbox` runs it; `xmppfed-sandbox say|presence|messages|users`
//! act as the Teams users through its control port.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::Arc;

use anyhow::{Context, bail};
use axum::extract::{Query, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use clap::{Parser, Subcommand};
use serde::Deserialize;
use serde_json::{Value, json};
use xmppfed_config::{GatewayConfig, GraphConfig, SecretRef};
use xmppfed_e2e::graph::{GraphEmulator, Seed};
use xmppfed_gateway::SANDBOX_CONFIG;
use xmppfed_gateway::bridge::contacts::shadow::upn_for;
use xmppfed_gateway::process::Gateway;

const CONTROL: &str = "127.0.0.1:8080";
const GRAPH: &str = "127.0.0.1:8444";
const TENANT_DOMAIN: &str = "contoso.test";
const SHADOW_DOMAIN: &str = "xmpp.contoso.test";
const CLIENT_ID: &str = "5a4d8b1e-0000-4000-8000-00000000000a";
const SKU: &str = "6af4b3d6-14bb-4a2a-960c-6c902aad34f3";
/// Teams users on the allow list (they exist as `NAME@teams.localhost`).
const USERS: &[(&str, &str, &str)] = &[
    ("alice", "Alice Liddell", "Engineer"),
    ("carol", "Carol Danvers", "Pilot"),
];

/// xmppfed sandbox: the gateway with an emulated Microsoft 365 tenant.
#[derive(Parser)]
#[command(name = "xmppfed-sandbox", version)]
struct Cli {
    #[command(subcommand)]
    command: Option<Command>,
}

#[derive(Subcommand)]
enum Command {
    /// Run the sandbox (the default).
    Run {
        /// Where the store and generated secrets go.
        #[arg(long, default_value = "target/sandbox")]
        dir: PathBuf,
        /// The s2s port of the local XMPP server (domain `localhost`).
        #[arg(long, default_value_t = 5269)]
        peer_port: u16,
    },
    /// Write as a Teams user to an XMPP contact who has written to them.
    Say {
        from: String,
        to: String,
        text: String,
    },
    /// Set a Teams user's presence (Available, Busy, DoNotDisturb, Away, BeRightBack, Offline).
    Presence {
        user: String,
        availability: String,
        /// Teams activity; the availability when absent.
        activity: Option<String>,
        #[arg(long)]
        status: Option<String>,
    },
    /// What a Teams user's chats hold.
    Messages { user: String },
    /// The Teams users and their JIDs.
    Users,
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(r) => r,
        Err(e) => {
            eprintln!("xmppfed-sandbox: {e}");
            return ExitCode::from(2);
        }
    };
    let result = runtime.block_on(async {
        match cli.command.unwrap_or(Command::Run {
            dir: PathBuf::from("target/sandbox"),
            peer_port: 5269,
        }) {
            Command::Run { dir, peer_port } => run(&dir, peer_port).await,
            Command::Say { from, to, text } => {
                control("say", json!({"from": from, "to": to, "text": text})).await
            }
            Command::Presence {
                user,
                availability,
                activity,
                status,
            } => {
                let activity = activity.unwrap_or_else(|| availability.clone());
                control(
                    "presence",
                    json!({"user": user, "availability": availability, "activity": activity, "statusMessage": status}),
                )
                .await
            }
            Command::Messages { user } => show(&format!("messages?user={user}")).await,
            Command::Users => show("users").await,
        }
    });
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("xmppfed-sandbox: {e:#}");
            ExitCode::from(2)
        }
    }
}

async fn control(path: &str, body: Value) -> anyhow::Result<()> {
    let response = reqwest::Client::new()
        .post(format!("http://{CONTROL}/{path}"))
        .json(&body)
        .send()
        .await
        .context("is the sandbox running? (xmppfed-sandbox)")?;
    let status = response.status();
    let text = response.text().await.unwrap_or_default();
    if !status.is_success() {
        bail!("{text}");
    }
    println!("{text}");
    Ok(())
}

async fn show(path: &str) -> anyhow::Result<()> {
    let text = reqwest::get(format!("http://{CONTROL}/{path}"))
        .await
        .context("is the sandbox running? (xmppfed-sandbox)")?
        .text()
        .await?;
    println!("{text}");
    Ok(())
}

fn seed() -> anyhow::Result<Seed> {
    let mut users: Vec<Value> = USERS
        .iter()
        .map(|(name, display, title)| {
            json!({"userPrincipalName": format!("{name}@{TENANT_DOMAIN}"), "displayName": display,
                   "jobTitle": title, "mail": format!("{name}@{TENANT_DOMAIN}")})
        })
        .collect();
    // In the tenant but not on the allow list: does not exist to XMPP.
    users.push(json!({"userPrincipalName": format!("dave@{TENANT_DOMAIN}"), "displayName": "Dave (not federated)"}));
    Ok(serde_json::from_value(json!({
        "tenantId": "5a4d8b1e-0000-4000-8000-0000000000aa",
        "apps": [{"clientId": CLIENT_ID, "clientSecret": "sandbox-secret",
                  "roles": ["User.ReadWrite.All", "GroupMember.Read.All", "Presence.ReadWrite.All",
                            "LicenseAssignment.ReadWrite.All", "ProfilePhoto.ReadWrite.All"],
                  "scopes": ["Presence.ReadWrite", "Chat.Create", "Chat.ReadWrite", "ChatMessage.Send"]}],
        "users": users,
        "skus": [{"skuId": SKU, "skuPartNumber": "TEAMS_ESSENTIALS", "prepaidUnits": 25}]
    }))?)
}

fn secret(dir: &Path, name: &str, value: &str) -> anyhow::Result<SecretRef> {
    let path = dir.join(name);
    std::fs::write(&path, value).with_context(|| format!("writing {}", path.display()))?;
    Ok(SecretRef::File(path))
}

/// The embedded default, bridged to the emulated tenant.
fn config(dir: &Path, emulator: &GraphEmulator) -> anyhow::Result<GatewayConfig> {
    let mut config = GatewayConfig::from_toml_str(SANDBOX_CONFIG)?;
    config.graph = Some(GraphConfig {
        tenant_id: emulator.tenant().id.clone(),
        client_id: CLIENT_ID.to_owned(),
        client_secret: Some(secret(dir, "graph-client-secret", "sandbox-secret")?),
        client_certificate: None,
        authority_url: Some(emulator.authority_url()),
        graph_url: Some(emulator.graph_url()),
        cloud: Default::default(),
        ca_file: None,
        limits: Default::default(),
    });
    config.shadow_accounts.upn_domain = Some(SHADOW_DOMAIN.to_owned());
    config.shadow_accounts.licence_sku = Some(SKU.to_owned());
    config.shadow_accounts.usage_location = Some("GB".to_owned());
    config.shadow_accounts.credential_key =
        Some(secret(dir, "credential-key", "sandbox only: not a secret")?);
    config.allow.internal_users = USERS
        .iter()
        .map(|(name, _, _)| format!("{name}@{TENANT_DOMAIN}"))
        .collect();
    config.webhook.public_url = Some(format!("http://{}", config.webhook.listen));
    config.webhook.client_state = Some(secret(dir, "client-state", "sandbox client state")?);
    config.store = xmppfed_config::StoreConfig::Sqlite {
        path: dir.join("xmppfed.db"),
    };
    // STARTTLS with a self-signed certificate when openssl is at hand:
    // Prosody requires encryption on s2s by default.
    match xmppfed_e2e::prosody::self_signed(dir, &config.xmpp.domain) {
        Ok((cert, key)) => {
            config.s2s.tls_cert_file = Some(cert);
            config.s2s.tls_key_file = Some(key);
        }
        Err(e) => eprintln!(
            "no certificate ({e}); s2s without TLS: set s2s_require_encryption = false in Prosody"
        ),
    }
    config.validate()?;
    Ok(config)
}

async fn run(dir: &Path, peer_port: u16) -> anyhow::Result<()> {
    let _ = rustls::crypto::aws_lc_rs::default_provider().install_default();
    let telemetry = xmppfed_telemetry::init(&xmppfed_telemetry::TelemetryOptions {
        service_name: "xmppfed-sandbox",
        service_version: env!("CARGO_PKG_VERSION"),
        default_log_filter: "info".to_owned(),
    })?;
    std::fs::create_dir_all(dir)?;
    let graph: SocketAddr = GRAPH.parse()?;
    let emulator = Arc::new(
        GraphEmulator::start_on(seed()?, graph)
            .await
            .with_context(|| format!("starting the emulated tenant on {GRAPH}"))?,
    );
    let mut config = config(dir, &emulator)?;
    for route in &mut config.s2s.static_routes {
        route.port = peer_port;
    }
    for (name, _, _) in USERS {
        emulator
            .control(
                &format!("/_emulator/users/{name}@{TENANT_DOMAIN}/presence"),
                json!({"availability": "Available", "activity": "Available"}),
            )
            .await?;
    }
    let gateway = Gateway::start(&config).await?;
    let listener = tokio::net::TcpListener::bind(CONTROL)
        .await
        .with_context(|| format!("binding the control port {CONTROL}"))?;
    let control = Router::new()
        .route("/say", post(say))
        .route("/presence", post(presence))
        .route("/messages", get(messages))
        .route("/users", get(users))
        .with_state(emulator.clone());
    tokio::spawn(async move {
        if let Err(e) = axum::serve(listener, control).await {
            tracing::error!(error = %e, "the sandbox control port failed");
        }
    });
    print_banner(&config, dir);
    gateway.run(xmppfed_telemetry::shutdown_signal()).await?;
    drop(telemetry);
    Ok(())
}

fn print_banner(config: &GatewayConfig, dir: &Path) {
    let plugins = Path::new(env!("CARGO_MANIFEST_DIR")).join("../e2e/prosody");
    let plugins = plugins.canonicalize().unwrap_or(plugins);
    let plugins = plugins.display();
    let domain = &config.xmpp.domain;
    let users: Vec<String> = USERS
        .iter()
        .map(|(n, d, _)| format!("{n}@{domain} ({d})"))
        .collect();
    eprintln!(
        "\nxmppfed sandbox: XMPP domain {domain}, s2s on {s2s}, an emulated Microsoft 365 tenant on {GRAPH}\n\
         Teams users: {users}\n\
         Store and generated secrets: {dir}\n\
         Health: http://{admin}/readyz   Metrics: http://{admin}/metrics\n\
         \n\
         Add to your local Prosody (prosody.cfg.lua), then restart it:\n\
         \n  plugin_paths = {{ \"{plugins}\" }}\n  \
         modules_enabled = {{ --[[ yours, and: ]] \"xmppfed_route\" }}\n  \
         xmppfed_routes = {{ [\"{domain}\"] = {{ \"127.0.0.1\", {port} }} }}\n  \
         -- the sandbox's certificate is self-signed:\n  s2s_secure_auth = false\n\
         \n\
         Then, from an XMPP client on Prosody: add alice@{domain} as a contact, write to her.\n\
         Act as the Teams users from another terminal:\n\
         \n  cargo run -p xmppfed-sandbox -- say alice you@localhost \"Hello from Teams\"\n  \
         cargo run -p xmppfed-sandbox -- presence alice Busy InAMeeting\n  \
         cargo run -p xmppfed-sandbox -- messages alice\n\
         \nStop with Ctrl-C.\n",
        s2s = config.s2s.listen,
        users = users.join(", "),
        dir = dir.display(),
        admin = config.admin.listen,
        port = config.s2s.listen.port(),
    );
}

fn error(status: StatusCode, text: impl Into<String>) -> Response {
    (status, text.into()).into_response()
}

fn upn(name: &str) -> String {
    let name = name.split('@').next().unwrap_or(name);
    format!("{name}@{TENANT_DOMAIN}")
}

#[derive(Deserialize)]
struct Say {
    from: String,
    to: String,
    text: String,
}

/// A Teams user writes in their chat with an XMPP contact.
async fn say(State(emulator): State<Arc<GraphEmulator>>, Json(say): Json<Say>) -> Response {
    let contact = say.to.to_lowercase();
    let shadow = upn_for(&contact, SHADOW_DOMAIN);
    let known = {
        let tenant = emulator.tenant();
        tenant.user(&upn(&say.from)).is_some() && tenant.user(&shadow).is_some()
    };
    if !known {
        return error(
            StatusCode::CONFLICT,
            format!(
                "{contact} has no Teams identity yet: subscribe to or write to {}@teams.localhost \
                 from XMPP first (Teams users reach contacts the gateway knows)",
                say.from
            ),
        );
    }
    // As in Teams: the 1:1 chat with "Contact (XMPP)", started if need be.
    let chat = match emulator
        .control(
            "/_emulator/chats",
            json!({"from": upn(&say.from), "with": shadow}),
        )
        .await
    {
        Ok(chat) => chat["id"].as_str().unwrap_or_default().to_owned(),
        Err(e) => return error(StatusCode::BAD_GATEWAY, e.to_string()),
    };
    match emulator
        .control(
            &format!("/_emulator/chats/{chat}/messages"),
            json!({"from": upn(&say.from), "content": say.text, "contentType": "text"}),
        )
        .await
    {
        Ok(_) => (StatusCode::OK, format!("{} → {contact}: sent", say.from)).into_response(),
        Err(e) => error(StatusCode::BAD_GATEWAY, e.to_string()),
    }
}

/// A Teams user changes presence (and status message).
async fn presence(State(emulator): State<Arc<GraphEmulator>>, Json(body): Json<Value>) -> Response {
    let user = upn(body["user"].as_str().unwrap_or_default());
    let mut change = json!({"availability": body["availability"], "activity": body["activity"]});
    if let Some(status) = body["statusMessage"].as_str() {
        change["statusMessage"] = json!(status);
    }
    match emulator
        .control(&format!("/_emulator/users/{user}/presence"), change)
        .await
    {
        Ok(_) => (StatusCode::OK, format!("{user}: {}", body["availability"])).into_response(),
        Err(e) => error(StatusCode::BAD_REQUEST, e.to_string()),
    }
}

#[derive(Deserialize)]
struct Who {
    user: String,
}

/// A Teams user's chats, as text.
async fn messages(State(emulator): State<Arc<GraphEmulator>>, Query(who): Query<Who>) -> Response {
    let tenant = emulator.tenant();
    let Some(user) = tenant.user(&upn(&who.user)) else {
        return error(StatusCode::NOT_FOUND, format!("no Teams user {}", who.user));
    };
    let mut out = String::new();
    for chat in tenant.chats.iter().filter(|c| c.members.contains(&user.id)) {
        let others: Vec<String> = chat
            .members
            .iter()
            .filter(|m| **m != user.id)
            .filter_map(|m| tenant.user(m))
            .map(|u| u.upn().to_owned())
            .collect();
        out.push_str(&format!("chat with {}\n", others.join(", ")));
        for m in &chat.messages {
            out.push_str(&format!(
                "  {} {}: {}\n",
                m["createdDateTime"].as_str().unwrap_or_default(),
                m["from"]["user"]["displayName"].as_str().unwrap_or("?"),
                m["body"]["content"].as_str().unwrap_or_default()
            ));
        }
    }
    if out.is_empty() {
        out = format!("{} has no chats yet\n", who.user);
    }
    (StatusCode::OK, out).into_response()
}

async fn users(State(emulator): State<Arc<GraphEmulator>>) -> Response {
    let mut tenant = emulator.tenant();
    let now = std::time::Instant::now();
    let mut out = String::new();
    for u in &mut tenant.users {
        let federated = USERS.iter().any(|(n, _, _)| u.upn() == upn(n));
        let (availability, activity) = u.presence.aggregate(now);
        out.push_str(&format!(
            "{:<48} {:<28} {}\n",
            u.upn(),
            format!("{availability}/{activity}"),
            if federated {
                format!(
                    "{}@teams.localhost",
                    u.upn().split('@').next().unwrap_or_default()
                )
            } else if u.upn().ends_with(SHADOW_DOMAIN) {
                "shadow account of an XMPP contact".to_owned()
            } else {
                "not federated".to_owned()
            }
        ));
    }
    (StatusCode::OK, out).into_response()
}
