//! Graph subscriptions the gateway holds: created, taken back after a
//! restart, renewed before they expire (`keep`), reauthorized or recreated
//! when Graph's lifecycle notifications ask, deleted when no longer needed.

use std::collections::HashMap;
use std::time::Duration;

use reqwest::Method;
use secrecy::{ExposeSecret, SecretString};
use serde::Deserialize;
use serde_json::json;
use std::sync::Arc;

use tokio::sync::Mutex;

use crate::store::{Store, StoredSubscription};

use super::auth::{Identity, UserCredential};
use super::client::GraphClient;
use super::error::GraphError;
use super::webhook::{LIFECYCLE_PATH, LifecycleEvent, NOTIFICATIONS_PATH};

#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Subscription {
    pub id: String,
    pub resource: String,
    pub change_type: String,
    pub expiration_date_time: String,
}

/// What a subscription is made as and for.
#[derive(Debug, Clone)]
pub struct Want {
    pub resource: String,
    pub change_type: String,
    /// How long each subscription (or renewal) lasts; Graph caps it per resource
    /// (60 minutes for chat messages and presence).
    pub lifetime: Duration,
    /// `None`: the app; `Some`: a shadow account (delegated permissions).
    pub as_user: Option<UserCredential>,
}

pub struct Subscriptions {
    public_url: String,
    client_state: SecretString,
    held: Mutex<HashMap<String, (Subscription, Want, std::time::SystemTime)>>,
    /// Where what we hold survives a restart.
    store: Option<Arc<Store>>,
}

/// Pages of `GET /subscriptions` read at most when looking for a duplicate.
const LIST_PAGES: usize = 200;

fn expiry(lifetime: Duration) -> String {
    crate::clock::rfc3339(std::time::SystemTime::now() + lifetime)
}

impl Subscriptions {
    /// `public_url`: where Graph reaches our webhook (the ingress), without a path.
    pub fn new(public_url: &str, client_state: SecretString) -> Self {
        Self {
            public_url: public_url.trim_end_matches('/').to_owned(),
            client_state,
            held: Mutex::new(HashMap::new()),
            store: None,
        }
    }

    /// Keeps what is held in `store`, so that a restart resumes it.
    pub fn with_store(mut self, store: Arc<Store>) -> Self {
        self.store = Some(store);
        self
    }

    /// Takes back what the store holds (after a restart). Shadow accounts'
    /// credentials come from `credential` (by UPN); a subscription whose
    /// account is unknown is left for Graph to expire.
    pub async fn restore(
        &self,
        credential: impl Fn(&str) -> Option<UserCredential>,
    ) -> Result<usize, GraphError> {
        let Some(store) = &self.store else {
            return Ok(0);
        };
        let stored = store
            .subscriptions()
            .await
            .map_err(|e| GraphError::Config(e.to_string()))?;
        let mut held = self.held.lock().await;
        for s in &stored {
            let as_user = match &s.as_user {
                Some(upn) => match credential(upn) {
                    Some(c) => Some(c),
                    None => continue,
                },
                None => None,
            };
            let want = Want {
                resource: s.resource.clone(),
                change_type: s.change_type.clone(),
                lifetime: Duration::from_secs(u64::try_from(s.lifetime_secs).unwrap_or(3600)),
                as_user,
            };
            let expires = std::time::UNIX_EPOCH
                + Duration::from_secs(u64::try_from(s.expires_at).unwrap_or(0));
            let sub = Subscription {
                id: s.id.clone(),
                resource: s.resource.clone(),
                change_type: s.change_type.clone(),
                expiration_date_time: crate::clock::rfc3339(expires),
            };
            held.insert(s.id.clone(), (sub, want, expires));
        }
        Ok(held.len())
    }

    /// Holds a subscription (and stores it).
    async fn hold(&self, sub: Subscription, want: Want) -> Result<(), GraphError> {
        let expires = std::time::SystemTime::now() + want.lifetime;
        if let Some(store) = &self.store {
            let stored = StoredSubscription {
                id: sub.id.clone(),
                resource: want.resource.clone(),
                change_type: want.change_type.clone(),
                as_user: want.as_user.as_ref().map(|u| u.upn.clone()),
                lifetime_secs: i64::try_from(want.lifetime.as_secs()).unwrap_or(i64::MAX),
                expires_at: expires
                    .duration_since(std::time::UNIX_EPOCH)
                    .map(|d| d.as_secs() as i64)
                    .unwrap_or(0),
            };
            store
                .put_subscription(&stored)
                .await
                .map_err(|e| GraphError::Config(e.to_string()))?;
        }
        self.held
            .lock()
            .await
            .insert(sub.id.clone(), (sub, want, expires));
        Ok(())
    }

    /// Lets a subscription go (and forgets it in the store).
    async fn release(&self, id: &str) -> Option<Want> {
        if let Some(store) = &self.store
            && let Err(e) = store.delete_subscription(id).await
        {
            tracing::warn!(subscription = %id, error = %e, "cannot forget the subscription in the store");
        }
        self.held.lock().await.remove(id).map(|(_, w, _)| w)
    }

    fn identity(want: &Want) -> Identity {
        want.as_user
            .as_ref()
            .map_or(Identity::App, |u| Identity::User(u.upn.clone()))
    }

    /// Creates a subscription (Graph validates our endpoint before answering).
    pub async fn create(
        &self,
        graph: &GraphClient,
        want: Want,
    ) -> Result<Subscription, GraphError> {
        let body = json!({
            "changeType": want.change_type,
            "notificationUrl": format!("{}{NOTIFICATIONS_PATH}", self.public_url),
            "lifecycleNotificationUrl": format!("{}{LIFECYCLE_PATH}", self.public_url),
            "resource": want.resource,
            "expirationDateTime": expiry(want.lifetime),
            "clientState": self.client_state.expose_secret(),
            "latestSupportedTlsVersion": "v1_2",
        });
        let identity = Self::identity(&want);
        let post = || {
            graph.json::<Subscription>(
                &identity,
                want.as_user.as_ref(),
                Method::POST,
                "/subscriptions",
                Some(&body),
            )
        };
        let created = match post().await {
            Ok(created) => created,
            // Graph allows one subscription per app, resource and change
            // type (409, "Subscription Id … already exists for the requested
            // combination": learn.microsoft.com/graph/api/subscription-post-subscriptions).
            // Ours, made before a restart lost our record of it or by another
            // replica, is taken on; one that notifies elsewhere (an old
            // public URL) is deleted and made again.
            Err(e) if e.status() == Some(409) => match self.existing(graph, &want).await? {
                Some((existing, true)) => existing,
                Some((stale, false)) => {
                    self.delete_at_graph(graph, &want, &stale.id).await?;
                    post().await?
                }
                None => return Err(e),
            },
            Err(e) => return Err(e),
        };
        tracing::info!(subscription = %created.id, resource = %created.resource, expires = %created.expiration_date_time, "Graph subscription created");
        self.hold(created.clone(), want).await?;
        Ok(created)
    }

    /// The subscription the caller already holds at Graph for `want`'s
    /// resource and change type, and whether it notifies our URL.
    async fn existing(
        &self,
        graph: &GraphClient,
        want: &Want,
    ) -> Result<Option<(Subscription, bool)>, GraphError> {
        #[derive(Deserialize)]
        #[serde(rename_all = "camelCase")]
        struct Listed {
            #[serde(flatten)]
            subscription: Subscription,
            notification_url: Option<String>,
        }
        let matches = |l: &Listed| {
            l.subscription.resource.eq_ignore_ascii_case(&want.resource)
                && l.subscription.change_type == want.change_type
        };
        // Graph pages the list; reading stops at the page that holds it.
        let listed: Vec<Listed> = graph
            .pages(
                &Self::identity(want),
                want.as_user.as_ref(),
                "/subscriptions".to_owned(),
                LIST_PAGES,
                |page: &[Listed]| page.iter().any(matches),
            )
            .await?;
        let ours = format!("{}{NOTIFICATIONS_PATH}", self.public_url);
        Ok(listed.into_iter().find(matches).map(|l| {
            let here = l.notification_url.as_deref() == Some(ours.as_str());
            (l.subscription, here)
        }))
    }

    async fn delete_at_graph(
        &self,
        graph: &GraphClient,
        want: &Want,
        id: &str,
    ) -> Result<(), GraphError> {
        graph
            .no_content(
                &Self::identity(want),
                want.as_user.as_ref(),
                Method::DELETE,
                &format!("/subscriptions/{id}"),
                super::api::NONE,
            )
            .await
    }

    /// What a held subscription was made for.
    async fn want(&self, id: &str) -> Result<Want, GraphError> {
        self.held
            .lock()
            .await
            .get(id)
            .map(|(_, w, _)| w.clone())
            .ok_or_else(|| GraphError::Config(format!("subscription {id} is not held")))
    }

    /// Extends a subscription by its lifetime.
    pub async fn renew(&self, graph: &GraphClient, id: &str) -> Result<Subscription, GraphError> {
        let want = self.want(id).await?;
        let body = json!({"expirationDateTime": expiry(want.lifetime)});
        let path = format!("/subscriptions/{id}");
        let renewed: Subscription = graph
            .json(
                &Self::identity(&want),
                want.as_user.as_ref(),
                Method::PATCH,
                &path,
                Some(&body),
            )
            .await?;
        self.hold(renewed.clone(), want).await?;
        Ok(renewed)
    }

    /// Answers a `reauthorizationRequired` lifecycle notification.
    pub async fn reauthorize(&self, graph: &GraphClient, id: &str) -> Result<(), GraphError> {
        let want = self.want(id).await?;
        let path = format!("/subscriptions/{id}/reauthorize");
        graph
            .no_content(
                &Self::identity(&want),
                want.as_user.as_ref(),
                Method::POST,
                &path,
                None::<&serde_json::Value>,
            )
            .await
    }

    /// Replaces a subscription Graph removed (`subscriptionRemoved`).
    pub async fn recreate(
        &self,
        graph: &GraphClient,
        id: &str,
    ) -> Result<Subscription, GraphError> {
        let want = self
            .release(id)
            .await
            .ok_or_else(|| GraphError::Config(format!("subscription {id} is not held")))?;
        self.create(graph, want).await
    }

    pub async fn delete(&self, graph: &GraphClient, id: &str) -> Result<(), GraphError> {
        let Some(want) = self.release(id).await else {
            return Ok(());
        };
        match self.delete_at_graph(graph, &want, id).await {
            Err(e) if e.is_not_found() => Ok(()),
            other => other,
        }
    }

    /// Renews every subscription that expires within `within`; returns how
    /// many were renewed. A failed renewal is logged and tried again on the
    /// next round (the lifecycle notifications and the reconciliation poll
    /// cover the gap).
    pub async fn renew_due(&self, graph: &GraphClient, within: Duration) -> usize {
        let now = std::time::SystemTime::now();
        let due: Vec<String> = self
            .held
            .lock()
            .await
            .iter()
            .filter(|(_, (_, _, expires))| expires.duration_since(now).unwrap_or_default() < within)
            .map(|(id, _)| id.clone())
            .collect();
        let mut renewed = 0;
        for id in due {
            match self.renew(graph, &id).await {
                Ok(_) => renewed += 1,
                Err(e) if e.is_not_found() => {
                    tracing::warn!(subscription = %id, "subscription gone; creating it again");
                    if let Err(e) = self.recreate(graph, &id).await {
                        tracing::warn!(subscription = %id, error = %e, "cannot recreate the subscription");
                    }
                }
                Err(e) => {
                    tracing::warn!(subscription = %id, error = %e, "cannot renew the subscription")
                }
            }
        }
        renewed
    }

    /// Acts on a lifecycle notification: reauthorizes, recreates a removed
    /// subscription, and says `true` when notifications were missed (the
    /// caller then runs its reconciliation poll).
    pub async fn on_lifecycle(
        &self,
        graph: &GraphClient,
        subscription_id: &str,
        event: LifecycleEvent,
    ) -> Result<bool, GraphError> {
        match event {
            LifecycleEvent::ReauthorizationRequired => self
                .reauthorize(graph, subscription_id)
                .await
                .map(|()| false),
            LifecycleEvent::SubscriptionRemoved => {
                self.recreate(graph, subscription_id).await.map(|_| true)
            }
            LifecycleEvent::Missed => Ok(true),
        }
    }

    /// Takes back the subscriptions made before a restart (`credential` finds
    /// each one's shadow account by UPN), then renews them before they lapse,
    /// for ever. `restored` is told once they are back, so that whatever
    /// lapsed meanwhile is read.
    pub async fn keep(
        self: Arc<Self>,
        graph: Arc<GraphClient>,
        credential: impl Fn(&str) -> Option<UserCredential>,
        restored: impl FnOnce(),
    ) {
        if let Err(e) = self.restore(credential).await {
            tracing::warn!(error = %e, "cannot take back the Graph subscriptions");
        }
        restored();
        loop {
            self.renew_due(&graph, Duration::from_secs(15 * 60)).await;
            tokio::time::sleep(Duration::from_secs(60)).await;
        }
    }

    pub async fn held(&self) -> Vec<Subscription> {
        self.held
            .lock()
            .await
            .values()
            .map(|(s, _, _)| s.clone())
            .collect()
    }
}
