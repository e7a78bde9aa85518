//! The bridged 1:1 chats: found or created, adopted when a Teams user starts
//! one, watched through subscriptions, and read for what notifications missed.

use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::bridge::contacts::ShadowSignIn;
use crate::graph::api::{Chat, ChatType};
use crate::graph::subscriptions::Want;
use crate::graph::{GraphError, UserCredential};
use crate::store::{BridgedChat, StoreError, now};
use xmppfed_config::ChatNotifications;

use super::{CatchUpError, Messages};

/// How far behind the newest message read a chat's mark stays.
const MARK_LAG_MS: i64 = 10_000;
/// How far back (pages of 50) one reconciliation pass reads a chat.
const RECONCILE_PAGES: usize = 40;
/// How often every shadow account's chats are listed for chats Teams users
/// started, when no notifications come (the poll is all there is)...
const DISCOVER_EVERY: Duration = Duration::from_secs(15 * 60);
/// ...and when they do: notifications name new chats at once and Graph says
/// when it missed some (which starts a discovery then), so this is only a
/// safety net, and the listing costs one call per contact.
const DISCOVER_EVERY_NOTIFIED: Duration = Duration::from_secs(6 * 3600);
/// How long a chat found not to be bridged is left alone before it is looked
/// at again (its Teams user may join the allow list).
const FOREIGN_FOR: Duration = Duration::from_secs(15 * 60);
/// Graph's limit for chat-message subscriptions.
const SUBSCRIPTION_LIFETIME: Duration = Duration::from_secs(55 * 60);
/// How long the first discovery waits for the held subscriptions to be back.
const RESTORE_WAIT: Duration = Duration::from_secs(30);
/// The one subscription that covers every chat of the tenant (app-only).
const TENANT_CHATS: &str = "/chats/getAllMessages";
/// After Graph refused a subscription (403: the quota, or a permission the
/// app lacks), how long none is asked for.
const REFUSED_BACK_OFF: Duration = Duration::from_secs(3600);
/// After the tenant's one subscription failed otherwise, how long before it
/// is asked for again (not once per contact of a discovery).
const FAILED_BACK_OFF: Duration = Duration::from_secs(60);

impl Messages {
    /// The chat between a contact's shadow account and a Teams user.
    pub(super) async fn chat(
        &self,
        remote: &str,
        shadow: &UserCredential,
        shadow_id: &str,
        user_id: &str,
    ) -> Result<String, GraphError> {
        if let Ok(Some(chat_id)) = self.store.chat_between(remote, user_id).await {
            return Ok(chat_id);
        }
        let chat = self
            .graph
            .one_on_one_chat(shadow, shadow_id, user_id, self.home_tenant.as_deref())
            .await?;
        // Graph answers with the chat the Teams user may have started first:
        // what they wrote before the contact did is read too.
        if let Err(e) = self.remember_chat(&chat.id, remote, user_id).await {
            tracing::warn!(error = %e, "cannot remember a chat");
        }
        self.watch(shadow, shadow_id).await;
        Ok(chat.id)
    }

    /// Records a bridged chat: its conversation both ways, and — unless the
    /// chat is read already — the mark from which its messages are read: the
    /// expiry back (older ones would have been given up on by now).
    pub(super) async fn remember_chat(
        &self,
        chat_id: &str,
        remote: &str,
        user_id: &str,
    ) -> Result<(), StoreError> {
        self.store
            .bridge_chat(&BridgedChat {
                chat_id: chat_id.to_owned(),
                remote_jid: remote.to_owned(),
                teams_user: user_id.to_owned(),
                read_from_ms: (now() - self.settings.expiry.as_secs() as i64) * 1000,
            })
            .await
    }

    pub(super) fn is_foreign(&self, chat_id: &str) -> bool {
        self.foreign
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .get(chat_id)
            .is_some_and(|at| at.elapsed() < FOREIGN_FOR)
    }

    pub(super) fn mark_foreign(&self, chat_id: &str) {
        let mut foreign = self.foreign.lock().unwrap_or_else(|e| e.into_inner());
        foreign.retain(|_, at| at.elapsed() < FOREIGN_FOR);
        foreign.insert(chat_id.to_owned(), Instant::now());
    }

    /// Takes on a chat a Teams user started with a shadow account, when it
    /// is the 1:1 chat of a Teams user on the allow list and the account's
    /// contact; `Ok(true)` when the chat is (now) bridged. `listed`: the chat
    /// as a listing gave it (with its members), else it is read.
    pub(super) async fn adopt(
        &self,
        chat_id: &str,
        account: &ShadowSignIn,
        listed: Option<&Chat>,
    ) -> Result<bool, CatchUpError> {
        if self.store.bridged_chat(chat_id).await?.is_some() {
            return Ok(true);
        }
        if self.is_foreign(chat_id) {
            return Ok(false);
        }
        let user_id = match self.other_member(chat_id, account, listed).await {
            Ok(user_id) => user_id.filter(|id| self.directory.local_of(id).is_some()),
            // Gone, or not the shadow account's to read: not ours.
            Err(e) if matches!(e.status(), Some(403 | 404)) => None,
            Err(e) => return Err(e.into()),
        };
        let Some(user_id) = user_id else {
            self.mark_foreign(chat_id);
            return Ok(false);
        };
        self.remember_chat(chat_id, &account.jid, &user_id).await?;
        tracing::info!(%chat_id, remote = %account.jid, %user_id, "a chat started in Teams is bridged");
        Ok(true)
    }

    /// The other member of a 1:1 chat of the shadow account (None for any
    /// other kind of chat).
    pub(super) async fn other_member(
        &self,
        chat_id: &str,
        account: &ShadowSignIn,
        listed: Option<&Chat>,
    ) -> Result<Option<String>, GraphError> {
        let chat = match listed {
            Some(chat) => chat.clone(),
            None => self.graph.get_chat(&account.credential, chat_id).await?,
        };
        if chat.chat_type != ChatType::OneOnOne {
            return Ok(None);
        }
        let members = match chat.members {
            Some(members) => members,
            None => {
                self.graph
                    .chat_members(&account.credential, chat_id)
                    .await?
            }
        };
        Ok(members
            .into_iter()
            .filter_map(|m| m.user_id)
            .find(|id| !id.eq_ignore_ascii_case(&account.object_id)))
    }

    /// The shadow account in a 1:1 chat, from the chat's id alone: Teams
    /// names a 1:1 chat `19:{userId}_{userId}@unq.gbl.spaces` (group chats
    /// end `@thread.v2`), so a notification of the tenant's subscription
    /// about a chat without a shadow account costs no Graph call. The
    /// adoption that follows reads the members for real.
    pub(super) async fn account_in_chat(
        &self,
        chat_id: &str,
    ) -> Result<Option<ShadowSignIn>, CatchUpError> {
        let Some((a, b)) = chat_id
            .strip_prefix("19:")
            .and_then(|r| r.strip_suffix("@unq.gbl.spaces"))
            .and_then(|pair| pair.split_once('_'))
        else {
            return Ok(None);
        };
        for id in [a, b] {
            if let Some(account) = self.contacts.sign_in_by_object_id(id).await? {
                return Ok(Some(account));
            }
        }
        Ok(None)
    }

    /// The shadow account a chat-message subscription was made as.
    pub(super) async fn subscriber(
        &self,
        subscription_id: &str,
    ) -> Result<Option<ShadowSignIn>, CatchUpError> {
        let Some(subscriptions) = &self.subscriptions else {
            return Ok(None);
        };
        let Some(shadow_id) = subscriptions
            .held()
            .await
            .into_iter()
            .find(|s| s.id == subscription_id)
            .and_then(|s| {
                s.resource
                    .strip_prefix("/users/")?
                    .strip_suffix("/chats/getAllMessages")
                    .map(str::to_owned)
            })
        else {
            return Ok(None);
        };
        // The resource was written with the stored object id: an exact,
        // indexed lookup (not a scan of every account per notification).
        Ok(self.contacts.sign_in_by_object_id(&shadow_id).await?)
    }

    /// Watches the chats of a contact's shadow account (a Teams user may
    /// write to it first).
    pub async fn watch_contact(&self, remote: &str) {
        match self.contacts.existing_credential(remote).await {
            Ok(Some((shadow_id, shadow))) => self.watch(&shadow, &shadow_id).await,
            Ok(None) => {}
            Err(e) => tracing::warn!(%remote, error = %e, "cannot read the shadow account"),
        }
    }

    /// Lists every shadow account's chats for chats Teams users started (each
    /// taken on by `adopt`, which knows the ones already bridged), and
    /// watches each account's chats.
    pub async fn discover(&self) {
        let accounts = match self.contacts.all_sign_ins().await {
            Ok(accounts) => accounts,
            Err(e) => {
                tracing::warn!(error = %e, "cannot read the shadow accounts");
                return;
            }
        };
        if self.settings.chat_notifications == ChatNotifications::Tenant {
            self.watch_tenant().await;
        }
        for account in accounts {
            if self.settings.chat_notifications == ChatNotifications::PerAccount {
                self.watch(&account.credential, &account.object_id).await;
            }
            let chats = match self
                .graph
                .chats_of(&account.credential, &account.object_id)
                .await
            {
                Ok(chats) => chats,
                Err(e) => {
                    tracing::warn!(upn = %account.credential.upn, error = %e, "cannot list a shadow account's chats");
                    continue;
                }
            };
            for chat in chats.iter().filter(|c| c.chat_type == ChatType::OneOnOne) {
                if let Err(e) = self.adopt(&chat.id, &account, Some(chat)).await {
                    tracing::warn!(chat = %chat.id, error = %e, "cannot look at a chat");
                }
            }
        }
    }

    /// Subscribes to the shadow account's chats (once), when notifications
    /// are on and per account; with one subscription for the tenant, makes
    /// that one (once).
    pub(super) async fn watch(&self, shadow: &UserCredential, shadow_id: &str) {
        match self.settings.chat_notifications {
            ChatNotifications::PerAccount => {
                let resource = format!("/users/{shadow_id}/chats/getAllMessages");
                self.subscribe(resource, Some(shadow.clone())).await;
            }
            ChatNotifications::Tenant => self.watch_tenant().await,
        }
    }

    /// The one app-only subscription for every chat of the tenant.
    async fn watch_tenant(&self) {
        self.subscribe(TENANT_CHATS.to_owned(), None).await;
    }

    async fn subscribe(&self, resource: String, as_user: Option<UserCredential>) {
        let Some(subscriptions) = &self.subscriptions else {
            return;
        };
        if self.subscribing_paused()
            || subscriptions
                .held()
                .await
                .iter()
                .any(|s| s.resource == resource)
        {
            return;
        }
        let upn = as_user.as_ref().map(|u| u.upn.clone());
        let want = Want {
            resource,
            change_type: "created".into(),
            lifetime: SUBSCRIPTION_LIFETIME,
            as_user,
        };
        let Err(e) = subscriptions.create(&self.graph, want).await else {
            return;
        };
        match (e.status(), upn) {
            (Some(403), upn) => self.pause_subscribing(&e, upn.is_none()),
            (_, Some(upn)) => {
                tracing::warn!(%upn, error = %e, "no change notifications for the shadow account's chats; the poll stands in");
            }
            (_, None) => {
                tracing::warn!(error = %e, "no change notifications for the tenant's chats yet; the poll stands in and the subscription is asked for again in a minute");
                self.pause_for(FAILED_BACK_OFF);
                self.metrics.subscription_refused("failed");
            }
        }
    }

    /// Notifications flow unless there are none or Graph refused them.
    fn notifications_flow(&self) -> bool {
        self.subscriptions.is_some() && !self.subscribing_paused()
    }

    fn subscribing_paused(&self) -> bool {
        self.subscribe_after
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .is_some_and(|until| Instant::now() < until)
    }

    fn pause_for(&self, pause: Duration) {
        *self
            .subscribe_after
            .lock()
            .unwrap_or_else(|e| e.into_inner()) = Some(Instant::now() + pause);
    }

    /// Graph refused a subscription with 403: said the first time (the log
    /// names the fix), counted every time, and none asked for during
    /// [`REFUSED_BACK_OFF`].
    fn pause_subscribing(&self, e: &GraphError, tenant_wide: bool) {
        let was_paused = self
            .subscribe_after
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .is_some();
        if !was_paused && tenant_wide {
            tracing::error!(error = %e, "Graph refuses the tenant-wide chat subscription (/chats/getAllMessages): the app needs the application permission Chat.Read.All with admin consent (xmppfed-gateway check-tenant says which are missing), or the tenant is at its 10,000 Teams subscriptions for all apps; chats are read by the poll only, and it is asked for again in an hour");
        } else if !was_paused {
            tracing::error!(error = %e, "Graph refuses more Teams subscriptions (the tenant's quota is 10,000 for all apps): chats of further contacts are read by the poll only; set webhook.chat_notifications = \"tenant\" (one subscription for every contact; needs the application permission Chat.Read.All)");
        }
        self.pause_for(REFUSED_BACK_OFF);
        self.metrics
            .subscription_refused(if tenant_wide { "forbidden" } else { "quota" });
    }

    /// Reads every bridged chat for messages not seen yet, for ever.
    /// Chats Teams users started are looked for at the start, after
    /// notifications may have been missed, and every [`DISCOVER_EVERY`] (or
    /// [`DISCOVER_EVERY_NOTIFIED`] while notifications flow).
    pub async fn reconcile(self: Arc<Self>) {
        let mut discovered: Option<Instant> = None;
        // The first discovery (every account's chats, one call each) covers
        // what lapsed while the gateway was away once the subscriptions are
        // back; run before that, a second one would be needed.
        if self.subscriptions.is_some() {
            let _ =
                tokio::time::timeout(RESTORE_WAIT, self.subscriptions_restored.notified()).await;
        }
        loop {
            let every = if self.notifications_flow() {
                DISCOVER_EVERY_NOTIFIED
            } else {
                DISCOVER_EVERY
            };
            if discovered.is_none_or(|at| at.elapsed() >= every) {
                self.discover().await;
                discovered = Some(Instant::now());
            }
            self.reconcile_once().await;
            // Asked after the discovery: it may just have been refused.
            let sweep = if self.notifications_flow() {
                self.settings.reconcile
            } else {
                self.settings.poll
            };
            if tokio::time::timeout(sweep, self.reconcile_now.notified())
                .await
                .is_ok()
            {
                discovered = None;
            }
        }
    }

    /// One pass over every bridged chat; returns how many messages it queued.
    pub async fn reconcile_once(&self) -> usize {
        let chats = match self.store.bridged_chats().await {
            Ok(chats) => chats,
            Err(e) => {
                tracing::warn!(error = %e, "cannot list the bridged chats");
                return 0;
            }
        };
        let mut queued = 0;
        let mut next = tokio::time::Instant::now();
        for chat in chats {
            // Paced, not bursty: the sweep never takes more than its share of reads.
            tokio::time::sleep_until(next).await;
            next = tokio::time::Instant::now() + self.settings.sweep_gap;
            let chat_id = &chat.chat_id;
            match self.catch_up(chat_id).await {
                Ok(n) => queued += n,
                Err(e) => tracing::warn!(error = %e, %chat_id, "cannot read a chat"),
            }
        }
        queued
    }

    /// Queues a chat's messages from where it was last read, oldest first,
    /// and moves the mark; one chat read at a time, so that the outbox
    /// takes them in the chat's order. Returns how many were new.
    pub(super) async fn catch_up(&self, chat_id: &str) -> Result<usize, CatchUpError> {
        let _one_reader = self.reading.lock().await;
        // Read again: a notification may have moved the mark meanwhile.
        let Some(chat) = self.store.bridged_chat(chat_id).await? else {
            return Ok(0);
        };
        // A user off the allow list is not read for.
        if self.directory.local_of(&chat.teams_user).is_none() {
            return Ok(0);
        }
        let Some((_, shadow)) = self.contacts.existing_credential(&chat.remote_jid).await? else {
            return Ok(0);
        };
        let seen = chat.read_from_ms;
        let messages = self
            .graph
            .chat_messages_since(&shadow, chat_id, seen, RECONCILE_PAGES)
            .await?;
        let mut newest = seen;
        let mut queued = 0;
        // Queued oldest first, by creation (ties by id, which Graph makes from the time).
        let mut messages = messages;
        messages.sort_by(|a, b| (a.created_date_time, &a.id).cmp(&(b.created_date_time, &b.id)));
        for m in &messages {
            let at = m.created_date_time.millis();
            // The mark's own millisecond is read again: the outbox knows what it has.
            if at < seen {
                continue;
            }
            newest = newest.max(at);
            if self.take_from_teams(chat_id, m).await? {
                queued += 1;
            }
        }
        // The mark stays ten seconds behind the newest message seen: a message
        // Graph lists a little late is still read (the outbox knows the rest).
        let mark = (newest - MARK_LAG_MS).max(seen);
        if mark > seen {
            self.store.set_read_mark(chat_id, mark).await?;
        }
        Ok(queued)
    }
}
