//! The contact relationships the gateway owns for its domain (RFC 6121 §3):
//! for each Teams user (by Entra object id) and remote bare JID, whether the
//! contact receives the Teams user's presence (`from`), whether the Teams user
//! receives the contact's (`to`), and whether we asked for that (`pending-out`).
//! Written to the store before memory, so a restart loses none; held in
//! memory, indexed both ways, because presence fan-out reads it constantly.

use std::collections::{HashMap, HashSet};
use std::sync::{Arc, RwLock};

use crate::store::{Contact, Store, StoreError};

/// One relationship's state.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Subscription {
    /// The contact is subscribed to the Teams user's presence.
    pub from: bool,
    /// The Teams user is subscribed to the contact's presence.
    pub to: bool,
    /// We asked the contact for their presence and have no answer yet.
    pub pending_out: bool,
}

impl Subscription {
    /// The stored form: RFC 6121's names (`none`, `from`, `to`, `both`), with
    /// `+pending-out` when a request of ours is outstanding.
    pub fn encode(&self) -> String {
        let base = match (self.from, self.to) {
            (false, false) => "none",
            (true, false) => "from",
            (false, true) => "to",
            (true, true) => "both",
        };
        if self.pending_out {
            format!("{base}+pending-out")
        } else {
            base.to_owned()
        }
    }

    pub fn decode(stored: &str) -> Self {
        let (base, pending) = match stored.strip_suffix("+pending-out") {
            Some(base) => (base, true),
            None => (stored, false),
        };
        Subscription {
            from: matches!(base, "from" | "both"),
            to: matches!(base, "to" | "both"),
            pending_out: pending,
        }
    }

    pub fn is_none(&self) -> bool {
        !self.from && !self.to && !self.pending_out
    }
}

#[derive(Default)]
struct Index {
    /// Teams user id → remote bare JID → state.
    by_user: HashMap<String, HashMap<String, Subscription>>,
    /// Remote bare JID → Teams users with any relationship to it.
    by_remote: HashMap<String, HashSet<String>>,
}

/// The relationships, in the store and in memory; cheap to clone.
#[derive(Clone)]
pub struct Roster {
    store: Arc<Store>,
    index: Arc<RwLock<Index>>,
}

impl Roster {
    /// Reads every relationship from the store.
    pub async fn load(store: Arc<Store>) -> Result<Self, StoreError> {
        let mut index = Index::default();
        for Contact {
            teams_user,
            remote_jid,
            state,
        } in store.contacts().await?
        {
            let sub = Subscription::decode(&state);
            if sub.is_none() {
                continue;
            }
            index
                .by_remote
                .entry(remote_jid.clone())
                .or_default()
                .insert(teams_user.clone());
            index
                .by_user
                .entry(teams_user)
                .or_default()
                .insert(remote_jid, sub);
        }
        Ok(Self {
            store,
            index: Arc::new(RwLock::new(index)),
        })
    }

    fn read(&self) -> std::sync::RwLockReadGuard<'_, Index> {
        self.index.read().unwrap_or_else(|p| p.into_inner())
    }

    pub fn get(&self, user: &str, remote: &str) -> Subscription {
        self.read()
            .by_user
            .get(user)
            .and_then(|m| m.get(remote))
            .copied()
            .unwrap_or_default()
    }

    /// Records a new state: in the store first (a relationship we answered
    /// for must survive a crash), then in memory. `none` removes it.
    pub async fn set(&self, user: &str, remote: &str, sub: Subscription) -> Result<(), StoreError> {
        if sub.is_none() {
            self.store.delete_contact(user, remote).await?;
        } else {
            self.store
                .put_contact(&Contact {
                    teams_user: user.to_owned(),
                    remote_jid: remote.to_owned(),
                    state: sub.encode(),
                })
                .await?;
        }
        let mut index = self.index.write().unwrap_or_else(|p| p.into_inner());
        if sub.is_none() {
            if let Some(m) = index.by_user.get_mut(user) {
                m.remove(remote);
                if m.is_empty() {
                    index.by_user.remove(user);
                }
            }
            if let Some(users) = index.by_remote.get_mut(remote) {
                users.remove(user);
                if users.is_empty() {
                    index.by_remote.remove(remote);
                }
            }
        } else {
            index
                .by_user
                .entry(user.to_owned())
                .or_default()
                .insert(remote.to_owned(), sub);
            index
                .by_remote
                .entry(remote.to_owned())
                .or_default()
                .insert(user.to_owned());
        }
        Ok(())
    }

    /// The contacts that receive a Teams user's presence.
    pub fn subscribers(&self, user: &str) -> Vec<String> {
        self.read()
            .by_user
            .get(user)
            .map(|m| {
                m.iter()
                    .filter(|(_, s)| s.from)
                    .map(|(jid, _)| jid.clone())
                    .collect()
            })
            .unwrap_or_default()
    }

    /// The Teams users whose presence someone receives: the ones worth polling.
    pub fn watched_users(&self) -> Vec<String> {
        self.read()
            .by_user
            .iter()
            .filter(|(_, m)| m.values().any(|s| s.from))
            .map(|(user, _)| user.clone())
            .collect()
    }

    /// Whether any Teams user receives this contact's presence.
    pub fn is_watched_remote(&self, remote: &str) -> bool {
        let index = self.read();
        index.by_remote.get(remote).is_some_and(|users| {
            users.iter().any(|u| {
                index
                    .by_user
                    .get(u)
                    .and_then(|m| m.get(remote))
                    .is_some_and(|s| s.to)
            })
        })
    }

    /// Whether any Teams user has any relationship with this contact.
    pub fn has_any(&self, remote: &str) -> bool {
        self.read().by_remote.contains_key(remote)
    }

    /// (Teams user, contact) for every relationship where we receive the
    /// contact's presence: probed at startup so their presence resumes.
    pub fn watched_remotes(&self) -> Vec<(String, String)> {
        self.read()
            .by_user
            .iter()
            .flat_map(|(user, m)| {
                m.iter()
                    .filter(|(_, s)| s.to)
                    .map(move |(jid, _)| (user.clone(), jid.clone()))
            })
            .collect()
    }

    /// Relationships in memory (for the benchmark's memory figure and metrics).
    pub fn len(&self) -> usize {
        self.read().by_user.values().map(HashMap::len).sum()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn states_round_trip() {
        for from in [false, true] {
            for to in [false, true] {
                for pending_out in [false, true] {
                    let s = Subscription {
                        from,
                        to,
                        pending_out,
                    };
                    assert_eq!(Subscription::decode(&s.encode()), s, "{}", s.encode());
                }
            }
        }
        assert_eq!(
            Subscription {
                from: true,
                to: false,
                pending_out: true
            }
            .encode(),
            "from+pending-out"
        );
    }

    #[tokio::test]
    async fn relationships_survive_a_reload_and_are_indexed_both_ways() {
        let dir = tempfile::tempdir().unwrap();
        let store = Arc::new(Store::sqlite(&dir.path().join("db")).await.unwrap());
        let roster = Roster::load(store.clone()).await.unwrap();
        let both = Subscription {
            from: true,
            to: true,
            pending_out: false,
        };
        roster.set("u1", "bob@x.test", both).await.unwrap();
        roster
            .set(
                "u2",
                "bob@x.test",
                Subscription {
                    from: true,
                    ..Default::default()
                },
            )
            .await
            .unwrap();
        roster
            .set(
                "u2",
                "eve@x.test",
                Subscription {
                    pending_out: true,
                    ..Default::default()
                },
            )
            .await
            .unwrap();
        let reloaded = Roster::load(store).await.unwrap();
        assert_eq!(reloaded.get("u1", "bob@x.test"), both);
        assert_eq!(reloaded.subscribers("u2"), ["bob@x.test"]);
        let mut watched = reloaded.watched_users();
        watched.sort();
        assert_eq!(watched, ["u1", "u2"]);
        assert!(reloaded.is_watched_remote("bob@x.test"));
        assert!(!reloaded.is_watched_remote("eve@x.test"));
        assert_eq!(
            reloaded.watched_remotes(),
            [("u1".to_owned(), "bob@x.test".to_owned())]
        );
        reloaded
            .set("u1", "bob@x.test", Subscription::default())
            .await
            .unwrap();
        assert!(reloaded.subscribers("u1").is_empty());
        assert_eq!(reloaded.len(), 2);
        assert!(!reloaded.is_watched_remote("bob@x.test"));
    }
}
