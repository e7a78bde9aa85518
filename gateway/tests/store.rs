//! The store conformance suite (tests/common/store.rs) on SQLite and SQL
//! Server: every backend must pass it. SQLite runs always. SQL Server runs
//! when XMPPFED_TEST_MSSQL holds an ADO.NET connection string of a SQL
//! Server 2022 whose login may create databases: each test creates an empty
//! database of its own (`xmppfed_test_<random>`) through `master`, and drops
//! it at the end, passed or failed. PostgreSQL's: tests/store_postgres.rs.
#![allow(clippy::unwrap_used, clippy::expect_used)] // a test: a panic is a failure with its reason

use std::future::Future;
use std::panic::AssertUnwindSafe;

use futures::FutureExt;
use tokio::net::TcpStream;
use tokio_util::compat::{Compat, TokioAsyncWriteCompatExt};
use xmppfed_config::{SecretRef, StoreConfig};
use xmppfed_gateway::store::{OutboxItem, OutboxPayload, Store, ToTeams, now};

#[path = "common/store.rs"]
mod suite;

use suite::{SCHEMA, conformance, find_left_behind, leave_behind, refused_as_too_new};

#[tokio::test]
async fn sqlite_conforms() {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::sqlite(&dir.path().join("nested/xmppfed.db"))
        .await
        .unwrap();
    conformance(&store).await;
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
        assert_eq!(b.schema_version().await.unwrap(), SCHEMA);
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
