//! XMPP → Teams presence: a remote contact's presence (over all its
//! resources) drives its shadow account — `setPresence` in our application's
//! session, renewed before the session lapses (and, while Available, before
//! Graph's 5-minute timeout fades it), the status text through
//! `setStatusMessage` where the tenant allows it, and `clearPresence` when
//! the contact goes offline.
//! Changes are coalesced per contact: a worker applies the latest state, so a
//! contact flapping quickly costs a few Graph calls, not one per stanza.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use futures::StreamExt;
use tokio::sync::Notify;
use xmpp_parsers::presence::{Presence, Type};

use crate::bridge::contacts::Contacts;
use crate::bridge::metrics::BridgeMetrics;
use crate::bridge::presence::{TeamsPresence, to_teams};
use crate::bridge::throttle::Throttle;
use crate::graph::GraphClient;

/// Shadow accounts updated at once.
const CONCURRENCY: usize = 8;
/// How often due renewals are looked for.
const TICK: Duration = Duration::from_secs(30);
/// After a failed update, the next try.
const RETRY: Duration = Duration::from_secs(15);
/// A contact over its presence limit is looked at again after this.
const THROTTLED_WAIT: Duration = Duration::from_secs(5);

/// What a contact shows: a setPresence pair and a status text, or offline.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Shown {
    pub presence: TeamsPresence,
    pub status: Option<String>,
}

impl Shown {
    fn offline() -> Self {
        Shown {
            presence: TeamsPresence::Clear,
            status: None,
        }
    }
}

#[derive(Default)]
struct ContactState {
    /// Per resource, what it shows.
    resources: HashMap<String, Shown>,
    /// What the shadow account shows now, and when it was set.
    applied: Option<(Shown, Instant)>,
    /// Due for work at (None: nothing to do until the state changes).
    due: Option<Instant>,
    /// The Teams user the contact deals with (asked for its vCard).
    asked_by: String,
}

/// The most available of a contact's resources: Available, then
/// DoNotDisturb, then Away; offline when none is online.
pub fn aggregate(resources: &HashMap<String, Shown>) -> Shown {
    let rank = |s: &Shown| match &s.presence {
        TeamsPresence::Set {
            availability: "Available",
            ..
        } => 3,
        TeamsPresence::Set {
            availability: "DoNotDisturb",
            ..
        } => 2,
        TeamsPresence::Set { .. } => 1,
        TeamsPresence::Clear => 0,
    };
    resources
        .iter()
        // Ties break on the resource name, so the choice is stable.
        .max_by(|(ra, a), (rb, b)| rank(a).cmp(&rank(b)).then_with(|| rb.cmp(ra)))
        .map(|(_, s)| s.clone())
        .unwrap_or_else(Shown::offline)
}

/// When a presence session is set again while the contact stays the same.
#[derive(Debug, Clone, Copy)]
pub struct Renewal {
    /// The session's expiration, renewed at four fifths of it.
    pub session: Duration,
    /// An Available session is timed out after 5 minutes without a
    /// setPresence (https://learn.microsoft.com/graph/api/presence-setpresence,
    /// "Timeout, expiration, and keep alive"): kept alive this often.
    pub keep_alive: Duration,
}

impl Renewal {
    /// How long after being set `shown` needs setting again (`None`: never).
    pub fn after(&self, shown: &Shown) -> Option<Duration> {
        match shown.presence {
            TeamsPresence::Set {
                availability: "Available",
                ..
            } => Some((self.session * 4 / 5).min(self.keep_alive)),
            TeamsPresence::Set { .. } => Some(self.session * 4 / 5),
            TeamsPresence::Clear => None,
        }
    }
}

pub struct ContactPresence {
    graph: Arc<GraphClient>,
    contacts: Arc<Contacts>,
    /// Our application id: the presence session Graph keeps for us.
    session_id: String,
    renewal: Renewal,
    /// The tenant refused app-only setStatusMessage: status texts are not
    /// sent (said once in the log), presence still is.
    status_unsupported: AtomicBool,
    throttle: Arc<Throttle>,
    metrics: BridgeMetrics,
    state: Mutex<HashMap<String, ContactState>>,
    wake: Notify,
}

impl ContactPresence {
    pub fn new(
        graph: Arc<GraphClient>,
        contacts: Arc<Contacts>,
        session_id: &str,
        renewal: Renewal,
        throttle: Arc<Throttle>,
        metrics: BridgeMetrics,
    ) -> Self {
        Self {
            graph,
            contacts,
            session_id: session_id.to_owned(),
            renewal,
            status_unsupported: AtomicBool::new(false),
            throttle,
            metrics,
            state: Mutex::new(HashMap::new()),
            wake: Notify::new(),
        }
    }

    fn state(&self) -> std::sync::MutexGuard<'_, HashMap<String, ContactState>> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// A presence stanza from `bare`'s `resource` (the empty string for a bare
    /// `from`), sent to `asked_by` of our domain.
    pub fn observe(&self, bare: &str, resource: &str, presence: &Presence, asked_by: &str) {
        let mut state = self.state();
        let contact = state.entry(bare.to_owned()).or_default();
        contact.asked_by = asked_by.to_owned();
        if presence.type_ == Type::Unavailable {
            if resource.is_empty() {
                contact.resources.clear();
            } else {
                contact.resources.remove(resource);
            }
        } else {
            let status = presence
                .statuses
                .values()
                .next()
                .map(|s| s.trim().to_owned())
                .filter(|s| !s.is_empty());
            contact.resources.insert(
                resource.to_owned(),
                Shown {
                    presence: to_teams(presence),
                    status,
                },
            );
        }
        contact.due = Some(Instant::now());
        drop(state);
        self.wake.notify_one();
    }

    /// No Teams user receives this contact's presence any more: its shadow
    /// account goes offline.
    pub fn forget(&self, bare: &str) {
        if let Some(contact) = self.state().get_mut(bare) {
            contact.resources.clear();
            contact.due = Some(Instant::now());
        }
        self.wake.notify_one();
    }

    /// What the contact's shadow account shows, as last applied.
    pub fn applied(&self, bare: &str) -> Option<Shown> {
        self.state()
            .get(bare)
            .and_then(|c| c.applied.as_ref().map(|(s, _)| s.clone()))
    }

    /// Applies changes and renews sessions, for ever.
    pub async fn run(self: Arc<Self>) {
        loop {
            let now = Instant::now();
            let due: Vec<String> = self
                .state()
                .iter()
                .filter(|(_, c)| c.due.is_some_and(|d| d <= now))
                .map(|(jid, _)| jid.clone())
                .collect();
            futures::stream::iter(due)
                .for_each_concurrent(CONCURRENCY, |jid| {
                    let this = self.clone();
                    async move { this.apply(&jid).await }
                })
                .await;
            // Until the next renewal is due, or a change comes in.
            let next = self
                .state()
                .values()
                .filter_map(|c| c.due)
                .min()
                .map_or(TICK, |d| d.saturating_duration_since(Instant::now()))
                .min(TICK);
            let _ = tokio::time::timeout(next, self.wake.notified()).await;
        }
    }

    /// Brings one shadow account up to date.
    async fn apply(&self, jid: &str) {
        let (wanted, applied, asked_by) = {
            let mut state = self.state();
            let Some(contact) = state.get_mut(jid) else {
                return;
            };
            contact.due = None;
            (
                aggregate(&contact.resources),
                contact.applied.clone(),
                contact.asked_by.clone(),
            )
        };
        let renewal = applied.as_ref().is_some_and(|(s, _)| *s == wanted);
        // The same presence again before its renewal is due: nothing to do.
        let renew_after = self.renewal.after(&wanted);
        if let Some((_, at)) = &applied
            && renewal
            && renew_after.is_none_or(|after| at.elapsed() < after)
        {
            if let Some(contact) = self.state().get_mut(jid) {
                contact.due = renew_after.map(|after| *at + after);
            }
            return;
        }
        // Over the contact's limit, changes wait (coalesced): the latest state
        // is applied once the bucket allows; nothing is dropped.
        if !renewal && let Err(refusal) = self.throttle.presence(&[jid]) {
            self.metrics.throttled("to-teams", refusal.kind.label());
            if let Some(contact) = self.state().get_mut(jid) {
                contact.due = Some(contact.due.unwrap_or(Instant::now() + THROTTLED_WAIT));
            }
            return;
        }
        let result = self.update(jid, &asked_by, &wanted, applied.as_ref()).await;
        let mut state = self.state();
        let Some(contact) = state.get_mut(jid) else {
            return;
        };
        match result {
            Ok(()) => {
                let renew = renew_after.map(|after| Instant::now() + after);
                contact.applied = Some((wanted, Instant::now()));
                // A change that came in meanwhile keeps its own, earlier, due time.
                contact.due = contact.due.or(renew);
                if contact.resources.is_empty() && contact.due.is_none() {
                    state.remove(jid);
                }
            }
            Err(()) => contact.due = Some(contact.due.unwrap_or(Instant::now() + RETRY)),
        }
    }

    async fn update(
        &self,
        jid: &str,
        asked_by: &str,
        wanted: &Shown,
        applied: Option<&(Shown, Instant)>,
    ) -> Result<(), ()> {
        let renewing = applied.is_some_and(|(s, _)| s == wanted);
        let object_id = match &wanted.presence {
            TeamsPresence::Set { .. } => self.contacts.shadow_of(jid, asked_by).await.map_err(
                |e| tracing::warn!(%jid, error = %e, "no shadow account for the contact's presence"),
            )?,
            // Nothing to clear on an account that does not exist.
            TeamsPresence::Clear => match self.contacts.existing(jid).await {
                Ok(Some(id)) => id,
                Ok(None) => return Ok(()),
                Err(e) => {
                    tracing::warn!(%jid, error = %e, "store unavailable");
                    return Err(());
                }
            },
        };
        let graph_result = match &wanted.presence {
            TeamsPresence::Set {
                availability,
                activity,
            } => {
                self.graph
                    .set_presence(
                        &object_id,
                        &self.session_id,
                        availability,
                        activity,
                        self.renewal.session,
                    )
                    .await
            }
            TeamsPresence::Clear => {
                match self
                    .graph
                    .clear_presence(&object_id, &self.session_id)
                    .await
                {
                    // No session of ours left (it lapsed): already clear.
                    Err(e) if e.is_not_found() => Ok(()),
                    other => other,
                }
            }
        };
        if let Err(e) = graph_result {
            self.metrics.graph_failure("set-presence");
            tracing::warn!(%jid, error = %e, "cannot update the shadow account's presence");
            return Err(());
        }
        let old_status = applied.and_then(|(s, _)| s.status.clone());
        if wanted.status != old_status
            && !self.status_unsupported.load(Ordering::Relaxed)
            && let Err(e) = self
                .graph
                .set_status_message(&object_id, wanted.status.as_deref().unwrap_or(""))
                .await
        {
            self.metrics.graph_failure("set-status-message");
            if e.is_transient() {
                tracing::warn!(%jid, error = %e, "cannot update the shadow account's status message");
                return Err(());
            }
            // A refusal (the tenant does not let apps set status messages):
            // said once, and presence goes on without status texts.
            if !self.status_unsupported.swap(true, Ordering::Relaxed) {
                tracing::warn!(error = %e, "the tenant refuses setStatusMessage from the app: \
                    contacts' status texts are not shown in Teams (presence still is)");
            }
        }
        if !renewing {
            self.metrics.presence("to-teams", 1);
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use xmpp_parsers::presence::Show;

    fn shown(availability: &'static str, activity: &'static str) -> Shown {
        Shown {
            presence: TeamsPresence::Set {
                availability,
                activity,
            },
            status: None,
        }
    }

    #[test]
    fn the_most_available_resource_wins() {
        let mut resources = HashMap::new();
        assert_eq!(aggregate(&resources), Shown::offline());
        resources.insert("phone".to_owned(), shown("Away", "Away"));
        resources.insert("desk".to_owned(), shown("DoNotDisturb", "Presenting"));
        assert_eq!(aggregate(&resources), shown("DoNotDisturb", "Presenting"));
        resources.insert("laptop".to_owned(), shown("Available", "Available"));
        assert_eq!(aggregate(&resources), shown("Available", "Available"));
        let mut dnd = Presence::available();
        dnd.show = Some(Show::Dnd);
        assert_eq!(to_teams(&dnd), shown("DoNotDisturb", "Presenting").presence);
    }
}
