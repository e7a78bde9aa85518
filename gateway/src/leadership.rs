//! Which replica runs the bridge (or, with SIP federation, the SIP route).
//! Replicas share the store; the one holding its `bridge` lease runs the
//! route, the others stand by and take over when the lease lapses. Standbys
//! keep serving their webhook (notifications go to the shared store, where
//! the holder reads them).
//!
//! In Kubernetes each replica labels its own pod `xmppfed.io/role=leader` or
//! `standby`, and the operator's s2s Service selects the leader: remote
//! servers always reach the replica that runs the bridge, while every
//! replica stays Ready (a standby is healthy, and rollouts must not wait on it).

use std::sync::Arc;
use std::time::{Duration, Instant};

use prometheus_client::metrics::gauge::Gauge;
use xmppfed_config::{LeaderConfig, POD_ROLE_LABEL as ROLE_LABEL};
use xmppfed_telemetry::Metrics;

use std::future::Future;

use futures::future::BoxFuture;
use tokio::sync::watch;

use crate::bridge::service::Bridge;
use crate::pod::PodMetadata;
use crate::s2s::{Inbox, S2sSender};
use crate::store::{Store, StoreError};

const LEASE: &str = "bridge";
/// How often the leader puts its pod's role label back.
const RELABEL: Duration = Duration::from_secs(60);

/// Pause before a failed renewal or label is tried again.
const RETRY: Duration = Duration::from_secs(1);

pub struct Leadership {
    store: Arc<Store>,
    holder: String,
    lease: Duration,
    pod: Option<PodMetadata>,
    relabel: Duration,
    leader: Gauge,
}

impl Leadership {
    pub fn new(store: Arc<Store>, config: &LeaderConfig, metrics: &Metrics) -> Self {
        let holder = config.holder.clone().unwrap_or_else(default_holder);
        let pod = PodMetadata::from_environment();
        if pod.is_none() && std::env::var_os("KUBERNETES_SERVICE_HOST").is_some() {
            tracing::warn!(
                "in Kubernetes without POD_NAME, POD_NAMESPACE and a service account token: the pod's role label is not kept"
            );
        }
        Self {
            store,
            holder,
            lease: Duration::from_secs(config.lease_secs.max(6)),
            pod,
            relabel: RELABEL,
            leader: metrics.register(
                "bridge_leader",
                "1 while this replica holds the lease and runs the bridge",
                Gauge::default(),
            ),
        }
    }

    fn lease_secs(&self) -> i64 {
        self.lease.as_secs() as i64
    }

    /// Labels the pod a standby: before it serves s2s, so that a restarted
    /// former leader draws no traffic until it holds the lease again.
    pub async fn stand_by(&self) {
        self.label("standby").await;
    }

    /// Stands by until this replica holds the lease; returns when it was
    /// asked for (the lease runs from no later than that).
    pub async fn acquire(&self) -> Instant {
        let mut said = false;
        loop {
            let asked = Instant::now();
            match self
                .store
                .hold_lease(LEASE, &self.holder, self.lease_secs())
                .await
            {
                Ok(true) => {
                    tracing::info!(holder = %self.holder, "this replica runs the bridge");
                    return asked;
                }
                Ok(false) if !said => {
                    tracing::info!(holder = %self.holder, "standing by: another replica runs the bridge");
                    said = true;
                }
                Ok(false) => {}
                Err(e) => tracing::warn!(error = %e, "cannot ask the store for the bridge lease"),
            }
            tokio::time::sleep(self.lease / 3).await;
        }
    }

    /// Keeps the lease taken at `since` and labels the pod the leader;
    /// returns why once the lease cannot be kept. The bridge must stop then:
    /// another replica may take over.
    pub async fn keep(&self, since: Instant) -> String {
        self.leader.set(1);
        tokio::select! {
            why = self.renew(since) => why,
            never = self.announce() => match never {},
        }
    }

    /// Renews every third of the lease. A renewal that fails or hangs is
    /// given up two thirds into the lease: the bridge stops before the lease
    /// can lapse for the others (the store's clock counts whole seconds).
    async fn renew(&self, since: Instant) -> String {
        let mut renewed = since;
        let mut next = since + self.lease / 3;
        loop {
            tokio::time::sleep_until(next.into()).await;
            let deadline = renewed + self.lease * 2 / 3;
            let asked = Instant::now();
            let held = tokio::time::timeout_at(
                deadline.into(),
                self.store
                    .hold_lease(LEASE, &self.holder, self.lease_secs()),
            )
            .await;
            match held {
                Ok(Ok(true)) => {
                    renewed = asked;
                    next = asked + self.lease / 3;
                }
                Ok(Ok(false)) => return "another replica holds the bridge lease".into(),
                Ok(Err(e)) if Instant::now() < deadline => {
                    tracing::warn!(error = %e, "cannot renew the bridge lease; trying again");
                    next = (Instant::now() + RETRY).min(deadline);
                }
                Ok(Err(e)) => return format!("the bridge lease could not be renewed: {e}"),
                Err(_) => return "the bridge lease could not be renewed in time".into(),
            }
        }
    }

    /// Labels the pod the leader, trying until it works, and puts the label
    /// back every minute: the s2s Service routes by it, so a label lost
    /// (removed by hand, a pod object replaced) must not stop federation.
    /// A patch that changes nothing writes nothing on the API server.
    async fn announce(&self) -> std::convert::Infallible {
        let Some(pod) = &self.pod else {
            return std::future::pending().await;
        };
        loop {
            while let Err(e) = pod.set_label(ROLE_LABEL, "leader").await {
                tracing::warn!(error = %e, "cannot label this pod the leader; trying again");
                tokio::time::sleep(RETRY).await;
            }
            tokio::time::sleep(self.relabel).await;
        }
    }

    /// Gives the lease up (a clean stop): a standby takes over at once.
    pub async fn release(&self) {
        self.leader.set(0);
        self.label("standby").await;
        if let Err(e) = self.store.release_lease(LEASE, &self.holder).await {
            tracing::warn!(error = %e, "cannot give the bridge lease up; it lapses instead");
        }
    }

    async fn label(&self, role: &str) {
        if let Some(pod) = &self.pod
            && let Err(e) = pod.set_label(ROLE_LABEL, role).await
        {
            tracing::warn!(error = %e, role, "cannot label this pod with its role");
        }
    }
}

/// The pod when there is one, by name and uid: a restarted container takes
/// its own lease back at once, while a pod replacing a force-deleted one (same
/// name, new uid) waits for the old one's lease to lapse. Else the host name
/// and process id.
fn default_holder() -> String {
    let var = |name: &str| std::env::var(name).ok().filter(|v| !v.is_empty());
    match (var("POD_NAME"), var("POD_UID")) {
        (Some(pod), Some(uid)) => format!("{pod}/{uid}"),
        (Some(pod), None) => pod,
        _ => {
            let host = var("HOSTNAME")
                .or_else(|| {
                    std::fs::read_to_string("/proc/sys/kernel/hostname")
                        .ok()
                        .map(|h| h.trim().to_owned())
                })
                .unwrap_or_else(|| "gateway".to_owned());
            format!("{host}/{}", std::process::id())
        }
    }
}

pub(crate) type BuildBridge =
    Box<dyn FnOnce() -> BoxFuture<'static, Result<Arc<Bridge>, StoreError>> + Send>;

/// The route to Microsoft's side, run by the replica holding the lease: two
/// replicas must never both deliver the shared outbox.
pub(crate) enum Route {
    Graph(BuildBridge),
    Sip(Arc<crate::sip_route::SipRoute>),
}

impl Route {
    /// What serves `inbox` until it closes.
    async fn start(
        self,
        inbox: Inbox,
        sender: S2sSender,
    ) -> Result<BoxFuture<'static, ()>, String> {
        match self {
            Route::Graph(build) => {
                let bridge = build()
                    .await
                    .map_err(|e| format!("cannot start the bridge: {e}"))?;
                Ok(Box::pin(async move { bridge.run(inbox).await }))
            }
            Route::Sip(sip) => Ok(Box::pin(sip.run(inbox, sender))),
        }
    }
}

/// Runs the route while this replica holds the bridge lease: waits for the
/// allow list (Graph), takes the lease (or stops), builds the bridge and
/// serves the inbox until the lease is lost. Whatever ends it early is sent
/// on `fatal`.
pub(crate) async fn lead(
    (route, inbox, sender): (Route, Inbox, S2sSender),
    leadership: Arc<Leadership>,
    loaded: Option<watch::Receiver<bool>>,
    stop: impl Future<Output = ()>,
    fatal: tokio::sync::oneshot::Sender<String>,
) {
    // Until the allow list is read nobody exists, and until
    // this replica holds the lease it stands by: stanzas wait.
    if let Some(mut loaded) = loaded
        && loaded.wait_for(|l| *l).await.is_err()
    {
        return;
    }
    // The lease is kept from the moment it is taken, the
    // bridge built meanwhile (it reads the store afresh).
    let since = tokio::select! {
        since = leadership.acquire() => since,
        () = stop => return,
    };
    let keep = leadership.keep(since);
    tokio::pin!(keep);
    let built = tokio::select! {
        built = route.start(inbox, sender) => built,
        why = &mut keep => Err(why),
    };
    let serve = match built {
        Ok(serve) => serve,
        Err(why) => {
            let _ = fatal.send(why);
            return;
        }
    };

    // Losing the lease drops the route's future, and every
    // background loop of it with it.
    let lost = tokio::select! {
        () = serve => None,
        why = &mut keep => Some(why),
    };

    if let Some(why) = lost {
        let _ = fatal.send(why);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const LEASE_SECS: u64 = 6;

    fn leadership(store: &Arc<Store>, holder: &str, pod: Option<PodMetadata>) -> Arc<Leadership> {
        let config = LeaderConfig {
            lease_secs: LEASE_SECS,
            holder: Some(holder.to_owned()),
        };
        let mut l = Leadership::new(store.clone(), &config, &Metrics::new("test", "0"));
        l.pod = pod;
        Arc::new(l)
    }

    #[tokio::test]
    async fn one_replica_runs_the_bridge_and_hands_it_over_when_it_stops() {
        let dir = tempfile::tempdir().unwrap();
        let store = Arc::new(Store::sqlite(&dir.path().join("s.db")).await.unwrap());
        let (a, b) = (leadership(&store, "a", None), leadership(&store, "b", None));
        let since = a.acquire().await;
        let a_keeps = tokio::spawn({
            let a = a.clone();
            async move { a.keep(since).await }
        });
        tokio::time::sleep(Duration::from_millis(100)).await;
        assert_eq!(a.leader.get(), 1);
        // b stands by while a holds (and renews) the lease...
        let standby = tokio::time::timeout(Duration::from_secs(3), b.acquire()).await;
        assert!(standby.is_err(), "b must not run the bridge beside a");
        assert_eq!(b.leader.get(), 0);
        // ...and takes over as soon as a gives it up.
        a_keeps.abort();
        a.release().await;
        assert_eq!(a.leader.get(), 0);
        tokio::time::timeout(Duration::from_secs(LEASE_SECS), b.acquire())
            .await
            .expect("b takes over");
        // Had a not known, its next renewal would have told it.
        let lost = tokio::time::timeout(Duration::from_secs(LEASE_SECS), a.keep(Instant::now()))
            .await
            .expect("a notices");
        assert!(lost.contains("another replica"), "{lost}");
    }

    #[tokio::test]
    async fn a_leader_that_cannot_renew_stops_before_its_lease_lapses() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("s.db");
        let store = Arc::new(Store::sqlite(&path).await.unwrap());
        let a = leadership(&store, "a", None);
        let since = a.acquire().await;
        // The store fails every renewal from now on.
        rusqlite::Connection::open(&path)
            .unwrap()
            .execute("DROP TABLE leases", [])
            .unwrap();
        let why = a.keep(since).await;
        let held = since.elapsed();
        assert!(why.contains("could not be renewed"), "{why}");
        assert!(
            held < Duration::from_secs(LEASE_SECS - 1),
            "gave up after {held:?}, too close to the {LEASE_SECS} s lease"
        );
    }

    #[tokio::test]
    async fn the_pod_is_labelled_with_its_role_through_the_api() {
        use axum::extract::State;
        use axum::http::HeaderMap;
        type Seen = Arc<std::sync::Mutex<Vec<(String, String, String, String)>>>;
        let seen: Seen = Default::default();
        let app = axum::Router::new()
            .route(
                "/api/v1/namespaces/{ns}/pods/{pod}",
                axum::routing::patch(
                    |State(seen): State<Seen>,
                     uri: axum::http::Uri,
                     headers: HeaderMap,
                     body: String| async move {
                        let header = |n: &str| {
                            headers
                                .get(n)
                                .and_then(|v| v.to_str().ok())
                                .unwrap_or_default()
                                .to_owned()
                        };
                        seen.lock().unwrap().push((
                            uri.path().to_owned(),
                            header("authorization"),
                            header("content-type"),
                            body,
                        ));
                        "{}"
                    },
                ),
            )
            .with_state(seen.clone());
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        tokio::spawn(async move { axum::serve(listener, app).await });
        let dir = tempfile::tempdir().unwrap();
        let token = dir.path().join("token");
        std::fs::write(&token, "sa-token\n").unwrap();
        let pod = PodMetadata::at(
            format!("http://{addr}/api/v1/namespaces/xmpp/pods/contoso-1"),
            token,
        );
        let store = Arc::new(Store::sqlite(&dir.path().join("s.db")).await.unwrap());
        let l = leadership(&store, "contoso-1", Some(pod));
        l.stand_by().await;
        let since = l.acquire().await;
        let keeps = tokio::spawn({
            let l = l.clone();
            async move { l.keep(since).await }
        });
        tokio::time::sleep(Duration::from_millis(300)).await;
        keeps.abort();
        l.release().await;
        // A leader that keeps the lease puts its label back, should anyone
        // have taken it off.
        let relabelled = {
            let pod = PodMetadata::at(
                format!("http://{addr}/api/v1/namespaces/xmpp/pods/contoso-1"),
                dir.path().join("token"),
            );
            let mut l = leadership(&store, "contoso-1", Some(pod));
            Arc::get_mut(&mut l).unwrap().relabel = Duration::from_millis(100);
            let since = l.acquire().await;
            let keeps = tokio::spawn(async move { l.keep(since).await });
            tokio::time::sleep(Duration::from_millis(450)).await;
            keeps.abort();
            seen.lock().unwrap().split_off(3)
        };
        assert!(relabelled.len() >= 3, "{relabelled:?}");
        assert!(
            relabelled
                .iter()
                .all(|(.., body)| body.contains("\"leader\"")),
            "{relabelled:?}"
        );
        let seen = seen.lock().unwrap().clone();
        let roles: Vec<String> = seen
            .iter()
            .map(|(path, auth, content_type, body)| {
                assert_eq!(path, "/api/v1/namespaces/xmpp/pods/contoso-1");
                assert_eq!(auth, "Bearer sa-token");
                assert_eq!(content_type, "application/merge-patch+json");
                let body: serde_json::Value = serde_json::from_str(body).unwrap();
                body["metadata"]["labels"]["xmppfed.io/role"]
                    .as_str()
                    .unwrap()
                    .to_owned()
            })
            .collect();
        assert_eq!(roles, ["standby", "leader", "standby"]);
    }
}
