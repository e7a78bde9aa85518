//! The outbox: enqueue with de-duplication, due entries, delivery and retry.

use crate::store::{Epoch, OutboxRow, StoreError, now};

use super::{FORGET_BATCH, SqlServerStore, backend, first, int, is_duplicate, text};

impl SqlServerStore {
    pub async fn enqueue(&self, item: &OutboxRow) -> Result<Option<i64>, StoreError> {
        // The key-range locks (UPDLOCK, HOLDLOCK) keep the checked keys absent
        // until the insert commits; `outbox_dedupe` refuses a duplicate that
        // still slips through, which is then reported as one.
        let result = self
            .try_rows(
                "BEGIN TRAN;
                 INSERT INTO outbox (direction, conversation, dedupe_key, payload, attempts, next_attempt_at, expires_at)
                 OUTPUT inserted.seq
                 SELECT @P1, @P2, @P3, @P4, @P7, @P5, @P6
                 WHERE NOT EXISTS (SELECT 1 FROM outbox WITH (UPDLOCK, HOLDLOCK) WHERE dedupe_key = @P3)
                   AND NOT EXISTS (SELECT 1 FROM delivered WITH (UPDLOCK, HOLDLOCK) WHERE dedupe_key = @P3);
                 COMMIT;",
                &[
                    &item.direction.as_str(),
                    &item.conversation.as_str(),
                    &item.dedupe_key.as_str(),
                    &item.payload.as_str(),
                    &item.next_attempt_at,
                    &item.expires_at,
                    &item.attempts,
                ],
            )
            .await?;
        match result {
            Ok(rows) => rows.first().map(|r| int(r, 0)).transpose(),
            Err(e) if is_duplicate(&e) => Ok(None),
            Err(e) => Err(backend(e)),
        }
    }

    pub async fn is_known(&self, dedupe_key: &str) -> Result<bool, StoreError> {
        let rows = self
            .rows(
                "SELECT CASE WHEN EXISTS (SELECT 1 FROM outbox WHERE dedupe_key = @P1)
                          OR EXISTS (SELECT 1 FROM delivered WHERE dedupe_key = @P1)
                        THEN CAST(1 AS BIGINT) ELSE CAST(0 AS BIGINT) END",
                &[&dedupe_key],
            )
            .await?;
        Ok(rows.first().map(|r| int(r, 0)).transpose()?.unwrap_or(0) == 1)
    }

    pub async fn due(&self, at: Epoch, limit: i64) -> Result<Vec<OutboxRow>, StoreError> {
        // The head of each conversation, if it is due.
        let rows = self
            .rows(
                "SELECT TOP (@P2) seq, direction, conversation, dedupe_key, payload, attempts, next_attempt_at, expires_at
                 FROM (SELECT seq, direction, conversation, dedupe_key, payload, attempts, next_attempt_at, expires_at,
                              ROW_NUMBER() OVER (PARTITION BY conversation ORDER BY seq) AS place
                       FROM outbox) AS heads
                 WHERE place = 1 AND next_attempt_at <= @P1
                 ORDER BY seq",
                &[&at, &limit.max(0)],
            )
            .await?;
        rows.iter()
            .map(|r| {
                Ok(OutboxRow {
                    seq: int(r, 0)?,
                    direction: text(r, 1)?,
                    conversation: text(r, 2)?,
                    dedupe_key: text(r, 3)?,
                    payload: text(r, 4)?,
                    attempts: int(r, 5)?,
                    next_attempt_at: int(r, 6)?,
                    expires_at: int(r, 7)?,
                })
            })
            .collect()
    }

    pub async fn delivered(&self, seq: i64) -> Result<(), StoreError> {
        self.run(
            "BEGIN TRAN;
             INSERT INTO delivered (dedupe_key, at)
                SELECT o.dedupe_key, @P2 FROM outbox AS o WITH (UPDLOCK)
                WHERE o.seq = @P1
                  AND NOT EXISTS (SELECT 1 FROM delivered AS d WITH (UPDLOCK, HOLDLOCK)
                                  WHERE d.dedupe_key = o.dedupe_key);
             DELETE FROM outbox WHERE seq = @P1;
             COMMIT;",
            &[&seq, &now()],
        )
        .await
    }

    pub async fn forget_delivered(&self, before: Epoch) -> Result<u64, StoreError> {
        let mut forgotten = 0;
        loop {
            let rows = self
                .rows(
                    "DELETE TOP (@P2) FROM delivered WHERE at < @P1;
                     SELECT CAST(@@ROWCOUNT AS BIGINT);",
                    &[&before, &FORGET_BATCH],
                )
                .await?;
            let n = int(first(&rows)?, 0)?;
            forgotten += n as u64;
            if n < FORGET_BATCH {
                return Ok(forgotten);
            }
        }
    }

    pub async fn retry_later(&self, seq: i64, next_attempt_at: Epoch) -> Result<(), StoreError> {
        self.run(
            "UPDATE outbox SET attempts = attempts + 1, next_attempt_at = @P1 WHERE seq = @P2",
            &[&next_attempt_at, &seq],
        )
        .await
    }
}
