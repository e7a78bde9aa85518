//! The store on PostgreSQL: the conformance suite (tests/common/store.rs),
//! restarts of the store and of the server under it, TLS, a wrong password,
//! and replicas racing on one database. Each test starts a throw-away server
//! of its own (xmppfed_e2e::postgres, from Debian's `postgresql` package);
//! without one the tests skip, saying so, unless
//! `XMPPFED_TEST_POSTGRES=required`, when they fail.
#![allow(clippy::unwrap_used, clippy::expect_used)] // a test: a panic is a failure with its reason

#[path = "common/store.rs"]
mod suite;

use std::collections::BTreeSet;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use futures::future::join_all;
use xmppfed_config::{PostgresConfig, PostgresSslMode, SecretRef, StoreConfig};
use xmppfed_e2e::postgres::PostgresOptions;
use xmppfed_gateway::store::{OutboxItem, OutboxPayload, Store, ToTeams, now};

use suite::{SCHEMA, conformance, find_left_behind, leave_behind, postgres, refused_as_too_new};

fn plain() -> PostgresOptions {
    PostgresOptions::default()
}

#[tokio::test]
async fn postgres_conforms() {
    let Some(pg) = postgres("postgres_conforms", &plain()) else {
        return;
    };
    let config = pg.create_database("conformance").unwrap();
    let store = Store::postgres(&config).await.unwrap();
    conformance(&store).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_keeps_everything_across_a_restart_and_refuses_a_newer_schema() {
    let test = "postgres_keeps_everything_across_a_restart_and_refuses_a_newer_schema";
    let Some(mut pg) = postgres(test, &plain()) else {
        return;
    };
    let config = pg.create_database("restart").unwrap();
    {
        let store = Store::open(&StoreConfig::Postgres(config.clone()))
            .await
            .unwrap();
        assert!(matches!(store, Store::Postgres(_)));
        leave_behind(&store).await;
    }
    tokio::task::block_in_place(|| pg.restart()).unwrap();
    find_left_behind(&Store::postgres(&config).await.unwrap()).await;

    pg.psql(
        "restart",
        "INSERT INTO schema_version (version, applied_at) VALUES (99, 0)",
    )
    .unwrap();
    refused_as_too_new(Store::postgres(&config).await);
}

/// verify-full: the server's certificate is checked against `ca_file` (or
/// the system's roots, which do not hold the test CA). The login over TLS is
/// SCRAM-SHA-256-PLUS: PostgreSQL offers it on TLS sessions and
/// tokio-postgres takes it whenever the stream gives a channel binding, so a
/// wrong `tls-server-end-point` would have failed it.
#[tokio::test]
async fn postgres_verifies_the_servers_certificate() {
    let test = "postgres_verifies_the_servers_certificate";
    let options = PostgresOptions {
        tls: true,
        ..plain()
    };
    let Some(pg) = postgres(test, &options) else {
        return;
    };
    let config = pg.create_database("tls").unwrap();
    assert_eq!(config.sslmode, PostgresSslMode::VerifyFull);
    let store = Store::postgres(&config).await.unwrap();
    assert_eq!(store.schema_version().await.unwrap(), SCHEMA);
    let encrypted = pg
        .psql(
            "tls",
            "SELECT count(*) FROM pg_stat_ssl JOIN pg_stat_activity USING (pid)
             WHERE datname = 'tls' AND application_name = 'xmppfed-gateway' AND ssl",
        )
        .unwrap();
    assert!(
        encrypted.parse::<u32>().unwrap() >= 1,
        "the store's sessions use TLS"
    );

    let error = Store::postgres(&PostgresConfig {
        ca_file: None,
        ..config.clone()
    })
    .await
    .err()
    .expect("a certificate no system root signed is refused");
    let message = error.to_string();
    assert!(
        message.contains("invalid peer certificate: UnknownIssuer")
            && message.contains("system's trust roots")
            && message.contains(&format!("postgres@127.0.0.1:{}/tls", pg.port)),
        "{message}"
    );
}

#[tokio::test]
async fn postgres_errors_name_the_server_never_the_password() {
    let test = "postgres_errors_name_the_server_never_the_password";
    let Some(pg) = postgres(test, &plain()) else {
        return;
    };
    let config = pg.create_database("password").unwrap();
    let real = std::fs::read_to_string(pg.password_file()).unwrap();
    let wrong = pg.dir().join("wrong-password");
    std::fs::write(&wrong, "s3cret-wrong-pw\n").unwrap();
    let error = Store::open(&StoreConfig::Postgres(PostgresConfig {
        password: SecretRef::File(wrong),
        ..config.clone()
    }))
    .await
    .err()
    .expect("a wrong password is refused");
    let message = error.to_string();
    assert!(
        message.contains("28P01")
            && message.contains("password authentication failed")
            && message.contains(&format!("postgres@127.0.0.1:{}/password", pg.port)),
        "{message}"
    );
    assert!(
        !format!("{message} {error:?}").contains("s3cret"),
        "{message}"
    );

    let unset = "XMPPFED_TEST_POSTGRES_PASSWORD_NEVER_SET";
    let error = Store::open(&StoreConfig::Postgres(PostgresConfig {
        password: SecretRef::Env(unset.into()),
        ..config.clone()
    }))
    .await
    .err()
    .expect("an error");
    let message = error.to_string();
    assert!(
        message.contains(unset) && message.contains("PostgreSQL password"),
        "{message}"
    );

    // Nobody listens there: the address is named, the password is not.
    let port = xmppfed_e2e::prosody::free_port().unwrap();
    let error = Store::postgres(&PostgresConfig { port, ..config })
        .await
        .err()
        .expect("an error");
    let message = format!("{error} {error:?}");
    assert!(message.contains(&format!("127.0.0.1:{port}")), "{message}");
    assert!(!message.contains(real.trim()), "{message}");
}

/// Two replicas on one database (each a store with its own pool).
async fn replicas(test: &str) -> Option<(xmppfed_e2e::postgres::Postgres, Store, Store)> {
    let pg = postgres(test, &plain())?;
    let config = pg.create_database("replicas").unwrap();
    let a = Store::postgres(&config).await.unwrap();
    let b = Store::postgres(&config).await.unwrap();
    Some((pg, a, b))
}

/// Claims a few at a time until nothing is left to claim; the seqs taken.
async fn claim_all(store: &Store) -> Vec<i64> {
    let mut taken = Vec::new();
    loop {
        let batch = store.claim_notifications(5, 600).await.unwrap();
        if batch.is_empty() {
            return taken;
        }
        taken.extend(batch.iter().map(|n| n.seq));
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_replicas_never_claim_one_notification_twice() {
    let Some((_pg, a, b)) = replicas("postgres_replicas_never_claim_one_notification_twice").await
    else {
        return;
    };
    let mut pushed = BTreeSet::new();
    for i in 0..300 {
        pushed.insert(a.push_notification(&format!("n{i}")).await.unwrap());
    }
    // Four claimers on each replica at once.
    let claimers = [&a, &b]
        .into_iter()
        .flat_map(|store| (0..4).map(move |_| claim_all(store)));
    let claimed = join_all(claimers).await;
    let mut seen = BTreeSet::new();
    for seq in claimed.iter().flatten() {
        assert!(seen.insert(*seq), "notification {seq} was claimed twice");
    }
    assert_eq!(seen, pushed, "every notification was claimed");
}

fn message(key: &str) -> OutboxItem {
    let t = now();
    OutboxItem {
        seq: 0,
        conversation: format!("conv-{key}"),
        dedupe_key: key.into(),
        payload: OutboxPayload::ToTeams(ToTeams {
            remote: "a@x.example".into(),
            remote_full: "a@x.example/r".into(),
            user_id: "u".into(),
            local: "bob".into(),
            body: key.into(),
            id: Some(key.into()),
            receipt: false,
        }),
        attempts: 0,
        next_attempt_at: t,
        expires_at: t + 3600,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_replicas_enqueue_a_dedupe_key_once() {
    let Some((pg, a, b)) = replicas("postgres_replicas_enqueue_a_dedupe_key_once").await else {
        return;
    };
    // The same key from four callers on each replica at once: one is queued.
    for round in 0..30 {
        let key = format!("queued-{round}");
        let item = message(&key);
        let tries = [&a, &b]
            .into_iter()
            .flat_map(|store| (0..4).map(|_| store.enqueue(&item)));
        let queued = join_all(tries)
            .await
            .into_iter()
            .filter(|r| r.as_ref().unwrap().is_some())
            .count();
        assert_eq!(queued, 1, "{key} queued once");
    }
    // Delivered by one replica while the other enqueues it again: it is
    // queued or delivered, never both, so never sent twice.
    for round in 0..30 {
        let key = format!("delivered-{round}");
        let item = message(&key);
        let seq = a.enqueue(&item).await.unwrap().unwrap();
        let (done, again) = tokio::join!(a.delivered(seq), b.enqueue(&item));
        done.unwrap();
        assert_eq!(again.unwrap(), None, "{key} was delivered, or still queued");
    }
    // The same with the window held open: a trigger keeps each delivery's
    // transaction (its key deleted from the queue, not yet committed as
    // delivered) open while the other replica enqueues the key, which waits
    // on the queue's unique index, then must find it delivered.
    pg.psql(
        "replicas",
        "CREATE FUNCTION slow_delivery() RETURNS trigger LANGUAGE plpgsql
            AS $$ BEGIN PERFORM pg_sleep(0.4); RETURN NULL; END $$;
         CREATE TRIGGER slow_delivery AFTER INSERT ON delivered
            FOR EACH ROW EXECUTE FUNCTION slow_delivery();",
    )
    .unwrap();
    for round in 0..3 {
        let key = format!("slow-{round}");
        let item = message(&key);
        let seq = a.enqueue(&item).await.unwrap().unwrap();
        let late = async {
            tokio::time::sleep(Duration::from_millis(150)).await;
            b.enqueue(&item).await
        };
        let (done, again) = tokio::join!(a.delivered(seq), late);
        done.unwrap();
        assert_eq!(
            again.unwrap(),
            None,
            "{key} was delivered while enqueued again"
        );
        assert!(a.is_known(&key).await.unwrap());
    }
    let due = a.due(now() + 1, 1000).await.unwrap();
    assert_eq!(due.len(), 30, "the queued ones alone are due");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_replicas_hold_a_lease_one_at_a_time() {
    let Some((_pg, a, b)) = replicas("postgres_replicas_hold_a_lease_one_at_a_time").await else {
        return;
    };
    let mut winners = BTreeSet::new();
    for round in 0..30 {
        let (held_a, held_b) = tokio::join!(
            a.hold_lease("bridge", "pod-a", 5),
            b.hold_lease("bridge", "pod-b", 5)
        );
        let (held_a, held_b) = (held_a.unwrap(), held_b.unwrap());
        assert!(
            held_a != held_b,
            "round {round}: exactly one holds the lease (pod-a {held_a}, pod-b {held_b})"
        );
        let (winner, store) = if held_a { ("pod-a", &a) } else { ("pod-b", &b) };
        winners.insert(winner);
        // Every third round the holder gives it up: both race for a free lease.
        if round % 3 == 2 {
            store.release_lease("bridge", winner).await.unwrap();
        }
    }
    println!("lease holders seen: {winners:?}");
    // A lapsed lease (the store's clock counts whole seconds): one takes it.
    a.hold_lease("lapsing", "pod-a", 1).await.unwrap();
    tokio::time::sleep(Duration::from_millis(2100)).await;
    let (held_a, held_b) = tokio::join!(
        a.hold_lease("lapsing", "pod-a2", 60),
        b.hold_lease("lapsing", "pod-b", 60)
    );
    assert!(
        held_a.unwrap() != held_b.unwrap(),
        "one takes a lapsed lease"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_replicas_migrate_a_fresh_database_together() {
    let test = "postgres_replicas_migrate_a_fresh_database_together";
    let Some(pg) = postgres(test, &plain()) else {
        return;
    };
    let config = pg.create_database("fresh").unwrap();
    let opened = join_all((0..4).map(|_| Store::postgres(&config))).await;
    for store in opened {
        assert_eq!(store.unwrap().schema_version().await.unwrap(), SCHEMA);
    }
    assert_eq!(
        pg.psql("fresh", "SELECT count(*) FROM schema_version")
            .unwrap(),
        SCHEMA.to_string(),
        "each migration ran once"
    );
}

/// Pushes notifications until told to stop: the seqs acknowledged, and how
/// many calls failed.
async fn write_until(store: Arc<Store>, stop: Arc<AtomicBool>) -> (Vec<i64>, u32) {
    let (mut acknowledged, mut failed) = (Vec::new(), 0);
    while !stop.load(Ordering::Relaxed) {
        match store.push_notification("load").await {
            Ok(seq) => acknowledged.push(seq),
            Err(_) => failed += 1,
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    (acknowledged, failed)
}

/// The server is restarted (then killed with SIGKILL and started again)
/// while a store is open and writing: calls fail meanwhile, then the same
/// store serves again (its pool reconnects), and every write it
/// acknowledged is there.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_store_recovers_when_the_server_restarts_under_it() {
    let test = "postgres_store_recovers_when_the_server_restarts_under_it";
    let Some(mut pg) = postgres(test, &plain()) else {
        return;
    };
    let config = pg.create_database("recover").unwrap();
    let store = Arc::new(Store::postgres(&config).await.unwrap());
    leave_behind(&store).await;
    for (how, crash) in [("restarted", false), ("killed", true)] {
        let stop = Arc::new(AtomicBool::new(false));
        let writer = tokio::spawn(write_until(store.clone(), stop.clone()));
        tokio::time::sleep(Duration::from_millis(300)).await;
        let started = Instant::now();
        tokio::task::block_in_place(|| {
            if crash {
                pg.kill()?;
            }
            pg.restart()
        })
        .unwrap();
        let back = Instant::now() + Duration::from_secs(20);
        loop {
            match store.schema_version().await {
                Ok(version) => break assert_eq!(version, SCHEMA),
                Err(e) if Instant::now() < back => {
                    println!("{how}: not yet: {e}");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
                Err(e) => panic!("{how}: the store did not recover: {e}"),
            }
        }
        tokio::time::sleep(Duration::from_millis(300)).await;
        stop.store(true, Ordering::Relaxed);
        let (acknowledged, failed) = writer.await.unwrap();
        println!(
            "{how}: serving again {:?} after the restart began; {} writes acknowledged, {failed} failed",
            started.elapsed(),
            acknowledged.len()
        );
        let stored: BTreeSet<i64> = pg
            .psql("recover", "SELECT seq FROM notifications")
            .unwrap()
            .lines()
            .map(|l| l.parse().unwrap())
            .collect();
        let lost: Vec<&i64> = acknowledged
            .iter()
            .filter(|s| !stored.contains(s))
            .collect();
        assert!(lost.is_empty(), "{how}: acknowledged writes lost: {lost:?}");
        assert!(
            acknowledged.len() > 20,
            "{how}: writes went on after the restart"
        );
    }
    find_left_behind(&store).await;
}
