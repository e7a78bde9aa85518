//! The store conformance suite: every backend must pass it. SQLite runs
//! always. SQL Server runs when XMPPFED_TEST_MSSQL holds an ADO.NET
//! connection string of a SQL Server 2022 whose login may create databases:
//! each test creates an empty database of its own (`xmppfed_test_<random>`)
//! through `master`, and drops it at the end, passed or failed.
#![allow(clippy::unwrap_used, clippy::expect_used)] // a test: a panic is a failure with its reason

use std::future::Future;
use std::panic::AssertUnwindSafe;

use futures::FutureExt;
use tokio::net::TcpStream;
use tokio_util::compat::{Compat, TokioAsyncWriteCompatExt};
use xmppfed_config::{SecretRef, StoreConfig};
use xmppfed_gateway::store::{
    BridgedChat, Contact, OutboxItem, OutboxPayload, ShadowAccount, Store, StoreError,
    StoredSubscription, ToTeams, now,
};

/// The schema version this gateway writes.
const SCHEMA: i64 = 5;

async fn conformance(store: &Store) {
    assert_eq!(store.schema_version().await.unwrap(), SCHEMA);

    leases(store).await;
    bridged_chats(store).await;
    subscriptions(store).await;
    notification_queue(store).await;
    shadow_accounts(store).await;
    contacts(store).await;
    outbox(store).await;
    dedupe_keys(store).await;
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
    let due: Vec<String> = store
        .due(t, 10)
        .await
        .unwrap()
        .into_iter()
        .map(|i| i.dedupe_key)
        .collect();
    assert_eq!(due, ["a1", "c1"], "one per conversation, oldest first");
    store.retry_later(a1, t + 30).await.unwrap();
    let due: Vec<String> = store
        .due(t, 10)
        .await
        .unwrap()
        .into_iter()
        .map(|i| i.dedupe_key)
        .collect();
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

#[tokio::test]
async fn sqlite_conforms() {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::sqlite(&dir.path().join("nested/xmppfed.db"))
        .await
        .unwrap();
    conformance(&store).await;
}

/// What a store must still hold after a restart (`find_left_behind`).
async fn leave_behind(store: &Store) {
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

async fn find_left_behind(store: &Store) {
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
fn refused_as_too_new(opened: Result<Store, StoreError>) {
    match opened {
        Err(StoreError::TooNew {
            found: 99,
            supported: SCHEMA,
        }) => {}
        Err(other) => panic!("unexpected error: {other}"),
        Ok(_) => panic!("a newer schema must be refused"),
    }
}

#[tokio::test]
async fn sqlite_keeps_everything_across_a_restart_and_refuses_a_newer_schema() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("xmppfed.db");
    {
        leave_behind(&Store::sqlite(&path).await.unwrap()).await;
    }
    find_left_behind(&Store::sqlite(&path).await.unwrap()).await;

    let conn = rusqlite::Connection::open(&path).unwrap();
    conn.execute(
        "INSERT INTO schema_version (version, applied_at) VALUES (99, 0)",
        [],
    )
    .unwrap();
    drop(conn);
    refused_as_too_new(Store::sqlite(&path).await);
}

/// A row no gateway of this version can read (damaged, or written by a newer
/// one) is given up on, and its conversation goes on behind it.
#[tokio::test]
async fn an_unreadable_outbox_row_does_not_hold_up_its_conversation() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("xmppfed.db");
    let store = Store::sqlite(&path).await.unwrap();
    let t = now();
    let conn = rusqlite::Connection::open(&path).unwrap();
    for (direction, key, payload) in [
        ("to-teams", "broken", "{\"remote\": 42}"),
        ("sideways", "unknown", "{}"),
    ] {
        conn.execute(
            "INSERT INTO outbox (direction, conversation, dedupe_key, payload, attempts, next_attempt_at, expires_at)
             VALUES (?1, 'conv', ?2, ?3, 0, ?4, ?5)",
            rusqlite::params![direction, key, payload, t, t + 3600],
        )
        .unwrap();
    }
    drop(conn);
    let good = OutboxItem {
        seq: 0,
        conversation: "conv".into(),
        dedupe_key: "good".into(),
        payload: OutboxPayload::ToTeams(ToTeams {
            remote: "a@x.example".into(),
            remote_full: "a@x.example/r".into(),
            user_id: "u".into(),
            local: "bob".into(),
            body: "still here".into(),
            id: None,
            receipt: false,
        }),
        attempts: 0,
        next_attempt_at: t,
        expires_at: t + 3600,
    };
    store.enqueue(&good).await.unwrap().unwrap();
    // Each call gives up on the unreadable head, then the next is the head.
    let mut delivered = Vec::new();
    for _ in 0..3 {
        delivered.extend(store.due(t, 10).await.unwrap());
    }
    assert_eq!(delivered.len(), 1, "{delivered:?}");
    assert_eq!(delivered[0].payload, good.payload);
    // Given up on like an expired entry: its key is known, so it is not queued again.
    assert!(store.is_known("broken").await.unwrap());
}

#[tokio::test]
async fn an_unwritable_path_is_a_clear_error() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("not-a-dir");
    std::fs::write(&file, "x").unwrap();
    let error = Store::sqlite(&file.join("xmppfed.db"))
        .await
        .err()
        .expect("an error");
    assert!(error.to_string().contains("not-a-dir"), "{error}");
}

#[tokio::test]
async fn open_follows_the_configuration_and_never_shows_the_connection_string() {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(&StoreConfig::Sqlite {
        path: dir.path().join("xmppfed.db"),
    })
    .await
    .unwrap();
    assert!(matches!(store, Store::Sqlite(_)));

    let unset = "XMPPFED_TEST_STORE_CONNECTION_STRING_NEVER_SET";
    let error = Store::open(&StoreConfig::Sqlserver {
        connection_string: SecretRef::Env(unset.into()),
    })
    .await
    .err()
    .expect("an error");
    assert!(error.to_string().contains(unset), "{error}");

    // Unparseable, then unreachable: neither message quotes the password.
    for connection_string in [
        "server=tcp:127.0.0.1,1;user=sa;password='s3cret-pw",
        "server=tcp:127.0.0.1,1;user=sa;password=s3cret-pw;TrustServerCertificate=true",
    ] {
        let error = Store::sqlserver(connection_string)
            .await
            .err()
            .expect("an error");
        assert!(!error.to_string().contains("s3cret"), "{error}");
    }
}

// SQL Server ---------------------------------------------------------------------

/// The connection string of the test server, or `None` (the test is skipped).
fn mssql() -> Option<String> {
    match std::env::var("XMPPFED_TEST_MSSQL") {
        Ok(s) if !s.trim().is_empty() => Some(s.trim().trim_end_matches(';').to_owned()),
        _ => {
            println!(
                "skipped: set XMPPFED_TEST_MSSQL to an ADO.NET connection string of a SQL Server 2022 \
                 (e.g. server=tcp:127.0.0.1,1433;user=sa;password=...;TrustServerCertificate=true) \
                 to run the SQL Server conformance suite"
            );
            None
        }
    }
}

async fn admin(connection_string: &str) -> tiberius::Client<Compat<TcpStream>> {
    let config = tiberius::Config::from_ado_string(connection_string).unwrap();
    let tcp = TcpStream::connect(config.get_addr()).await.unwrap();
    tcp.set_nodelay(true).unwrap();
    tiberius::Client::connect(config, tcp.compat_write())
        .await
        .unwrap()
}

/// Runs `test` against a new, empty database (given its connection string),
/// and drops the database after, even if the test failed.
async fn with_database<F, Fut>(base: &str, test: F)
where
    F: FnOnce(String) -> Fut,
    Fut: Future<Output = ()>,
{
    let mut random = [0u8; 8];
    getrandom::fill(&mut random).unwrap();
    let name = format!(
        "xmppfed_test_{}",
        random
            .iter()
            .map(|b| format!("{b:02x}"))
            .collect::<String>()
    );
    // A later `database=` wins over one in the base string.
    let mut master = admin(&format!("{base};database=master")).await;
    master
        .simple_query(format!("CREATE DATABASE [{name}]"))
        .await
        .unwrap()
        .into_results()
        .await
        .unwrap();
    let outcome = AssertUnwindSafe(test(format!("{base};database={name}")))
        .catch_unwind()
        .await;
    master
        .simple_query(format!(
            "ALTER DATABASE [{name}] SET SINGLE_USER WITH ROLLBACK IMMEDIATE; DROP DATABASE [{name}];"
        ))
        .await
        .unwrap()
        .into_results()
        .await
        .unwrap();
    if let Err(panic) = outcome {
        std::panic::resume_unwind(panic);
    }
}

#[tokio::test]
async fn sqlserver_conforms() {
    let Some(base) = mssql() else { return };
    with_database(&base, |url| async move {
        let store = Store::sqlserver(&url).await.unwrap();
        conformance(&store).await;
    })
    .await;
}

#[tokio::test]
async fn sqlserver_keeps_everything_across_a_restart_and_refuses_a_newer_schema() {
    let Some(base) = mssql() else { return };
    with_database(&base, |url| async move {
        // Two replicas starting together on an empty database migrate once.
        let (a, b) = tokio::join!(Store::sqlserver(&url), Store::sqlserver(&url));
        let (a, b) = (a.unwrap(), b.unwrap());
        assert_eq!(b.schema_version().await.unwrap(), 1);
        leave_behind(&a).await;
        drop((a, b));
        find_left_behind(&Store::sqlserver(&url).await.unwrap()).await;

        admin(&url)
            .await
            .simple_query("INSERT INTO schema_version (version, applied_at) VALUES (99, 0)")
            .await
            .unwrap()
            .into_results()
            .await
            .unwrap();
        refused_as_too_new(Store::sqlserver(&url).await);
    })
    .await;
}
