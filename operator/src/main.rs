use std::net::SocketAddr;
use std::process::ExitCode;
use std::time::Duration;

use anyhow::Context as _;
use clap::Parser;
use xmppfed_telemetry::{
    AdminServer, ComponentHealth, Health, Metrics, TelemetryOptions, admin_router,
};

const SERVICE_NAME: &str = "xmppfed-operator";
const VERSION: &str = env!("CARGO_PKG_VERSION");

/// xmppfed operator: reconciles FederationGateway, DomainWhitelist and ThrottlePolicy.
#[derive(Parser)]
#[command(name = "xmppfed-operator", version)]
struct Cli {
    /// Address of the admin port (/metrics, /healthz, /readyz).
    #[arg(long, env = "XMPPFED_ADMIN_LISTEN", default_value = "0.0.0.0:8080")]
    admin_listen: SocketAddr,
    /// Base64 Ed25519 public key that licences are verified with (from `xmppfed-license keygen`).
    /// Without it no gateway replica is licensed.
    #[arg(long, env = "XMPPFED_LICENCE_PUBLIC_KEY")]
    licence_public_key: Option<String>,
    /// Log filter used when RUST_LOG is unset.
    #[arg(long, env = "XMPPFED_LOG_LEVEL", default_value = "info")]
    log_level: String,
    /// Run several replicas: only the holder of this Lease (in POD_NAMESPACE)
    /// reconciles; the others wait to take over.
    /// The ClusterRole the chart ships for gateway pods (patch on pods),
    /// which the operator binds in each gateway's namespace and holds `bind` on.
    #[arg(long, env = "XMPPFED_GATEWAY_CLUSTER_ROLE", default_value = xmppfed_operator::plan::DEFAULT_GATEWAY_CLUSTER_ROLE)]
    gateway_cluster_role: String,
    /// Watch only these namespaces (comma-separated; the chart's
    /// `watchNamespaces`): the operator then needs no cluster-wide access.
    #[arg(long, env = "XMPPFED_WATCH_NAMESPACES", value_delimiter = ',')]
    watch_namespaces: Vec<String>,
    #[arg(long, env = "XMPPFED_LEADER_ELECTION_LEASE")]
    leader_election_lease: Option<String>,
    /// Seconds without renewal after which another replica takes the Lease.
    #[arg(long, env = "XMPPFED_LEADER_ELECTION_SECONDS", default_value_t = 15)]
    leader_election_seconds: u64,
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    match run(cli) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("xmppfed-operator: {e:#}");
            ExitCode::from(2)
        }
    }
}

fn run(cli: Cli) -> anyhow::Result<()> {
    // One TLS stack for the whole process: rustls with aws-lc-rs.
    let _ = rustls::crypto::aws_lc_rs::default_provider().install_default();
    let telemetry = xmppfed_telemetry::init(&TelemetryOptions {
        service_name: SERVICE_NAME,
        service_version: VERSION,
        default_log_filter: cli.log_level.clone(),
    })?;
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .context("cannot start the async runtime")?;
    let election = match &cli.leader_election_lease {
        Some(lease) => Some(xmppfed_operator::leader::Election {
            lease: lease.clone(),
            namespace: std::env::var("POD_NAMESPACE")
                .context("--leader-election-lease needs POD_NAMESPACE (the downward API's metadata.namespace)")?,
            identity: std::env::var("POD_NAME")
                .context("--leader-election-lease needs POD_NAME (the downward API's metadata.name)")?,
            duration: Duration::from_secs(cli.leader_election_seconds.max(3)),
        }),
        None => None,
    };
    let result = runtime.block_on(serve(
        cli.admin_listen,
        cli.licence_public_key,
        cli.gateway_cluster_role,
        cli.watch_namespaces,
        election,
    ));
    drop(runtime);
    telemetry.shutdown();
    result
}

async fn serve(
    admin_listen: SocketAddr,
    licence_public_key: Option<String>,
    gateway_cluster_role: String,
    watch_namespaces: Vec<String>,
    election: Option<xmppfed_operator::leader::Election>,
) -> anyhow::Result<()> {
    let metrics = Metrics::new(SERVICE_NAME, VERSION);
    let reconcile_metrics = xmppfed_operator::metrics::ReconcileMetrics::register(&metrics);
    let health = Health::new();
    let api = health.component("kubernetes-api");
    let refused = xmppfed_telemetry::refused_counter(&metrics);
    let admin = AdminServer::bind(admin_listen, admin_router(metrics, health))
        .await
        .with_context(|| format!("cannot bind the admin port {admin_listen}"))?;
    tracing::info!(admin = %admin.local_addr()?, "operator started");

    let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
    let stopped = move || {
        let mut rx = stop_rx.clone();
        async move {
            let _ = rx.wait_for(|stop| *stop).await;
        }
    };
    let controllers = tokio::spawn({
        let stopped = stopped.clone();
        async move {
            let client = tokio::select! {
                client = connect_to_api(api) => client,
                () = stopped() => return Ok(()),
            };
            let ctx = xmppfed_operator::reconcile::Context::new(client.clone(), licence_public_key)
                .with_gateway_cluster_role(gateway_cluster_role)
                .with_namespaces(watch_namespaces)
                .with_metrics(reconcile_metrics);
            let Some(election) = election else {
                xmppfed_operator::reconcile::run(ctx, stopped()).await;
                return Ok(());
            };
            let leases = kube::Api::namespaced(client.clone(), &election.namespace);
            tokio::select! {
                () = xmppfed_operator::leader::acquire(&leases, &election) => {}
                () = stopped() => return Ok(()),
            }
            // Lead until told to stop, or until the Lease is lost: then exit,
            // so that this replica restarts as a follower.
            tokio::select! {
                () = xmppfed_operator::reconcile::run(ctx, stopped()) => Ok(()),
                () = xmppfed_operator::leader::keep(&leases, &election) => {
                    Err(anyhow::anyhow!("lost the leader-election lease {}", election.lease))
                }
            }
        }
    });
    let admin_stopped = stopped();
    // The admin port faces the cluster: bounded like the gateway's.
    let admin_task = tokio::spawn(admin.serve(
        (&xmppfed_config::ListenerLimits::default()).into(),
        refused,
        admin_stopped,
    ));
    let mut controllers = controllers;
    let outcome = tokio::select! {
        () = xmppfed_telemetry::shutdown_signal() => {
            let _ = stop_tx.send(true);
            // Controllers finish their in-flight reconciles before the process exits.
            controllers.await.unwrap_or(Ok(()))
        }
        ended = &mut controllers => ended.unwrap_or(Ok(())),
    };
    let _ = stop_tx.send(true);
    let served = admin_task.await.unwrap_or(Ok(()));
    tracing::info!("operator stopped");
    outcome?;
    Ok(served?)
}

/// Connects to the API server named by the in-cluster environment or KUBECONFIG,
/// retrying with backoff; readiness follows the outcome.
async fn connect_to_api(api: ComponentHealth) -> kube::Client {
    let mut delay = Duration::from_secs(1);
    loop {
        let attempt = async {
            let client = kube::Client::try_default().await?;
            let version = client.apiserver_version().await?;
            anyhow::Ok((client, version))
        };
        let span = tracing::info_span!("kubernetes.connect");
        match tracing::Instrument::instrument(attempt, span).await {
            Ok((client, version)) => {
                tracing::info!(
                    server = %format!("{}.{}", version.major, version.minor),
                    "connected to the Kubernetes API"
                );
                api.ready();
                return client;
            }
            Err(e) => {
                let reason = format!("cannot reach the Kubernetes API: {e}");
                tracing::warn!(retry_in = ?delay, "{reason}");
                api.not_ready(&reason);
                tokio::time::sleep(delay).await;
                delay = (delay * 2).min(Duration::from_secs(30));
            }
        }
    }
}
