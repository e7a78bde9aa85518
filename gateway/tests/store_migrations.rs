//! Migrations that move data (not only schema): what a gateway of an older
//! schema left is found, typed, by this one, on SQLite and PostgreSQL (the
//! PostgreSQL test needs Debian's `postgresql`, see tests/store_postgres.rs).
#![allow(clippy::unwrap_used, clippy::expect_used)] // a test: a panic is a failure with its reason

#[path = "common/store.rs"]
mod suite;

use suite::SCHEMA;
use xmppfed_gateway::store::{BridgedChat, Store};

/// The cursors a gateway of schema 4 left: two chats of one conversation (the
/// newer named by `chat:`), one of another, and rows that are no chat.
const SCHEMA_4_CURSORS: &str = "INSERT INTO cursors VALUES
    ('conv:19:old', 'a@x|u1'), ('conv:19:new', 'a@x|u1'), ('chat:a@x|u1', '19:new'),
    ('seen:19:new', '1700000000000'),
    ('conv:19:b', 'b@x|u2'), ('seen:19:b', '5'),
    ('conv:19:broken', 'no-separator'), ('presence', 'x');";

/// Schema 5 moves bridged chats out of the key-value cursors of schema 4
/// (`conv:{chat}` → `remote|user`, `chat:{conversation}` → chat, `seen:{chat}`
/// → read mark) into their own table: a store of schema 4 is set up as a
/// gateway of that version left it, and opened again.
#[tokio::test]
async fn sqlite_moves_schema_4_cursors_into_bridged_chats() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("xmppfed.db");
    drop(Store::sqlite(&path).await.unwrap());
    let conn = rusqlite::Connection::open(&path).unwrap();
    conn.execute_batch(
        "DROP TABLE bridged_chats;
         DROP INDEX shadow_accounts_object_id;
         DELETE FROM schema_version WHERE version = 5;
         CREATE TABLE cursors (key TEXT PRIMARY KEY, value TEXT NOT NULL);",
    )
    .unwrap();
    conn.execute_batch(SCHEMA_4_CURSORS).unwrap();
    drop(conn);
    finds_the_chats_of_schema_4(&Store::sqlite(&path).await.unwrap()).await;
}

/// The same on PostgreSQL, its schema 4 as migrations 1–4 made it.
#[tokio::test]
async fn postgres_moves_schema_4_cursors_into_bridged_chats() {
    let test = "postgres_moves_schema_4_cursors_into_bridged_chats";
    let Some(pg) = suite::postgres(test, &Default::default()) else {
        return;
    };
    let config = pg.create_database("schema4").unwrap();
    drop(Store::postgres(&config).await.unwrap());
    pg.psql(
        "schema4",
        &format!(
            r#"DROP TABLE bridged_chats;
               DROP INDEX shadow_accounts_object_id;
               DELETE FROM schema_version WHERE version = 5;
               CREATE TABLE cursors (key TEXT COLLATE "C" NOT NULL CONSTRAINT cursors_pk PRIMARY KEY,
                   value TEXT NOT NULL);
               {SCHEMA_4_CURSORS}
               INSERT INTO cursors VALUES ('seen:19:old', 'not a number');"#
        ),
    )
    .unwrap();
    finds_the_chats_of_schema_4(&Store::postgres(&config).await.unwrap()).await;
}

async fn finds_the_chats_of_schema_4(store: &Store) {
    assert_eq!(store.schema_version().await.unwrap(), SCHEMA);
    let chat = |id: &str, remote: &str, user: &str, mark: i64| BridgedChat {
        chat_id: id.to_owned(),
        remote_jid: remote.to_owned(),
        teams_user: user.to_owned(),
        read_from_ms: mark,
    };
    assert_eq!(
        store.bridged_chats().await.unwrap(),
        [
            chat("19:b", "b@x", "u2", 5),
            chat("19:new", "a@x", "u1", 1_700_000_000_000),
            chat("19:old", "a@x", "u1", 0),
        ],
        "a row without a separator is not a conversation"
    );
    assert_eq!(
        store.chat_between("a@x", "u1").await.unwrap().as_deref(),
        Some("19:new"),
        "the chat the conversation named"
    );
}
