//! What the store tests share: the conformance suite every backend must
//! pass, what a store must keep across a restart, and the throw-away
//! PostgreSQL server of the PostgreSQL tests (tests/store.rs,
//! tests/store_postgres.rs, tests/store_migrations.rs include this file).

#![allow(dead_code)] // each test file uses part of it

use xmppfed_e2e::postgres::{Postgres, PostgresOptions};
use xmppfed_gateway::store::{
    BridgedChat, Contact, Epoch, OutboxItem, OutboxPayload, ShadowAccount, Store, StoreError,
    StoredSubscription, ToTeams, now,
};

/// The schema version this gateway writes.
pub const SCHEMA: i64 = 5;

/// Every behaviour of the store, on an empty store.
pub async fn conformance(store: &Store) {
    assert_eq!(store.schema_version().await.unwrap(), SCHEMA);

    leases(store).await;
    bridged_chats(store).await;
    subscriptions(store).await;
    notification_queue(store).await;
    shadow_accounts(store).await;
    contacts(store).await;
    outbox(store).await;
    dedupe_keys(store).await;
    key_order(store).await;
}

async fn leases(store: &Store) {
    // Leases: one holder at a time, renewed by it, free once given up or lapsed.
    assert!(store.hold_lease("bridge", "pod-a", 60).await.unwrap());
    assert!(!store.hold_lease("bridge", "pod-b", 60).await.unwrap());
    assert!(
        store.hold_lease("bridge", "pod-a", 60).await.unwrap(),
        "renewed"
    );
    assert!(
        store.hold_lease("other", "pod-b", 60).await.unwrap(),
        "leases are per name"
    );
    store.release_lease("bridge", "pod-b").await.unwrap();
    assert!(
        !store.hold_lease("bridge", "pod-b", 60).await.unwrap(),
        "only the holder gives it up"
    );
    store.release_lease("bridge", "pod-a").await.unwrap();
    assert!(store.hold_lease("bridge", "pod-b", 1).await.unwrap());
    tokio::time::sleep(std::time::Duration::from_millis(2100)).await;
    assert!(
        store.hold_lease("bridge", "pod-a", 60).await.unwrap(),
        "a lapsed lease is taken"
    );
    assert!(
        !store.hold_lease("bridge", "pod-b", 60).await.unwrap(),
        "and lost by its old holder"
    );
}

async fn bridged_chats(store: &Store) {
    // Bridged chats: typed, the read mark kept when a chat is named again,
    // the conversation's latest chat found.
    let chat = |id: &str, remote: &str, user: &str, mark: i64| BridgedChat {
        chat_id: id.to_owned(),
        remote_jid: remote.to_owned(),
        teams_user: user.to_owned(),
        read_from_ms: mark,
    };
    assert_eq!(store.bridged_chat("19:b").await.unwrap(), None);
    assert_eq!(store.chat_between("a@x", "u1").await.unwrap(), None);
    store
        .bridge_chat(&chat("19:b", "a@x", "u1", 100))
        .await
        .unwrap();
    store
        .bridge_chat(&chat("19:a", "b@x", "u1", 200))
        .await
        .unwrap();
    store.set_read_mark("19:b", 150).await.unwrap();
    store
        .bridge_chat(&chat("19:b", "a@x", "u1", 999))
        .await
        .unwrap();
    assert_eq!(
        store.bridged_chat("19:b").await.unwrap(),
        Some(chat("19:b", "a@x", "u1", 150)),
        "named again, its mark is kept"
    );
    assert_eq!(
        store.chat_between("a@x", "u1").await.unwrap().as_deref(),
        Some("19:b")
    );
    assert_eq!(
        store.chat_between("a@x", "u2").await.unwrap(),
        None,
        "a conversation is the pair"
    );
    assert_eq!(
        store.bridged_chats().await.unwrap(),
        [
            chat("19:a", "b@x", "u1", 200),
            chat("19:b", "a@x", "u1", 150)
        ]
    );
    store.set_read_mark("19:unknown", 1).await.unwrap();
    assert_eq!(store.bridged_chats().await.unwrap().len(), 2);
}

async fn subscriptions(store: &Store) {
    // Subscriptions.
    let sub = StoredSubscription {
        id: "s1".into(),
        resource: "/users/x/chats/getAllMessages".into(),
        change_type: "created".into(),
        as_user: Some("bob@shadow.test".into()),
        lifetime_secs: 3300,
        expires_at: 1000,
    };
    store.put_subscription(&sub).await.unwrap();
    store
        .put_subscription(&StoredSubscription {
            expires_at: 2000,
            ..sub.clone()
        })
        .await
        .unwrap();
    assert_eq!(
        store.subscriptions().await.unwrap(),
        vec![StoredSubscription {
            expires_at: 2000,
            ..sub.clone()
        }]
    );
    store.delete_subscription("s1").await.unwrap();
    assert!(store.subscriptions().await.unwrap().is_empty());
}

async fn notification_queue(store: &Store) {
    // The notification queue: claimed items come back when their lease lapses.
    for body in ["n1", "n2", "n3"] {
        store.push_notification(body).await.unwrap();
    }
    let first = store.claim_notifications(2, 60).await.unwrap();
    assert_eq!(
        first.iter().map(|n| n.body.as_str()).collect::<Vec<_>>(),
        ["n1", "n2"]
    );
    let second = store.claim_notifications(10, 0).await.unwrap();
    assert_eq!(
        second.iter().map(|n| n.body.as_str()).collect::<Vec<_>>(),
        ["n3"],
        "n1 and n2 are leased"
    );
    for n in &first {
        store.ack_notification(n.seq).await.unwrap();
    }
    let again = store.claim_notifications(10, 60).await.unwrap();
    assert_eq!(
        again.iter().map(|n| n.body.as_str()).collect::<Vec<_>>(),
        ["n3"],
        "an unacknowledged item is handed out again"
    );
    store.ack_notification(again[0].seq).await.unwrap();
    assert!(store.claim_notifications(10, 60).await.unwrap().is_empty());
}

async fn shadow_accounts(store: &Store) {
    // Shadow accounts.
    let bob = ShadowAccount {
        jid: "bob@xmpp.test".into(),
        upn: "bob.xmpp@shadow.test".into(),
        object_id: "oid-bob".into(),
        credential: vec![1, 2, 3],
        last_used: 100,
        created_at: 90,
    };
    store.put_shadow(&bob).await.unwrap();
    assert_eq!(
        store.shadow("bob@xmpp.test").await.unwrap(),
        Some(bob.clone())
    );
    assert_eq!(
        store.shadow_by_object_id("oid-bob").await.unwrap(),
        Some(bob.clone()),
        "found by its object id (a 1:1 chat's id names its members by object id)"
    );
    assert_eq!(store.shadow_by_object_id("oid-nobody").await.unwrap(), None);
    let clash = ShadowAccount {
        jid: "other@xmpp.test".into(),
        ..bob.clone()
    };
    assert!(
        matches!(store.put_shadow(&clash).await, Err(StoreError::Backend(_))),
        "two contacts never share a UPN"
    );
    // Its refresh token: kept by UPN, replaced, forgotten; none for an unknown account.
    assert_eq!(store.refresh_token(&bob.upn).await.unwrap(), None);
    store
        .set_refresh_token(&bob.upn, Some(vec![7, 7]))
        .await
        .unwrap();
    store
        .set_refresh_token(&bob.upn, Some(vec![8]))
        .await
        .unwrap();
    assert_eq!(store.refresh_token(&bob.upn).await.unwrap(), Some(vec![8]));
    store.put_shadow(&bob).await.unwrap();
    assert_eq!(
        store.refresh_token(&bob.upn).await.unwrap(),
        Some(vec![8]),
        "rewriting the account keeps its refresh token"
    );
    store
        .set_refresh_token("nobody@shadow.test", Some(vec![1]))
        .await
        .unwrap();
    assert_eq!(
        store.refresh_token("nobody@shadow.test").await.unwrap(),
        None
    );
    store.set_refresh_token(&bob.upn, None).await.unwrap();
    assert_eq!(store.refresh_token(&bob.upn).await.unwrap(), None);
    store
        .set_refresh_token(&bob.upn, Some(vec![9]))
        .await
        .unwrap();
    store.touch_shadow("bob@xmpp.test", 500).await.unwrap();
    assert!(store.unused_shadows(400).await.unwrap().is_empty());
    assert_eq!(store.unused_shadows(600).await.unwrap().len(), 1);
    store.delete_shadow("bob@xmpp.test").await.unwrap();
    assert_eq!(store.shadow("bob@xmpp.test").await.unwrap(), None);
    assert_eq!(
        store.refresh_token(&bob.upn).await.unwrap(),
        None,
        "the refresh token goes with its account"
    );
}

async fn contacts(store: &Store) {
    // Contacts.
    let c = Contact {
        teams_user: "alice@contoso.com".into(),
        remote_jid: "bob@xmpp.test".into(),
        state: "pending-in".into(),
    };
    store.put_contact(&c).await.unwrap();
    store
        .put_contact(&Contact {
            state: "subscribed".into(),
            ..c.clone()
        })
        .await
        .unwrap();
    assert_eq!(
        store.contacts_of("alice@contoso.com").await.unwrap(),
        vec![Contact {
            state: "subscribed".into(),
            ..c.clone()
        }]
    );
    let other = Contact {
        teams_user: "carol@contoso.com".into(),
        remote_jid: "dave@xmpp.test".into(),
        state: "to".into(),
    };
    store.put_contact(&other).await.unwrap();
    assert_eq!(
        store.contacts().await.unwrap(),
        vec![
            Contact {
                state: "subscribed".into(),
                ..c.clone()
            },
            other.clone()
        ]
    );
    store
        .delete_contact("carol@contoso.com", "dave@xmpp.test")
        .await
        .unwrap();
    store
        .delete_contact("alice@contoso.com", "bob@xmpp.test")
        .await
        .unwrap();
    assert!(
        store
            .contacts_of("alice@contoso.com")
            .await
            .unwrap()
            .is_empty()
    );
}

async fn outbox(store: &Store) {
    // The outbox: once per dedupe key, in order per conversation, retries.
    let t = now();
    let item = |key: &str, conversation: &str| OutboxItem {
        seq: 0,
        conversation: conversation.into(),
        dedupe_key: key.into(),
        payload: OutboxPayload::ToTeams(ToTeams {
            remote: "alice@xmpp.example".into(),
            remote_full: "alice@xmpp.example/phone".into(),
            user_id: "bob-id".into(),
            local: "bob".into(),
            body: format!("payload {key}"),
            id: Some(key.into()),
            receipt: true,
        }),
        attempts: 0,
        next_attempt_at: t,
        expires_at: t + 3600,
    };
    let a1 = store
        .enqueue(&item("a1", "alice|bob"))
        .await
        .unwrap()
        .unwrap();
    let _a2 = store
        .enqueue(&item("a2", "alice|bob"))
        .await
        .unwrap()
        .unwrap();
    let c1 = store
        .enqueue(&item("c1", "carol|bob"))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(
        store.enqueue(&item("a1", "alice|bob")).await.unwrap(),
        None,
        "a duplicate is not queued twice"
    );
    assert!(store.is_known("a1").await.unwrap());
    assert!(!store.is_known("never").await.unwrap());
    // A retried message keeps its count of attempts.
    let retried = store
        .enqueue(&OutboxItem {
            attempts: 3,
            ..item("r1", "retried|conv")
        })
        .await
        .unwrap()
        .unwrap();
    let r1 = store.due(t, 10).await.unwrap();
    let r1 = r1.iter().find(|i| i.seq == retried).unwrap();
    assert_eq!(r1.attempts, 3);
    store.delivered(retried).await.unwrap();
    let due = due_keys(store, t).await;
    assert_eq!(due, ["a1", "c1"], "one per conversation, oldest first");
    store.retry_later(a1, t + 30).await.unwrap();
    let due = due_keys(store, t).await;
    assert_eq!(due, ["c1"], "a2 waits behind a1");
    let later = store.due(t + 30, 10).await.unwrap();
    assert_eq!((later[0].dedupe_key.as_str(), later[0].attempts), ("a1", 1));
    assert_eq!(
        later[0].payload,
        item("a1", "alice|bob").payload,
        "the entry reads back as it was written"
    );
    store.delivered(a1).await.unwrap();
    store.expire(c1).await.unwrap();
    let due: Vec<String> = store
        .due(t + 30, 10)
        .await
        .unwrap()
        .into_iter()
        .map(|i| i.dedupe_key)
        .collect();
    assert_eq!(due, ["a2"]);
    assert_eq!(
        store.enqueue(&item("a1", "alice|bob")).await.unwrap(),
        None,
        "a delivered message is not queued again"
    );
}

async fn dedupe_keys(store: &Store) {
    // Old dedupe keys are forgotten, recent ones kept.
    assert_eq!(store.forget_delivered(now() - 3600).await.unwrap(), 0);
    assert!(store.is_known("a1").await.unwrap());
    assert_eq!(
        store.forget_delivered(now() + 1).await.unwrap(),
        3,
        "r1 and a1 (delivered) and c1 (given up on)"
    );
    assert!(!store.is_known("a1").await.unwrap() && !store.is_known("c1").await.unwrap());
    assert!(
        store.is_known("a2").await.unwrap(),
        "still queued: not a dedupe key to forget"
    );
}

async fn key_order(store: &Store) {
    // Keys compare and sort by code point, case-sensitively, whatever the
    // database's locale: "B" < "a" < "b" < "ä" (a linguistic order would put
    // "a" first, and fold "B" next to "b").
    let user = "order@contoso.com";
    for jid in ["b@x", "ä@x", "B@x", "a@x"] {
        let contact = Contact {
            teams_user: user.into(),
            remote_jid: jid.into(),
            state: "to".into(),
        };
        store.put_contact(&contact).await.unwrap();
    }
    let order: Vec<String> = store
        .contacts_of(user)
        .await
        .unwrap()
        .into_iter()
        .map(|c| c.remote_jid)
        .collect();
    assert_eq!(order, ["B@x", "a@x", "b@x", "ä@x"], "code point order");
    assert!(
        store
            .contacts_of("ORDER@contoso.com")
            .await
            .unwrap()
            .is_empty(),
        "keys are case-sensitive"
    );
    for jid in ["b@x", "ä@x", "B@x", "a@x"] {
        store.delete_contact(user, jid).await.unwrap();
    }
}

/// What a store must still hold after a restart (`find_left_behind`).
pub async fn leave_behind(store: &Store) {
    store
        .bridge_chat(&BridgedChat {
            chat_id: "19:k".into(),
            remote_jid: "r@x".into(),
            teams_user: "u".into(),
            read_from_ms: 7,
        })
        .await
        .unwrap();
    store.push_notification("kept").await.unwrap();
}

pub async fn find_left_behind(store: &Store) {
    assert_eq!(
        store.schema_version().await.unwrap(),
        SCHEMA,
        "migrations run once"
    );
    assert_eq!(
        store
            .bridged_chat("19:k")
            .await
            .unwrap()
            .unwrap()
            .read_from_ms,
        7
    );
    assert_eq!(
        store.claim_notifications(10, 60).await.unwrap()[0].body,
        "kept"
    );
}

/// A store whose schema (version 99) is newer than this gateway must not open.
pub fn refused_as_too_new(opened: Result<Store, StoreError>) {
    match opened {
        Err(StoreError::TooNew {
            found: 99,
            supported: SCHEMA,
        }) => {}
        Err(other) => panic!("unexpected error: {other}"),
        Ok(_) => panic!("a newer schema must be refused"),
    }
}

// PostgreSQL ---------------------------------------------------------------------

/// Whether the PostgreSQL tests must run (CI installs the server and sets
/// `XMPPFED_TEST_POSTGRES=required`): then a server that cannot start fails
/// the test instead of skipping it.
pub fn postgres_required() -> bool {
    std::env::var("XMPPFED_TEST_POSTGRES").is_ok_and(|v| v == "required")
}

/// A throw-away PostgreSQL server, or `None` after saying why the test skips.
pub fn postgres(test: &str, options: &PostgresOptions) -> Option<Postgres> {
    match Postgres::start(options) {
        Ok(server) => Some(server),
        Err(why) => {
            assert!(
                !postgres_required(),
                "{test}: XMPPFED_TEST_POSTGRES=required but PostgreSQL cannot be started: {why:#}"
            );
            println!("skipped: {test} needs PostgreSQL ({why:#})");
            None
        }
    }
}

/// The dedupe keys of the messages due at `t`, in order.
async fn due_keys(store: &Store, t: Epoch) -> Vec<String> {
    store
        .due(t, 10)
        .await
        .unwrap()
        .into_iter()
        .map(|i| i.dedupe_key)
        .collect()
}
