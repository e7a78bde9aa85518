//! The gateway process: binds its listeners, reports health and metrics, and
//! runs until told to stop.

use std::future::Future;
use std::net::SocketAddr;

use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use xmppfed_config::{GatewayConfig, LicenceConfig, StoreConfig};
use xmppfed_telemetry::ComponentHealth;

use std::sync::Arc;

use tokio::sync::{Notify, watch};
use xmpp_parsers::stanza_error::{DefinedCondition, ErrorType};

use crate::bridge::Services;
use crate::bridge::contacts::credentials::{CredentialCipher, SealedRefreshTokens};
use crate::bridge::metrics::BridgeMetrics;
use crate::bridge::service::{Bridge, Settings};
use crate::bridge::throttle::Throttle;
use crate::bridge::users::directory::{AllowedNames, AllowedUsers, Directory};
use crate::bridge::users::identity::LocalPartRule;
use crate::graph::subscriptions::Subscriptions;
use crate::graph::webhook;
use crate::graph::{RefreshTokenVault, SignInMonitor};
use crate::leadership::Leadership;
use crate::licence::{self, LicenceCheckError, LicenceMetrics};
use crate::pod::PodMetadata;
use crate::s2s::{AnyUser, Inbox, S2s, S2sSender};
use crate::store::Store;
use xmppfed_config::LocalPartSource;
use xmppfed_telemetry::{AdminServer, Health, ListenerBounds, Metrics, admin_router};

pub const SERVICE_NAME: &str = "xmppfed-gateway";
pub const VERSION: &str = env!("CARGO_PKG_VERSION");

#[derive(Debug, thiserror::Error)]
pub enum StartError {
    #[error("refusing to serve: {0}")]
    Licence(#[from] LicenceCheckError),
    #[error(transparent)]
    S2s(#[from] crate::s2s::S2sError),
    #[error("graph: {0}")]
    Graph(#[from] crate::graph::GraphError),
    /// The store's errors say "store:" themselves.
    #[error(transparent)]
    Store(#[from] crate::store::StoreError),
    #[error("configuration: {0}")]
    Config(#[from] xmppfed_config::ConfigError),
    #[error("cannot bind the webhook port {addr}: {source}")]
    WebhookBind {
        addr: SocketAddr,
        source: std::io::Error,
    },
    #[error("cannot bind the admin port {addr}: {source}")]
    AdminBind {
        addr: SocketAddr,
        source: std::io::Error,
    },
    #[error(transparent)]
    Sip(#[from] crate::sip_route::SipRouteError),
}

/// A gateway whose listeners are bound and which is ready to serve.
pub struct Gateway {
    admin: AdminServer,
    health: Health,
    licence: Option<LicenceWatch>,
    s2s: S2s,
    /// Stanzas for the bridge.
    inbox: Inbox,
    /// With Graph configured: the internal allow list, kept fresh.
    directory: Option<DirectoryWatch>,
    /// What serves the inbox once this replica holds the bridge lease: the
    /// Graph bridge (built then: it reads the store afresh) or the SIP route.
    bridge: Option<(Route, Arc<Leadership>)>,

    /// With `webhook.public_url`: the bound listener for Graph's notifications.
    webhook: Option<(tokio::net::TcpListener, axum::Router)>,
    /// The webhook's and the admin listener's bounds, and what they refuse.
    bounds: (ListenerBounds, ListenerBounds),
    refused: xmppfed_telemetry::ListenerRefused,
    /// Applies the allow lists and the throttle of a changed file live, and
    /// the file it watches (`reload_from`).
    reloader: crate::reload::Reloader,
    watched: Option<std::path::PathBuf>,
    /// With `teams.mode = "sip-federation"`: the edge's address.
    sip_addr: Option<SocketAddr>,
}

use crate::leadership::{BuildBridge, Route, lead};

/// What keeps the internal allow list fresh.
struct DirectoryWatch {
    /// The Teams users' tenant.
    graph: Arc<crate::graph::GraphClient>,
    /// The shadow accounts' own tenant, when they have one.
    shadow: Option<Arc<crate::graph::GraphClient>>,
    directory: Directory,
    allowed: AllowedNames,
    rule: LocalPartRule,
    health: ComponentHealth,
    /// Set once the list has been read: the bridge starts then.
    loaded: watch::Sender<bool>,
}

/// How often the internal allow list is read again (and how soon after a failure).
const DIRECTORY_REFRESH: std::time::Duration = std::time::Duration::from_secs(15 * 60);
const DIRECTORY_RETRY: std::time::Duration = std::time::Duration::from_secs(30);
const DIRECTORY_FIRST_RETRY: std::time::Duration = std::time::Duration::from_secs(5);

/// What the periodic licence check needs.
struct LicenceWatch {
    config: LicenceConfig,
    metrics: LicenceMetrics,
    health: ComponentHealth,
}

impl Gateway {
    /// Binds every listener (so conflicts fail startup) and registers metrics.
    pub async fn start(config: &GatewayConfig) -> Result<Self, StartError> {
        let span = tracing::info_span!("startup", domain = %config.xmpp.domain);
        let _entered = span.enter();

        let metrics = Metrics::new(SERVICE_NAME, VERSION);
        config_info(&metrics, config);
        let health = Health::new();
        let licence = licence_watch(config, &metrics, &health)?;
        let store = Arc::new(Store::open(&config.store).await?);
        let directory = directory_watch(config, &store, &metrics, &health)?;
        let users: Arc<dyn crate::s2s::UserDirectory> = match &directory {
            Some(watch) => Arc::new(watch.directory.clone()),
            None => Arc::new(AnyUser),
        };
        let (s2s, inbox) = S2s::bind(config, users, &metrics).await?;
        // Graph's change notifications: the URL Graph posts to and the secret it echoes.
        let notifications = match (&config.webhook.public_url, &config.webhook.client_state) {
            (Some(url), Some(client_state)) => Some((
                url,
                secrecy::SecretString::from(client_state.resolve()?.expose().to_owned()),
            )),
            _ => None,
        };
        let subscriptions = notifications.as_ref().map(|(url, secret)| {
            Arc::new(Subscriptions::new(url, secret.clone()).with_store(store.clone()))
        });
        // What the webhook wakes when it has stored notifications: the bridge's
        // notification consumer, once this replica runs it.
        let notified = Arc::new(Notify::new());
        let (bridge, throttle, sip_addr) = route(
            config,
            directory.as_ref(),
            (&store, &s2s),
            (subscriptions, notified.clone()),
            (&metrics, &health),
        )
        .await?;
        let live = crate::reload::Live {
            remote_domains: s2s.allow_list(),
            internal: directory.as_ref().map(|d| d.allowed.clone()),
            throttle,
        };
        let reloader = crate::reload::Reloader::new(live, config.clone(), &metrics);
        // Graph's change notifications, stored before they are acknowledged.
        let webhook = match (&bridge, notifications) {
            (Some((Route::Graph(_), _)), Some((_, secret))) => {
                let sink: Arc<dyn webhook::Sink> = Arc::new(webhook::Durable {
                    store: store.clone(),
                    wake: notified,
                });
                let listener = tokio::net::TcpListener::bind(config.webhook.listen)
                    .await
                    .map_err(|source| StartError::WebhookBind {
                        addr: config.webhook.listen,
                        source,
                    })?;
                Some((listener, webhook::router(secret, sink)))
            }
            _ => None,
        };
        let refused = xmppfed_telemetry::refused_counter(&metrics);
        let admin = AdminServer::bind(config.admin.listen, admin_router(metrics, health.clone()))
            .await
            .map_err(|source| StartError::AdminBind {
                addr: config.admin.listen,
                source,
            })?;
        tracing::info!(
            admin = %admin.local_addr().map_or_else(|_| config.admin.listen.to_string(), |a| a.to_string()),
            s2s = %s2s.local_addr().map_or_else(|_| config.s2s.listen.to_string(), |a| a.to_string()),
            "gateway started"
        );
        Ok(Self {
            admin,
            health,
            licence,
            s2s,
            inbox,
            directory,
            bridge,
            webhook,
            bounds: (
                (&config.webhook.limits).into(),
                (&config.admin.limits).into(),
            ),
            refused,
            reloader,
            watched: None,
            sip_addr,
        })
    }

    /// Reads `file` again while running and applies its allow lists and
    /// throttle live (the file this gateway was started from).
    pub fn reload_from(mut self, file: std::path::PathBuf) -> Self {
        self.watched = Some(file);
        self
    }

    pub fn s2s_addr(&self) -> Option<SocketAddr> {
        self.s2s.local_addr().ok()
    }

    /// The SIP federation edge's address, in that mode.
    pub fn sip_addr(&self) -> Option<SocketAddr> {
        self.sip_addr
    }

    pub fn admin_addr(&self) -> Option<SocketAddr> {
        self.admin.local_addr().ok()
    }

    pub fn health(&self) -> &Health {
        &self.health
    }

    /// Serves until `shutdown` resolves.
    pub async fn run(
        self,
        shutdown: impl Future<Output = ()> + Send + 'static,
    ) -> std::io::Result<()> {
        let loaded = self.directory.as_ref().map(|w| w.loaded.subscribe());
        let directory = self
            .directory
            .map(|watch| tokio::spawn(keep_directory(watch)));
        let watcher = self.licence.map(|watch| tokio::spawn(check_licence(watch)));
        let reloader = self
            .watched
            .map(|file| tokio::spawn(self.reloader.watch(file, crate::reload::RELOAD_EVERY)));
        tokio::spawn(crate::memory::give_back_freed_memory());
        // One shutdown signal for every listener: asked for, or a failure.
        let (stop_tx, stop_rx) = watch::channel(false);
        let stop_tx = Arc::new(stop_tx);
        let asked = stop_tx.clone();
        tokio::spawn(async move {
            shutdown.await;
            asked.send_replace(true);
        });
        let (fatal_tx, fatal_rx) = tokio::sync::oneshot::channel::<String>();
        let failure = Arc::new(std::sync::Mutex::new(None::<String>));
        let (failed, stop_on_failure) = (failure.clone(), stop_tx.clone());
        tokio::spawn(async move {
            if let Ok(why) = fatal_rx.await {
                tracing::error!(%why, "stopping the gateway");
                *failed.lock().unwrap_or_else(|p| p.into_inner()) = Some(why);
                stop_on_failure.send_replace(true);
            }
        });
        let stopped = |mut rx: watch::Receiver<bool>| async move {
            let _ = rx.wait_for(|stop| *stop).await;
        };
        let refused = self.refused;
        let webhook = self.webhook.map(|(listener, router)| {
            let stop = stopped(stop_rx.clone());
            let (bounds, refused) = (self.bounds.0, refused.clone());
            tokio::spawn(async move {
                let served = xmppfed_telemetry::serve_bounded(
                    listener, router, bounds, "webhook", refused, stop,
                );
                if let Err(e) = served.await {
                    tracing::error!(error = %e, "the webhook listener failed");
                }
            })
        });
        let leadership = self.bridge.as_ref().map(|(_, l)| l.clone());
        // A restarted former leader must draw no s2s traffic before it leads again.
        if let Some(leadership) = &leadership {
            leadership.stand_by().await;
        }
        let s2s_ready = self.health.component("s2s");
        let sender = self.s2s.sender();
        let s2s = tokio::spawn(self.s2s.serve(stopped(stop_rx.clone())));
        s2s_ready.ready();
        let inbox = self.inbox;
        let bridge = match self.bridge {
            Some((route, leadership)) => {
                let stop = stopped(stop_rx.clone());
                let route = (route, inbox, sender);
                tokio::spawn(lead(route, leadership, loaded, stop, fatal_tx))
            }
            None => tokio::spawn(refuse_until_bridged(inbox, sender)),
        };
        let result = self
            .admin
            .serve(self.bounds.1, refused, stopped(stop_rx))
            .await;
        let _ = s2s.await;
        if let Some(w) = webhook {
            let _ = w.await;
        }
        // The bridge (and every loop of it) is gone for sure before the lease
        // goes to a standby: its task is awaited, not only told to stop.
        bridge.abort();
        let _ = bridge.await;
        // A clean stop hands the bridge to a standby at once.
        if let Some(leadership) = leadership {
            leadership.release().await;
        }
        if let Some(d) = directory {
            d.abort();
        }
        for task in [watcher, reloader].into_iter().flatten() {
            task.abort();
        }
        tracing::info!("gateway stopped");
        match failure.lock().unwrap_or_else(|p| p.into_inner()).take() {
            Some(why) => Err(std::io::Error::other(why)),
            None => result,
        }
    }
}

/// Reads the internal allow list now and then; readiness says whether the
/// last attempt worked (a failed refresh keeps the previous list in service).
async fn keep_directory(watch: DirectoryWatch) {
    loop {
        // The app's token first: an empty allow list calls no Graph, and a
        // gateway whose credentials were never proven is not ready (the
        // tenant's health says why). The bridge may start meanwhile: what it
        // cannot send waits in the outbox.
        for graph in std::iter::once(&watch.graph).chain(watch.shadow.as_ref()) {
            let proven = graph.tokens().monitor().proven();
            if !proven && let Err(e) = graph.sign_in_app().await {
                tracing::debug!(error = %e, "the app cannot obtain a token from the tenant yet");
            }
        }
        let refreshed = watch
            .directory
            .refresh(&watch.graph, &watch.allowed.current(), &watch.rule)
            .await;
        // Until the app has its first token it is asked again soon while the
        // identity platform does not answer (a pod starting beside its Graph);
        // a refusal waits as long as any failure: a wrong secret tried every
        // few seconds would only burden the tenant.
        let monitor = watch.graph.tokens().monitor();
        let soon = !monitor.proven() && !monitor.app_refused();
        let wait = match refreshed {
            Ok(users) => {
                // Ready first: whoever reads the log line may ask /readyz at once.
                watch.health.ready();
                watch.loaded.send_replace(true);
                let collisions = watch.directory.collisions();
                tracing::info!(users, ?collisions, "Teams directory refreshed");
                if soon {
                    DIRECTORY_FIRST_RETRY
                } else if monitor.proven() {
                    DIRECTORY_REFRESH
                } else {
                    DIRECTORY_RETRY
                }
            }
            Err(e) => {
                tracing::warn!(error = %e, "cannot read the internal allow list from Graph");
                watch.health.not_ready(&format!("internal allow list: {e}"));
                if soon {
                    DIRECTORY_FIRST_RETRY
                } else {
                    DIRECTORY_RETRY
                }
            }
        };
        // A reloaded allow list is resolved at once.
        tokio::select! {
            () = tokio::time::sleep(wait) => {}
            () = watch.allowed.changed() => {
                tracing::info!("the internal allow list changed; reading it now");
            }
        }
    }
}

/// Without Graph (the sandbox before it has a tenant), stanzas for our users
/// are answered with `service-unavailable` rather than silently dropped.
async fn refuse_until_bridged(mut inbox: Inbox, sender: S2sSender) {
    while let Some(stanza) = inbox.recv().await {
        crate::bridge::reply_error(
            &sender,
            &stanza,
            DefinedCondition::ServiceUnavailable,
            ErrorType::Cancel,
            "the Teams bridge is not running on this gateway",
        )
        .await;
    }
}

/// Checks this node's licence seat again every `check_interval_secs`.
async fn check_licence(watch: LicenceWatch) {
    let period = std::time::Duration::from_secs(watch.config.check_interval_secs);
    loop {
        tokio::time::sleep(period).await;
        let outcome = licence::check(&watch.config, xmppfed_licence::Timestamp::now());
        watch.metrics.record(&outcome, &watch.health);
    }
}

/// The licence seat, checked before anything serves: a node without one never
/// serves; an expired seat only stops being ready.
fn licence_watch(
    config: &GatewayConfig,
    metrics: &Metrics,
    health: &Health,
) -> Result<Option<LicenceWatch>, StartError> {
    let Some(licence_config) = &config.licence else {
        tracing::info!("no [licence] section: running unlicensed for local use");
        return Ok(None);
    };
    let seat = licence::check(licence_config, xmppfed_licence::Timestamp::now());
    if let Err(e) = &seat {
        return Err(StartError::Licence(e.clone()));
    }
    let watch = LicenceWatch {
        config: licence_config.clone(),
        metrics: LicenceMetrics::register(metrics),
        health: health.component("licence"),
    };
    watch.metrics.record(&seat, &watch.health);
    if let Ok(seat) = &seat {
        tracing::info!(node = %seat.node, licence = %seat.licence_id, expires = %seat.expires, "licence seat verified");
    }
    Ok(Some(watch))
}

/// With Graph, only the Teams users on the internal allow list exist to
/// XMPP: the Graph client (with its budgets and sign-in monitor) and the
/// directory it keeps fresh. Without Graph (the sandbox, tests): none.
fn directory_watch(
    config: &GatewayConfig,
    store: &Arc<Store>,
    metrics: &Metrics,
    health: &Health,
) -> Result<Option<DirectoryWatch>, StartError> {
    let Some(graph) = &config.graph else {
        return Ok(None);
    };
    if graph.overridden() {
        tracing::warn!(
            cloud = graph.cloud.name(),
            authority = graph.authority(),
            graph = graph.graph(),
            "sign-in and Graph URLs overridden: not the cloud's own hosts"
        );
    } else {
        tracing::info!(
            cloud = graph.cloud.name(),
            authority = graph.authority(),
            graph = graph.graph(),
            "Microsoft cloud"
        );
    }
    let budgets = crate::graph::Budgets::new(&graph.limits);
    budgets.metrics().register(metrics, "graph");
    let monitor = Arc::new(SignInMonitor::new(metrics, health.component("tenant")));
    let vault = refresh_vault(config, store)?;
    let client =
        crate::graph::from_config(graph, budgets)?.with_sign_ins(vault.clone(), monitor.clone());
    // The shadow accounts' own tenant: its own app, budgets and sign-ins
    // (shadow accounts sign in there), reported beside the home tenant's.
    let shadow = match &config.shadow_accounts.tenant {
        None => None,
        Some(tenant) => {
            tracing::info!(tenant = %tenant.tenant_id, "shadow accounts live in a tenant of their own");
            let budgets = crate::graph::Budgets::new(&tenant.limits);
            budgets.metrics().register(metrics, "graph_shadow_tenant");
            let monitor = Arc::new(monitor.beside(health.component("shadow-tenant")));
            let client = crate::graph::from_config(tenant, budgets)?.with_sign_ins(vault, monitor);
            Some(Arc::new(client))
        }
    };
    if let Some(pod) = PodMetadata::from_environment() {
        // The tenants' answer for the operator's TenantReady condition.
        let state = match &shadow {
            None => monitor.watch(),
            Some(s) => SignInMonitor::watch_both(&monitor, s.tokens().monitor()),
        };
        tokio::spawn(pod.keep_annotation(xmppfed_config::POD_TENANT_ANNOTATION, state));
    }
    Ok(Some(DirectoryWatch {
        graph: Arc::new(client),
        shadow,
        directory: Directory::default(),
        allowed: AllowedNames::new(AllowedUsers {
            upns: config.allow.internal_users.clone(),
            groups: config.allow.internal_groups.clone(),
        }),
        rule: match config.xmpp.local_part {
            LocalPartSource::Upn => LocalPartRule::UpnLocalPart,
            LocalPartSource::Mail => LocalPartRule::MailLocalPart,
            LocalPartSource::WholeUpn => LocalPartRule::WholeUpn,
        },
        health: health.component("directory"),
        loaded: watch::channel(false).0,
    }))
}

/// What this replica runs while it holds the lease, and the lease: the
/// Graph bridge (with its throttle) or the SIP federation route (with its
/// edge's address); neither without Graph or SIP (the sandbox).
async fn route(
    config: &GatewayConfig,
    directory: Option<&DirectoryWatch>,
    (store, s2s): (&Arc<Store>, &S2s),
    notifications: (Option<Arc<Subscriptions>>, Arc<Notify>),
    (metrics, health): (&Metrics, &Health),
) -> Result<RouteParts, StartError> {
    if let Some(watch) = directory {
        let (build, leadership, throttle) =
            bridge_builder(config, watch, store, s2s, notifications, metrics)?;
        return Ok((
            Some((Route::Graph(build), leadership)),
            Some(throttle),
            None,
        ));
    }
    let (xmppfed_config::TeamsMode::SipFederation, Some(sip)) = (config.teams.mode, &config.sip)
    else {
        return Ok((None, None, None));
    };
    let (allow, telemetry) = (s2s.allow_list(), (metrics, health));
    let sip =
        crate::sip_route::SipRoute::bind((config, sip), store.clone(), allow, telemetry).await?;
    let addr = sip.local_addr();
    let leadership = Arc::new(Leadership::new(store.clone(), &config.leader, metrics));
    Ok((Some((Route::Sip(sip), leadership)), None, addr))
}

type RouteParts = (
    Option<(Route, Arc<Leadership>)>,
    Option<Arc<Throttle>>,
    Option<SocketAddr>,
);

/// What builds the bridge once this replica holds the bridge lease, and the
/// lease. `notifications`: the Graph subscriptions kept (with a webhook), and
/// what the webhook wakes.
fn bridge_builder(
    config: &GatewayConfig,
    watch: &DirectoryWatch,
    store: &Arc<Store>,
    s2s: &S2s,
    notifications: (Option<Arc<Subscriptions>>, Arc<Notify>),
    metrics: &Metrics,
) -> Result<(BuildBridge, Arc<Leadership>, Arc<Throttle>), StartError> {
    let Some(graph_config) = &config.graph else {
        return Err(missing("graph", "required to run the bridge"));
    };
    let key = config
        .shadow_accounts
        .credential_key
        .as_ref()
        .ok_or_else(|| {
            missing(
                "shadow_accounts.credential_key",
                "required when graph is configured",
            )
        })?
        .resolve()?;
    let settings = Settings::from_config(config, graph_config);
    let throttle = settings.throttle.clone();
    let services = Services {
        graph: watch.graph.clone(),
        shadow_graph: watch.shadow.clone().unwrap_or_else(|| watch.graph.clone()),
        home_tenant: config
            .shadow_accounts
            .tenant
            .as_ref()
            .map(|_| graph_config.tenant_id.clone()),
        directory: watch.directory.clone(),
        store: store.clone(),
        out: Arc::new(s2s.sender()),
        metrics: BridgeMetrics::register(metrics),
    };
    let cipher = CredentialCipher::new(key.expose());
    let (subscriptions, notified) = notifications;
    let build: BuildBridge = Box::new(move || {
        Box::pin(Bridge::build(
            settings,
            services,
            cipher,
            subscriptions,
            notified,
        ))
    });
    let leadership = Leadership::new(store.clone(), &config.leader, metrics);
    Ok((build, Arc::new(leadership), throttle))
}

fn missing(field: &str, message: &str) -> StartError {
    xmppfed_config::ConfigError::Invalid {
        errors: vec![xmppfed_config::FieldError::new(field, message)],
    }
    .into()
}

/// Where shadow accounts' refresh tokens are kept: sealed in the store
/// under the credential key (without one there is no bridge, and memory does).
fn refresh_vault(
    config: &GatewayConfig,
    store: &Arc<Store>,
) -> Result<Arc<dyn RefreshTokenVault>, xmppfed_config::ConfigError> {
    Ok(match &config.shadow_accounts.credential_key {
        Some(key) => Arc::new(SealedRefreshTokens::new(
            store.clone(),
            CredentialCipher::new(key.resolve()?.expose()),
        )),
        None => Arc::new(crate::graph::auth::MemoryVault::default()),
    })
}

/// `xmppfed_gateway_info{domain,store} 1`: which domain and store this process serves.
fn config_info(metrics: &Metrics, config: &GatewayConfig) {
    let info = metrics.register(
        "gateway_info",
        "The XMPP domain and store engine of this gateway (always 1)",
        Family::<Vec<(String, String)>, Gauge>::default(),
    );
    let store = match config.store {
        StoreConfig::Sqlite { .. } => "sqlite",
        StoreConfig::Sqlserver { .. } => "sqlserver",
        StoreConfig::Postgres(_) => "postgres",
    };
    info.get_or_create(&vec![
        ("domain".to_owned(), config.xmpp.domain.clone()),
        ("store".to_owned(), store.to_owned()),
    ])
    .set(1);
}
