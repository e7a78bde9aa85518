//! Teams → XMPP presence: the Teams users someone subscribes to are read in
//! batches (`getPresencesByUserId`, 650 a call) at an interval that adapts to
//! their number and to throttling, mapped to XMPP, and each real change is
//! sent to every subscribed contact from the user's fixed resource, with the
//! XEP-0153 photo hash. Nothing is sent when nothing changed.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use xmpp_parsers::jid::Jid;
use xmpp_parsers::presence::Presence;

use crate::bridge::contacts::cards::Cards;
use crate::bridge::contacts::roster::Roster;
use crate::bridge::contacts::vcard;
use crate::bridge::metrics::BridgeMetrics;
use crate::bridge::presence::{OutOfOffice, XmppPresence, stanza, to_xmpp};
use crate::bridge::users::directory::Directory;
use crate::bridge::{XmppOut, send_patiently};
use crate::graph::api::{PRESENCE_BATCH, Presence as GraphPresence};
use crate::graph::{GraphClient, GraphError};
use crate::s2s::Stanza;

/// Presence reads per second we allow ourselves: under a quarter of the
/// presence budget (`graph.limits.presence_per_second`), leaving the rest to
/// the contacts' own `setPresence` calls.
const POLL_CALLS_PER_SEC: u64 = 10;
/// The most the interval doubles after failures (2⁵ × the base).
const MAX_BACKOFF: u32 = 5;

/// How often to poll, given how many users and how things went lately.
#[derive(Debug, Clone)]
pub struct PollInterval {
    base: Duration,
    max: Duration,
    backoff: u32,
}

impl PollInterval {
    pub fn new(base: Duration, max: Duration) -> Self {
        Self {
            base,
            max,
            backoff: 0,
        }
    }

    /// The next wait for `users` polled users: never under the configured
    /// interval nor under what keeps presence reads within their share of the
    /// budget; doubled for each recent failure; never over the maximum.
    pub fn next(&self, users: usize) -> Duration {
        let calls = users.div_ceil(PRESENCE_BATCH) as u64;
        let floor = Duration::from_millis(calls * 1000 / POLL_CALLS_PER_SEC);
        (self.base.max(floor) * 2u32.pow(self.backoff)).min(self.max)
    }

    pub fn succeeded(&mut self) {
        self.backoff = self.backoff.saturating_sub(1);
    }

    pub fn failed(&mut self) {
        self.backoff = (self.backoff + 1).min(MAX_BACKOFF);
    }
}

pub struct TeamsPresence {
    graph: Arc<GraphClient>,
    directory: Directory,
    roster: Roster,
    cards: Arc<Cards>,
    out: Arc<dyn XmppOut>,
    domain: String,
    resource: String,
    out_of_office: OutOfOffice,
    metrics: BridgeMetrics,
    interval: Mutex<PollInterval>,
    /// Each polled user's presence as last sent, by object id.
    last: Mutex<HashMap<String, XmppPresence>>,
    /// The JID local part each user's presence went out under (to take it
    /// back if the user leaves the allow list).
    shown_as: Mutex<HashMap<String, String>>,
}

/// How Teams presence is shown to XMPP and how often it is read.
pub struct Settings {
    /// Our XMPP domain.
    pub domain: String,
    /// The resource every Teams user's presence comes from.
    pub resource: String,
    pub out_of_office: OutOfOffice,
    pub interval: PollInterval,
}

impl TeamsPresence {
    pub fn new(
        graph: Arc<GraphClient>,
        directory: Directory,
        roster: Roster,
        cards: Arc<Cards>,
        out: Arc<dyn XmppOut>,
        settings: Settings,
        metrics: BridgeMetrics,
    ) -> Self {
        let Settings {
            domain,
            resource,
            out_of_office,
            interval,
        } = settings;
        Self {
            graph,
            directory,
            roster,
            cards,
            out,
            domain,
            resource,
            out_of_office,
            metrics,
            interval: Mutex::new(interval),
            last: Mutex::new(HashMap::new()),
            shown_as: Mutex::new(HashMap::new()),
        }
    }

    fn last(&self) -> std::sync::MutexGuard<'_, HashMap<String, XmppPresence>> {
        self.last.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn map(&self, p: &GraphPresence) -> XmppPresence {
        to_xmpp(
            p.availability.as_deref().unwrap_or("PresenceUnknown"),
            p.activity.as_deref().unwrap_or(""),
            // The status message, or else the out-of-office note.
            p.status_text().or_else(|| {
                p.is_out_of_office()
                    .then(|| p.out_of_office_message())
                    .flatten()
            }),
            p.is_out_of_office(),
            self.out_of_office,
        )
    }

    /// Polls for ever, at the adaptive interval.
    pub async fn run(self: Arc<Self>) {
        loop {
            let started = Instant::now();
            let users = match self.poll_once().await {
                Ok(users) => {
                    self.interval().succeeded();
                    users
                }
                Err(e) => {
                    self.interval().failed();
                    self.metrics.graph_failure("read-presence");
                    tracing::warn!(error = %e, "cannot read Teams presence; polling slower for a while");
                    self.roster.watched_users().len()
                }
            };
            let wait = self.interval().next(users);
            self.metrics.poll_interval(wait.as_secs_f64());
            tokio::time::sleep(wait.saturating_sub(started.elapsed())).await;
        }
    }

    fn interval(&self) -> std::sync::MutexGuard<'_, PollInterval> {
        self.interval.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// One round: reads the presence of every watched user and sends the
    /// changes; returns how many users were read.
    pub async fn poll_once(&self) -> Result<usize, GraphError> {
        let mut ids = self.roster.watched_users();
        // Someone dropped from the allow list is not read (nor shown) any more.
        ids.retain(|id| self.directory.local_of(id).is_some());
        self.withdraw_dropped().await;
        if ids.is_empty() {
            return Ok(0);
        }
        let read = self.graph.presences_by_user_id(&ids).await?;
        let changed: Vec<(String, XmppPresence)> = {
            let mut last = self.last();
            read.iter()
                .filter_map(|p| {
                    let now = self.map(p);
                    (last.get(&p.id) != Some(&now)).then(|| {
                        last.insert(p.id.clone(), now.clone());
                        (p.id.clone(), now)
                    })
                })
                .collect()
        };
        for (id, presence) in &changed {
            self.fan_out(id, presence).await;
        }
        Ok(ids.len())
    }

    /// Sends a user's presence to every subscribed contact.
    pub async fn fan_out(&self, id: &str, presence: &XmppPresence) -> usize {
        if self.roster.subscribers(id).is_empty() {
            return 0;
        }
        self.know_card(id).await;
        let Some((local, template)) = self.stanza_for(id, presence) else {
            return 0;
        };
        let mut sent = 0;
        for remote in self.roster.subscribers(id) {
            let Ok(to) = remote.parse::<Jid>() else {
                continue;
            };
            let mut p = template.clone();
            p.to = Some(to);
            match send_patiently(self.out.as_ref(), Stanza::Presence(p)).await {
                Ok(()) => sent += 1,
                Err(e) => tracing::debug!(%local, %remote, error = %e, "presence not sent"),
            }
        }
        self.metrics.presence("to-xmpp", sent as u64);
        sent
    }

    /// Users whose presence went out but who left the allow list: their
    /// subscribers see them go offline, once.
    async fn withdraw_dropped(&self) {
        let dropped: Vec<(String, String)> = {
            let mut shown = self.shown_as.lock().unwrap_or_else(|p| p.into_inner());
            let gone: Vec<String> = shown
                .keys()
                .filter(|id| self.directory.local_of(id).is_none())
                .cloned()
                .collect();
            gone.into_iter()
                .filter_map(|id| shown.remove(&id).map(|local| (id, local)))
                .collect()
        };
        for (id, local) in dropped {
            self.last().remove(&id);
            let Ok(from) = format!("{local}@{}/{}", self.domain, self.resource).parse::<Jid>()
            else {
                continue;
            };
            tracing::info!(%local, "a user left the allow list: subscribers see them go offline");
            for remote in self.roster.subscribers(&id) {
                let Ok(to) = remote.parse::<Jid>() else {
                    continue;
                };
                let mut p = Presence::new(xmpp_parsers::presence::Type::Unavailable);
                p.from = Some(from.clone());
                p.to = Some(to);
                let _ = send_patiently(self.out.as_ref(), Stanza::Presence(p)).await;
            }
        }
    }

    /// Reads a user's card once (then cached) so that every presence sent
    /// for them carries their photo hash, whoever sends it first.
    async fn know_card(&self, id: &str) {
        if let Some(local) = self.directory.local_of(id)
            && self.cards.known_photo_hash(&local).is_none()
            && let Err(e) = self.cards.card(&self.graph, &local).await
        {
            tracing::debug!(%local, error = %e, "no card yet; presence goes without the photo hash");
        }
    }

    /// The presence stanza of a user (by object id), from its fixed resource.
    fn stanza_for(&self, id: &str, presence: &XmppPresence) -> Option<(String, Presence)> {
        let local = self.directory.local_of(id)?;
        self.shown_as
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .insert(id.to_owned(), local.clone());
        let from: Jid = format!("{local}@{}/{}", self.domain, self.resource)
            .parse()
            .ok()?;
        let mut p = stanza(presence);
        p.from = Some(from);
        let hash = self.cards.known_photo_hash(&local);
        p.payloads
            .push(vcard::update_element(hash.as_ref().map(|h| h.as_deref())));
        Some((local, p))
    }

    /// Sends a user's current presence to one contact (a new subscriber, or a
    /// probe): as last read, or read now if the user is not polled yet.
    pub async fn send_current(&self, id: &str, remote: &Jid) -> Result<(), GraphError> {
        // The card first: the presence is read after it, so that a change the
        // poller sends meanwhile is not overtaken by an older one.
        self.know_card(id).await;
        let known = self.last().get(id).cloned();
        let presence = match known {
            Some(p) => p,
            None => {
                let p = self.map(&self.graph.get_presence(id).await?);
                self.last().insert(id.to_owned(), p.clone());
                p
            }
        };
        if let Some((_, mut p)) = self.stanza_for(id, &presence) {
            p.to = Some(remote.clone());
            if let Err(e) = send_patiently(self.out.as_ref(), Stanza::Presence(p)).await {
                tracing::debug!(%remote, error = %e, "presence not sent");
            } else {
                self.metrics.presence("to-xmpp", 1);
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_interval_adapts_to_users_and_failures() {
        let mut i = PollInterval::new(Duration::from_secs(1), Duration::from_secs(30));
        assert_eq!(i.next(10), Duration::from_secs(1));
        // 10,000 users are 16 calls: 1.6 s keeps them at 10 calls/s.
        assert_eq!(i.next(10_000), Duration::from_millis(1600));
        i.failed();
        i.failed();
        assert_eq!(i.next(10), Duration::from_secs(4));
        for _ in 0..10 {
            i.failed();
        }
        assert_eq!(i.next(10_000), Duration::from_secs(30), "capped");
        for _ in 0..10 {
            i.succeeded();
        }
        assert_eq!(i.next(10), Duration::from_secs(1), "back to the base");
    }
}
