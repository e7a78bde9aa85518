//! Remote contacts' shadow accounts as a service: found in memory, then in
//! the store, and only then created through Graph — once per contact even
//! when several requests race — with the contact's own vCard fetched over
//! XMPP first. Accounts unused for the configured time are removed.
//!
//! Beside it: `shadow` creates one account, `credentials` seals its password,
//! `roster` keeps the contact relationships, `vcard` and `cards` carry contact
//! cards both ways.

pub mod cards;
pub mod credentials;
pub mod roster;
pub mod shadow;
pub mod vcard;

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use xmpp_parsers::iq::Iq;
use xmpp_parsers::jid::Jid;
use xmpp_parsers::minidom::Element;
use xmpp_parsers::ns;

use crate::bridge::XmppOut;
use crate::bridge::contacts::credentials::CredentialCipher;
use crate::bridge::iq::Requests;
use crate::bridge::metrics::BridgeMetrics;
use crate::graph::{GraphClient, UserCredential};
use crate::store::{ShadowAccount, Store, StoreError, now};
use shadow::{ShadowError, ShadowSettings};

/// How long we wait for a contact's server to send its vCard.
const VCARD_TIMEOUT: Duration = Duration::from_secs(10);
/// `last_used` is written at most this often per account (it only has to be
/// precise to the day the removal is configured in).
const TOUCH_EVERY: Duration = Duration::from_secs(3600);
/// After a failed creation, a contact's shadow account is not tried again for
/// this long, doubled after each failure up to `CREATE_BACKOFF_MAX`: a tenant
/// out of licences must not be asked again for every stanza the contact sends.
const CREATE_BACKOFF: Duration = Duration::from_secs(30);
const CREATE_BACKOFF_MAX: Duration = Duration::from_secs(3600);
/// How long a new shadow account may be refused while Teams provisions it.
pub const PROVISIONING: Duration = Duration::from_secs(24 * 3600);

struct Known {
    object_id: String,
    touched: Instant,
}

pub struct Contacts {
    graph: Arc<GraphClient>,
    store: Arc<Store>,
    cipher: CredentialCipher,
    settings: ShadowSettings,
    requests: Arc<Requests>,
    out: Arc<dyn XmppOut>,
    domain: String,
    metrics: BridgeMetrics,
    known: Mutex<HashMap<String, Known>>,
    /// One creation at a time per contact.
    creating: Mutex<HashMap<String, Arc<tokio::sync::Mutex<()>>>>,
    /// Contacts whose shadow account could not be created: when to try again,
    /// and the pause that set it.
    failed: Mutex<HashMap<String, (Instant, Duration)>>,
}

/// A shadow account: whose it is, its object id and its sign-in.
#[derive(Clone)]
pub struct ShadowSignIn {
    /// The remote contact's bare JID.
    pub jid: String,
    pub object_id: String,
    pub credential: UserCredential,
}

impl Contacts {
    /// `domain` is ours: the contacts' vCards are asked for from it.
    pub fn new(
        services: &crate::bridge::Services,
        cipher: CredentialCipher,
        settings: ShadowSettings,
        requests: Arc<Requests>,
        domain: &str,
    ) -> Self {
        Self {
            graph: services.shadow_graph.clone(),
            store: services.store.clone(),
            cipher,
            settings,
            requests,
            out: services.out.clone(),
            domain: domain.to_owned(),
            metrics: services.metrics.clone(),
            known: Mutex::new(HashMap::new()),
            creating: Mutex::new(HashMap::new()),
            failed: Mutex::new(HashMap::new()),
        }
    }

    fn known(&self) -> std::sync::MutexGuard<'_, HashMap<String, Known>> {
        self.known.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// The shadow account's object id if it exists already (memory or store),
    /// without creating one.
    pub async fn existing(&self, jid: &str) -> Result<Option<String>, StoreError> {
        if let Some(id) = self.cached(jid).await? {
            return Ok(Some(id));
        }
        Ok(match self.store.shadow(jid).await? {
            Some(account) => {
                self.remember(jid, &account.object_id);
                Some(account.object_id)
            }
            None => None,
        })
    }

    /// From memory, recording use now and then.
    async fn cached(&self, jid: &str) -> Result<Option<String>, StoreError> {
        let (id, touch) = match self.known().get_mut(jid) {
            Some(known) => {
                let touch = known.touched.elapsed() >= TOUCH_EVERY;
                if touch {
                    known.touched = Instant::now();
                }
                (known.object_id.clone(), touch)
            }
            None => return Ok(None),
        };
        if touch {
            self.store.touch_shadow(jid, now()).await?;
        }
        Ok(Some(id))
    }

    fn remember(&self, jid: &str, object_id: &str) {
        self.known().insert(
            jid.to_owned(),
            Known {
                object_id: object_id.to_owned(),
                touched: Instant::now(),
            },
        );
    }

    /// The shadow account of `jid` (a bare JID, lower-cased), created on first
    /// need; `asked_by` is the local part of the Teams user the contact deals
    /// with (its vCard is requested from that JID).
    pub async fn shadow_of(&self, jid: &str, asked_by: &str) -> Result<String, ShadowError> {
        if let Some(id) = self.cached(jid).await? {
            return Ok(id);
        }
        let lock = self
            .creating
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .entry(jid.to_owned())
            .or_default()
            .clone();
        let guard = lock.lock().await;
        let result = match self.backing_off(jid) {
            Some(retry_in) => Err(ShadowError::BackingOff { retry_in }),
            None => {
                let result = self.find_or_create(jid, asked_by).await;
                self.record(jid, &result);
                result
            }
        };
        drop(guard);
        // Forget the lock only if nobody else holds or waits on it (the map's
        // copy and ours are the only two), so that no newcomer gets a second one.
        let mut creating = self.creating.lock().unwrap_or_else(|p| p.into_inner());
        if creating
            .get(jid)
            .is_some_and(|l| Arc::ptr_eq(l, &lock) && Arc::strong_count(&lock) == 2)
        {
            creating.remove(jid);
        }
        result
    }

    /// How long until the contact's shadow account may be tried again, if a
    /// creation failed lately.
    fn backing_off(&self, jid: &str) -> Option<Duration> {
        let failed = self.failed.lock().unwrap_or_else(|p| p.into_inner());
        failed
            .get(jid)
            .and_then(|(retry_at, _)| retry_at.checked_duration_since(Instant::now()))
    }

    fn record(&self, jid: &str, result: &Result<String, ShadowError>) {
        let mut failed = self.failed.lock().unwrap_or_else(|p| p.into_inner());
        match result {
            Ok(_) => {
                failed.remove(jid);
            }
            // Only the tenant's refusals pause: a store error is not the tenant's.
            Err(e @ ShadowError::Graph(_)) => {
                let pause = failed.get(jid).map_or(CREATE_BACKOFF, |(_, last)| {
                    (*last * 2).min(CREATE_BACKOFF_MAX)
                });
                tracing::warn!(%jid, error = %e, ?pause, "cannot create the contact's shadow account; not trying again for a while");
                failed.insert(jid.to_owned(), (Instant::now() + pause, pause));
            }
            Err(_) => {}
        }
    }

    async fn find_or_create(&self, jid: &str, asked_by: &str) -> Result<String, ShadowError> {
        if let Some(id) = self.existing(jid).await? {
            return Ok(id);
        }
        let card = self.fetch_card(jid, asked_by).await;
        let (account, _) = shadow::ensure(
            &self.graph,
            &self.store,
            &self.cipher,
            &self.settings,
            jid,
            card.as_ref(),
        )
        .await
        .inspect_err(|_| self.metrics.graph_failure("create-shadow"))?;
        self.metrics.shadow("created");
        self.remember(jid, &account.object_id);
        Ok(account.object_id)
    }

    /// The contact's vcard-temp, if its server answers in time.
    async fn fetch_card(&self, jid: &str, asked_by: &str) -> Option<Element> {
        let from: Jid = format!("{asked_by}@{}", self.domain).parse().ok()?;
        let to: Jid = jid.parse().ok()?;
        let iq = Iq::Get {
            from: Some(from),
            to: Some(to),
            id: String::new(),
            payload: Element::builder("vCard", ns::VCARD).build(),
        };
        match self
            .requests
            .request(self.out.as_ref(), iq, VCARD_TIMEOUT)
            .await
        {
            Ok(Iq::Result {
                payload: Some(card),
                ..
            }) if card.is("vCard", ns::VCARD) => Some(card),
            Ok(_) => {
                tracing::debug!(%jid, "the contact has no vCard; the shadow account gets its JID's name");
                None
            }
            Err(e) => {
                tracing::info!(%jid, error = %e, "no vCard from the contact; the shadow account gets its JID's name");
                None
            }
        }
    }

    /// Whether the contact's shadow account is young enough that Teams may
    /// still be provisioning it: Microsoft documents up to 24 hours after a
    /// licence is assigned (https://learn.microsoft.com/microsoftteams/assign-teams-licenses
    /// — "it can take up to 24 hours"), and directory replication may answer
    /// 404 right after creation.
    pub async fn is_provisioning(&self, jid: &str) -> bool {
        matches!(self.store.shadow(jid).await, Ok(Some(a))
            if a.created_at > crate::store::now() - PROVISIONING.as_secs() as i64)
    }

    /// Whether creating the contact's shadow account is paused after a failure.
    pub fn is_backing_off(&self, jid: &str) -> bool {
        self.backing_off(jid).is_some()
    }

    /// The shadow account's sign-in (for delegated calls: chats, messages),
    /// created on first need as `shadow_of` does; with its object id.
    pub async fn credential(
        &self,
        jid: &str,
        asked_by: &str,
    ) -> Result<(String, UserCredential), ShadowError> {
        self.shadow_of(jid, asked_by).await?;
        self.existing_credential(jid).await?.ok_or_else(|| {
            StoreError::backend(format!("the shadow account of {jid} vanished")).into()
        })
    }

    /// The shadow account's sign-in if it exists; never creates one (a
    /// removed account is not brought back by reading its old chats).
    pub async fn existing_credential(
        &self,
        jid: &str,
    ) -> Result<Option<(String, UserCredential)>, ShadowError> {
        let Some(account) = self.store.shadow(jid).await? else {
            return Ok(None);
        };
        let password = self.cipher.open(jid, &account.credential)?;
        Ok(Some((
            account.object_id,
            UserCredential {
                upn: account.upn,
                password,
            },
        )))
    }

    /// Every shadow account's sign-in, by UPN (to take back Graph
    /// subscriptions made as them after a restart).
    pub async fn all_credentials(&self) -> Result<HashMap<String, UserCredential>, ShadowError> {
        Ok(self
            .all_sign_ins()
            .await?
            .into_iter()
            .map(|a| (a.credential.upn.to_lowercase(), a.credential))
            .collect())
    }

    /// Every shadow account with its contact and sign-in.
    pub async fn all_sign_ins(&self) -> Result<Vec<ShadowSignIn>, ShadowError> {
        let mut all = Vec::new();
        for account in self.store.unused_shadows(i64::MAX).await? {
            all.push(self.sign_in(account)?);
        }
        Ok(all)
    }

    /// The shadow account with this object id, with its contact and sign-in.
    pub async fn sign_in_by_object_id(
        &self,
        object_id: &str,
    ) -> Result<Option<ShadowSignIn>, ShadowError> {
        match self.store.shadow_by_object_id(object_id).await? {
            Some(account) => Ok(Some(self.sign_in(account)?)),
            None => Ok(None),
        }
    }

    fn sign_in(&self, account: ShadowAccount) -> Result<ShadowSignIn, ShadowError> {
        let password = self.cipher.open(&account.jid, &account.credential)?;
        Ok(ShadowSignIn {
            credential: UserCredential {
                upn: account.upn,
                password,
            },
            jid: account.jid,
            object_id: account.object_id,
        })
    }

    /// Removes the shadow accounts unused since `before` from the tenant and
    /// the store; returns how many went.
    pub async fn remove_unused(
        &self,
        before: crate::store::Epoch,
        keep: impl Fn(&str) -> bool,
    ) -> Result<usize, ShadowError> {
        let mut removed = 0;
        for account in self.store.unused_shadows(before).await? {
            if keep(&account.jid) {
                continue;
            }
            match self.graph.delete_user(&account.object_id).await {
                Ok(()) => {}
                Err(e) if e.is_not_found() => {}
                Err(e) => {
                    self.metrics.graph_failure("remove-shadow");
                    tracing::warn!(jid = %account.jid, error = %e, "cannot remove an unused shadow account; trying again later");
                    continue;
                }
            }
            self.store.delete_shadow(&account.jid).await?;
            self.known().remove(&account.jid);
            self.metrics.shadow("removed");
            tracing::info!(jid = %account.jid, upn = %account.upn, "unused shadow account removed");
            removed += 1;
        }
        Ok(removed)
    }
}
