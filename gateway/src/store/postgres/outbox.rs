//! The outbox: enqueue with de-duplication, due entries, delivery and retry.
//!
//! A dedupe key is known while its message is queued (`outbox_dedupe`, a
//! unique index) or once delivered (`delivered`, its primary key), and
//! delivery moves it from one to the other in one statement. READ COMMITTED
//! throughout; what each multi-step write relies on:
//! - `enqueue` is a transaction: an insert that does nothing on a queued key
//!   (`ON CONFLICT DO NOTHING` waits for a racing insert or delete of the
//!   same key to commit, then decides on what stands), then a fresh read of
//!   `delivered`. The insert's own `NOT EXISTS` reads a snapshot from before
//!   the statement: a delivery committed while the insert waited for the
//!   delivered row's delete is not in it, and the second statement, a newer
//!   snapshot, sees it and rolls the insert back. Two replicas enqueueing one
//!   key: the unique index lets one in.
//! - `delivered` deletes the row and records its key in one statement (a
//!   data-modifying CTE), so no reader sees the key in neither table.

use tokio_postgres::Row;

use super::{FORGET_BATCH, PgError, PostgresStore, with_connection};
use crate::store::{Epoch, OutboxRow, StoreError, now};

const ENQUEUE: &str = "INSERT INTO outbox (direction, conversation, dedupe_key, payload, attempts, next_attempt_at, expires_at)
     SELECT $1::text, $2::text, $3::text, $4::text, $5::bigint, $6::bigint, $7::bigint
     WHERE NOT EXISTS (SELECT 1 FROM delivered WHERE dedupe_key = $3::text)
     ON CONFLICT (dedupe_key) DO NOTHING
     RETURNING seq";

const DELIVERED: &str = "SELECT EXISTS (SELECT 1 FROM delivered WHERE dedupe_key = $1)";

impl PostgresStore {
    pub async fn enqueue(&self, item: &OutboxRow) -> Result<Option<i64>, StoreError> {
        with_connection!(self, |c| {
            let tx = c.transaction().await?;
            let insert = tx.prepare_cached(ENQUEUE).await?;
            let inserted = tx
                .query_opt(
                    &insert,
                    &[
                        &item.direction,
                        &item.conversation,
                        &item.dedupe_key,
                        &item.payload,
                        &item.attempts,
                        &item.next_attempt_at,
                        &item.expires_at,
                    ],
                )
                .await?;
            let Some(row) = inserted else {
                tx.rollback().await?;
                return Ok(None);
            };
            let seq: i64 = row.try_get(0)?;
            let delivered = tx.prepare_cached(DELIVERED).await?;
            let known: bool = tx
                .query_one(&delivered, &[&item.dedupe_key])
                .await?
                .try_get(0)?;
            if known {
                tx.rollback().await?;
                return Ok(None);
            }
            tx.commit().await?;
            Ok(Some(seq))
        })
    }

    pub async fn is_known(&self, dedupe_key: &str) -> Result<bool, StoreError> {
        let known = self
            .query_opt(
                "SELECT EXISTS (SELECT 1 FROM outbox WHERE dedupe_key = $1)
                     OR EXISTS (SELECT 1 FROM delivered WHERE dedupe_key = $1)",
                &[&dedupe_key],
                |r| r.try_get(0),
            )
            .await?;
        Ok(known.unwrap_or(false))
    }

    pub async fn due(&self, at: Epoch, limit: i64) -> Result<Vec<OutboxRow>, StoreError> {
        // The head of each conversation (outbox_conversation's order), if it is due.
        self.query(
            "SELECT seq, direction, conversation, dedupe_key, payload, attempts, next_attempt_at, expires_at
             FROM (SELECT DISTINCT ON (conversation)
                          seq, direction, conversation, dedupe_key, payload, attempts, next_attempt_at, expires_at
                   FROM outbox ORDER BY conversation, seq) AS heads
             WHERE next_attempt_at <= $1
             ORDER BY seq LIMIT $2",
            &[&at, &limit.max(0)],
            outbox_row,
        )
        .await
    }

    pub async fn delivered(&self, seq: i64) -> Result<(), StoreError> {
        self.execute(
            "WITH gone AS (DELETE FROM outbox WHERE seq = $1 RETURNING dedupe_key)
             INSERT INTO delivered (dedupe_key, at) SELECT dedupe_key, $2 FROM gone
             ON CONFLICT (dedupe_key) DO NOTHING",
            &[&seq, &now()],
        )
        .await
        .map(drop)
    }

    pub async fn forget_delivered(&self, before: Epoch) -> Result<u64, StoreError> {
        let mut forgotten = 0;
        loop {
            let n = self
                .execute(
                    "DELETE FROM delivered WHERE dedupe_key IN
                        (SELECT dedupe_key FROM delivered WHERE at < $1 LIMIT $2)",
                    &[&before, &FORGET_BATCH],
                )
                .await?;
            forgotten += n;
            if n < FORGET_BATCH as u64 {
                return Ok(forgotten);
            }
        }
    }

    pub async fn retry_later(&self, seq: i64, next_attempt_at: Epoch) -> Result<(), StoreError> {
        self.execute(
            "UPDATE outbox SET attempts = attempts + 1, next_attempt_at = $1 WHERE seq = $2",
            &[&next_attempt_at, &seq],
        )
        .await
        .map(drop)
    }
}

fn outbox_row(r: &Row) -> Result<OutboxRow, PgError> {
    Ok(OutboxRow {
        seq: r.try_get(0)?,
        direction: r.try_get(1)?,
        conversation: r.try_get(2)?,
        dedupe_key: r.try_get(3)?,
        payload: r.try_get(4)?,
        attempts: r.try_get(5)?,
        next_attempt_at: r.try_get(6)?,
        expires_at: r.try_get(7)?,
    })
}
