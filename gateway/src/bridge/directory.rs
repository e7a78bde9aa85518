//! The internal allow list: the Teams users that exist to XMPP — those named
//! by UPN and the (transitive) members of the named Entra groups — resolved
//! through Graph into JIDs and refreshed. Everyone else does not exist: the
//! s2s layer answers for them as for nobody, and their presence never leaks.

use std::sync::{Arc, RwLock};

use crate::graph::GraphClient;
use crate::graph::api::User;
use crate::s2s::UserDirectory;

use super::identity::{IdentityMap, LocalPartRule};

/// What the allow list names (from `[allow]`).
#[derive(Debug, Clone, Default)]
pub struct AllowedUsers {
    pub upns: Vec<String>,
    pub groups: Vec<String>,
}

/// The resolved directory; cheap to clone and share with the s2s layer.
#[derive(Clone, Default)]
pub struct Directory {
    map: Arc<RwLock<IdentityMap>>,
    users: Arc<RwLock<Vec<User>>>,
}

impl std::fmt::Debug for Directory {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Directory").finish_non_exhaustive()
    }
}

impl Directory {
    /// Resolves the allow list now. A user who cannot be read (deleted, a
    /// typo in the list) is left out and logged; a group that cannot be read
    /// fails the refresh, so that a Graph outage never empties the directory.
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
                Err(e) => tracing::warn!(error = %e, "an allowed user cannot be read; left out"),
            }
        }
        for group in &allowed.groups {
            users.extend(graph.group_users(group).await?);
        }
        users.sort_by(|a, b| a.id.cmp(&b.id));
        users.dedup_by(|a, b| a.id == b.id);
        let map = IdentityMap::build(&users, rule);
        let count = map.by_local.len();
        *self.map.write().unwrap_or_else(|p| p.into_inner()) = map;
        *self.users.write().unwrap_or_else(|p| p.into_inner()) = users;
        Ok(count)
    }

    /// The Teams user behind a JID local part, if they exist to XMPP.
    pub fn user(&self, local: &str) -> Option<User> {
        let id = self
            .map
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .user_for(local)?
            .to_owned();
        self.users
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .iter()
            .find(|u| u.id == id)
            .cloned()
    }

    /// Local parts more than one user would get (reported, never merged).
    pub fn collisions(&self) -> Vec<String> {
        self.map
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .collisions
            .keys()
            .cloned()
            .collect()
    }
}

impl UserDirectory for Directory {
    fn exists(&self, local_part: &str) -> bool {
        self.map
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .user_for(local_part)
            .is_some()
    }
}
