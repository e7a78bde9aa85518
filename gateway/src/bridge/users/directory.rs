//! The internal allow list: the Teams users that exist to XMPP — those named
//! by UPN and the (transitive) members of the named Entra groups — resolved
//! through Graph into JIDs and refreshed. Everyone else does not exist: the
//! s2s layer answers for them as for nobody, and their presence never leaks.

use std::collections::HashMap;
use std::sync::{Arc, RwLock};

use crate::graph::GraphClient;
use crate::graph::api::User;
use crate::s2s::UserDirectory;

use crate::bridge::users::identity::{IdentityMap, LocalPartRule};

/// What the allow list names (from `[allow]`).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct AllowedUsers {
    pub upns: Vec<String>,
    pub groups: Vec<String>,
}

/// The names of the allow list, replaceable at run time (a reloaded
/// configuration): a replacement wakes the refresh that resolves them.
#[derive(Debug, Clone, Default)]
pub struct AllowedNames {
    names: Arc<RwLock<AllowedUsers>>,
    changed: Arc<tokio::sync::Notify>,
}

impl AllowedNames {
    pub fn new(names: AllowedUsers) -> Self {
        Self {
            names: Arc::new(RwLock::new(names)),
            changed: Arc::default(),
        }
    }

    pub fn current(&self) -> AllowedUsers {
        self.names.read().unwrap_or_else(|p| p.into_inner()).clone()
    }

    /// Replaces the names and has them resolved at once.
    pub fn replace(&self, names: AllowedUsers) {
        *self.names.write().unwrap_or_else(|p| p.into_inner()) = names;
        // A permit is kept if the refresh is busy: it goes round again.
        self.changed.notify_one();
    }

    /// Resolves when the names were replaced.
    pub async fn changed(&self) {
        self.changed.notified().await;
    }
}

/// The resolved directory; cheap to clone and share with the s2s layer.
#[derive(Clone, Default)]
pub struct Directory {
    snapshot: Arc<RwLock<Snapshot>>,
}

/// One resolution of the allow list, replaced whole on refresh.
#[derive(Default)]
struct Snapshot {
    map: IdentityMap,
    /// Mapped users by object id.
    users: HashMap<String, User>,
    /// Object id → JID local part.
    local_by_id: HashMap<String, String>,
}

impl std::fmt::Debug for Directory {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Directory").finish_non_exhaustive()
    }
}

impl Directory {
    /// Resolves the allow list now. A user who cannot be read (deleted, a
    /// typo in the list) is left out and logged; a group that cannot be read,
    /// or a user whose read was throttled or failed for the moment, fails the
    /// refresh, so that a Graph outage or a throttled `$batch` item never
    /// withdraws anyone: the previous list stays in service.
    pub async fn refresh(
        &self,
        graph: &GraphClient,
        allowed: &AllowedUsers,
        rule: &LocalPartRule,
    ) -> Result<usize, crate::graph::GraphError> {
        let mut users: Vec<User> = Vec::new();
        for result in graph.get_users(&allowed.upns).await? {
            match result {
                Ok(user) => users.push(user),
                Err(e) if e.is_transient() => return Err(e),
                Err(e) => tracing::warn!(error = %e, "an allowed user cannot be read; left out"),
            }
        }
        for group in &allowed.groups {
            users.extend(graph.group_users(group).await?);
        }
        Ok(self.set(users, rule))
    }

    /// Replaces the directory with these users; returns how many got a JID.
    pub fn set(&self, mut users: Vec<User>, rule: &LocalPartRule) -> usize {
        users.sort_by(|a, b| a.id.cmp(&b.id));
        users.dedup_by(|a, b| a.id == b.id);
        let map = IdentityMap::build(&users, rule);
        let local_by_id: HashMap<String, String> = map
            .by_local
            .iter()
            .map(|(local, id)| (id.clone(), local.clone()))
            .collect();
        let users: HashMap<String, User> = users
            .into_iter()
            .filter(|u| local_by_id.contains_key(&u.id))
            .map(|u| (u.id.clone(), u))
            .collect();
        let count = users.len();
        *self.snapshot.write().unwrap_or_else(|p| p.into_inner()) = Snapshot {
            map,
            users,
            local_by_id,
        };
        count
    }

    fn read(&self) -> std::sync::RwLockReadGuard<'_, Snapshot> {
        self.snapshot.read().unwrap_or_else(|p| p.into_inner())
    }

    /// The Teams user behind a JID local part, if they exist to XMPP.
    pub fn user(&self, local: &str) -> Option<User> {
        let snapshot = self.read();
        let id = snapshot.map.user_for(local)?;
        snapshot.users.get(id).cloned()
    }

    /// The object id behind a JID local part, if they exist to XMPP.
    pub fn id_of(&self, local: &str) -> Option<String> {
        self.read().map.user_for(local).map(str::to_owned)
    }

    /// The JID local part of a Teams user (by object id), if they exist to XMPP.
    pub fn local_of(&self, id: &str) -> Option<String> {
        self.read().local_by_id.get(id).cloned()
    }

    /// Local parts more than one user would get (reported, never merged).
    pub fn collisions(&self) -> Vec<String> {
        self.read().map.collisions.keys().cloned().collect()
    }
}

impl UserDirectory for Directory {
    fn exists(&self, local_part: &str) -> bool {
        self.read().map.user_for(local_part).is_some()
    }
}
