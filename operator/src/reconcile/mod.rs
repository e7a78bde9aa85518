//! The FederationGateway controller: fetch → validate → render → apply → status.
//! Validate and render are the pure `plan`; this module does the I/O around
//! it: `fetch` reads, `apply` writes the children, `report` writes status and
//! Events, `policies` reconciles the policies, `run` wires the controllers.

mod apply;
mod fetch;
pub mod lenient;
mod policies;
mod report;
mod run;

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tracing::Instrument;

use kube::runtime::controller::Action;
use kube::runtime::events::{Recorder, Reporter};
use kube::runtime::reflector::ObjectRef;
use kube::{Client, ResourceExt};

use crate::crd::FederationGateway;
use crate::licensing::{self};
use crate::metrics::ReconcileMetrics;
use crate::plan::{Settings, plan};
use crate::status::Observed;
use apply::{apply_all, ensure_keys_secret};
use fetch::{Inputs, observe_pods};
pub use lenient::Unreadable;
pub use policies::{reconcile_throttle, reconcile_whitelist};
use report::{degraded, patch_status};
pub use run::run;

/// The one field manager of everything the operator applies.
pub const FIELD_MANAGER: &str = "xmppfed-operator";

/// How often a healthy gateway is looked at again without any change.
const RESYNC: Duration = Duration::from_secs(300);

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("Kubernetes API: {0}")]
    Kube(#[from] kube::Error),
    #[error("cannot encode {0}: {1}")]
    Encode(&'static str, serde_json::Error),
    #[error("no randomness for the gateway's keys: {0}")]
    Random(String),
    #[error("the FederationGateway has no namespace")]
    NoNamespace,
}

/// What every reconcile shares.
pub struct Context {
    pub client: Client,
    pub recorder: Recorder,
    /// Base64 Ed25519 key that licences are verified with; without it nothing is licensed.
    pub licence_public_key: Option<String>,
    /// The chart's ClusterRole for gateway pods, bound per gateway.
    pub gateway_cluster_role: String,
    /// The namespaces watched (the chart's `watchNamespaces`); empty: all.
    pub namespaces: Vec<String>,
    /// Reconciles counted and timed, per kind.
    pub metrics: ReconcileMetrics,
    /// Consecutive failures per gateway, for backoff; cleared on success.
    failures: Mutex<HashMap<ObjectRef<FederationGateway>, u32>>,
}

impl Context {
    pub fn new(client: Client, licence_public_key: Option<String>) -> Self {
        let reporter = Reporter {
            controller: FIELD_MANAGER.into(),
            instance: std::env::var("POD_NAME").ok(),
        };
        Self {
            recorder: Recorder::new(client.clone(), reporter),
            client,
            licence_public_key,
            gateway_cluster_role: crate::plan::DEFAULT_GATEWAY_CLUSTER_ROLE.to_owned(),
            namespaces: Vec::new(),
            metrics: ReconcileMetrics::default(),
            failures: Mutex::new(HashMap::new()),
        }
    }

    /// The same, binding gateway pods to the chart's ClusterRole `name`.
    pub fn with_gateway_cluster_role(mut self, name: String) -> Self {
        self.gateway_cluster_role = name;
        self
    }

    /// The same, watching only `namespaces` (none: every namespace).
    pub fn with_namespaces(mut self, namespaces: Vec<String>) -> Self {
        self.namespaces = namespaces;
        self
    }

    /// The same, counting into `metrics` (registered with the admin port's registry).
    pub fn with_metrics(mut self, metrics: ReconcileMetrics) -> Self {
        self.metrics = metrics;
        self
    }

    /// Consecutive failed reconciles of `gateway` (what its backoff is computed from).
    pub fn failures_of(&self, gateway: &FederationGateway) -> u32 {
        self.failures()
            .get(&ObjectRef::from(gateway))
            .copied()
            .unwrap_or(0)
    }

    fn failures(&self) -> std::sync::MutexGuard<'_, HashMap<ObjectRef<FederationGateway>, u32>> {
        self.failures.lock().unwrap_or_else(|p| p.into_inner())
    }
}

/// Reconciles one FederationGateway: in a span naming it (exported with the
/// trace when OTLP is on), counted and timed in the reconcile metrics.
pub async fn reconcile(
    gateway: Arc<FederationGateway>,
    ctx: Arc<Context>,
) -> Result<Action, Error> {
    let span = tracing::info_span!(
        "reconcile",
        kind = "FederationGateway",
        namespace = gateway.namespace().unwrap_or_default(),
        name = %gateway.name_any(),
    );
    let started = std::time::Instant::now();
    let result = pipeline(gateway, ctx.clone()).instrument(span).await;
    ctx.metrics
        .observe("FederationGateway", started.elapsed(), result.is_ok());
    result
}

/// fetch → validate and render (pure) → apply → status.
async fn pipeline(gateway: Arc<FederationGateway>, ctx: Arc<Context>) -> Result<Action, Error> {
    let namespace = gateway.namespace().ok_or(Error::NoNamespace)?;
    let client = &ctx.client;
    let previous = gateway.status.clone().unwrap_or_default();

    // Being deleted: owner references let the garbage collector remove every
    // child; applying them again now would only fight it.
    if gateway.metadata.deletion_timestamp.is_some() {
        return Ok(Action::await_change());
    }

    if gateway.spec.paused {
        patch_status(
            &gateway,
            &namespace,
            client,
            &previous,
            &Observed::Paused,
            None,
        )
        .await?;
        return Ok(Action::await_change());
    }

    // Fetch.
    let Inputs {
        whitelists,
        throttles,
        unreadable,
        licence_text,
    } = fetch::inputs(client, &namespace, &gateway).await?;
    // A policy it depends on that cannot be read: the last applied
    // configuration stays, and the gateway says why.
    if let Some(u) = unreadable.iter().find(|u| u.concerns(&gateway)) {
        let invalid = crate::plan::InvalidSpec::UnreadablePolicy(u.to_string());
        return degraded(&gateway, &namespace, &ctx, &previous, &invalid).await;
    }

    // Validate and render (pure). Only licensed replicas run.
    let licence = licensing::evaluate(
        &gateway.name_any(),
        gateway.spec.replicas,
        licence_text.as_deref(),
        ctx.licence_public_key.as_deref(),
        k8s_openapi::jiff::Timestamp::now(),
    );
    let plan = match plan(
        &gateway,
        &whitelists,
        &throttles,
        licence.licensed,
        &Settings {
            licence_public_key: ctx.licence_public_key.as_deref(),
            gateway_cluster_role: &ctx.gateway_cluster_role,
        },
    ) {
        Ok(plan) => plan,
        Err(invalid) => return degraded(&gateway, &namespace, &ctx, &previous, &invalid).await,
    };

    // Apply.
    ensure_keys_secret(&gateway, &namespace, client).await?;
    let stateful_set = apply_all(&plan, &namespace, client).await?;

    // Status.
    let ready = stateful_set
        .status
        .as_ref()
        .and_then(|s| s.ready_replicas)
        .unwrap_or(0);
    let updated = previous.config_hash.as_deref() != Some(plan.config_hash.as_str());
    let (waiting, reported) = observe_pods(client, &namespace, &gateway.name_any()).await?;
    let awaited = reported.awaited(gateway.spec.sip_edge().is_some() && ready > 0);
    let observed = Observed::Applied {
        asked: gateway.spec.replicas,
        desired: licence.licensed,
        ready,
        updated,
        waiting,
        unlicensed: licence.unlicensed.clone(),
        reported,
    };
    patch_status(
        &gateway,
        &namespace,
        client,
        &previous,
        &observed,
        Some((&plan, &licence)),
    )
    .await?;
    report::announce(&ctx, &gateway, &previous, &plan, &licence, updated).await;
    ctx.failures().remove(&ObjectRef::from(gateway.as_ref()));
    // Pods are not watched: look again soon while something is expected to
    // change (pods starting, an administrator fixing the tenant or partner).
    Ok(if ready < licence.licensed || awaited {
        Action::requeue(Duration::from_secs(15))
    } else {
        Action::requeue(RESYNC)
    })
}

/// Transient errors back off exponentially per gateway (1 s … 5 min), with jitter.
pub fn error_policy(gateway: Arc<FederationGateway>, error: &Error, ctx: Arc<Context>) -> Action {
    failed(ObjectRef::from(gateway.as_ref()), error, &ctx)
}

/// [`error_policy`] for a gateway the controller watched as a `DynamicObject`.
pub fn object_error_policy(
    gateway: Arc<kube::api::DynamicObject>,
    error: &Error,
    ctx: Arc<Context>,
) -> Action {
    let mut reference = ObjectRef::<FederationGateway>::new(&gateway.name_any());
    if let Some(namespace) = gateway.namespace() {
        reference = reference.within(&namespace);
    }
    failed(reference, error, &ctx)
}

fn failed(gateway: ObjectRef<FederationGateway>, error: &Error, ctx: &Context) -> Action {
    let name = gateway.name.clone();
    let attempt = {
        let mut failures = ctx.failures();
        let n = failures.entry(gateway).or_insert(0);
        *n = n.saturating_add(1);
        *n
    };
    let delay = backoff(attempt, random_unit());
    tracing::warn!(gateway = %name, %error, attempt, retry_in = ?delay, "reconcile failed");
    Action::requeue(delay)
}

/// `base · 2^(attempt-1)`, capped, then scaled by a jitter factor in [0.5, 1.0).
pub fn backoff(attempt: u32, unit_random: f64) -> Duration {
    let base = Duration::from_secs(1);
    let cap = Duration::from_secs(300);
    let exp = base
        .saturating_mul(1u32 << attempt.saturating_sub(1).min(16))
        .min(cap);
    exp.mul_f64(0.5 + unit_random.clamp(0.0, 1.0) / 2.0)
}

fn random_unit() -> f64 {
    let mut bytes = [0u8; 8];
    match getrandom::fill(&mut bytes) {
        Ok(()) => (u64::from_le_bytes(bytes) >> 11) as f64 / (1u64 << 53) as f64,
        Err(_) => 0.5,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_grows_caps_and_jitters() {
        assert_eq!(backoff(1, 1.0), Duration::from_secs(1));
        assert_eq!(backoff(1, 0.0), Duration::from_millis(500));
        assert_eq!(backoff(4, 1.0), Duration::from_secs(8));
        assert_eq!(backoff(30, 1.0), Duration::from_secs(300));
        assert_eq!(backoff(u32::MAX, 0.0), Duration::from_secs(150));
        let u = random_unit();
        assert!((0.0..1.0).contains(&u));
    }
}
