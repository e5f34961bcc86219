//! Recent denials across replicas: each replica upserts the rows that changed since its
//! last flush ([`FLUSH_INTERVAL`]) — never a database write per request — and a reader
//! merges every other replica's rows with its own fresh ones. Rows older than
//! [`KEPT_FOR`] go, and each replica keeps at most [`MAX_ENTRIES`] rows. A replica that
//! refused nothing since its last flush does not touch the database.

use std::sync::Arc;
use std::time::Duration;

use super::{Database, DbError};
use crate::policy::denials::{merge_rows, DenialBook, Key, Row, Seen, MAX_ENTRIES};

/// How often a replica writes its changed rows.
pub const FLUSH_INTERVAL: Duration = Duration::from_secs(2);
/// Rows not seen for this long are deleted.
const KEPT_FOR: Duration = Duration::from_secs(24 * 3600);

pub struct SharedDenials {
    db: Arc<Database>,
}

impl SharedDenials {
    pub fn new(db: Arc<Database>) -> SharedDenials {
        SharedDenials { db }
    }

    /// Writes this replica's rows seen at or after `since_ms`, and trims the table.
    /// Nothing is written when nothing changed; the table is trimmed with every write that
    /// is made.
    pub async fn flush(
        &self,
        book: &DenialBook,
        since_ms: u64,
        now_ms: u64,
    ) -> Result<usize, DbError> {
        let rows = book.rows(since_ms);
        if rows.is_empty() {
            return Ok(0);
        }
        let replica = self.db.replica().to_string();
        let cutoff = now_ms.saturating_sub(KEPT_FOR.as_millis() as u64) as i64;
        let written = rows.len();
        self.db
            .run(async |client| {
                let tx = client.transaction().await?;
                let upsert = tx
                    .prepare(
                        "INSERT INTO egressd_denials (replica, fix_key, count, first_seen, last_seen, reasons, examples, functions, redirected_from)
                         VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9)
                         ON CONFLICT (replica, fix_key) DO UPDATE SET
                           count = EXCLUDED.count, first_seen = EXCLUDED.first_seen,
                           last_seen = EXCLUDED.last_seen, reasons = EXCLUDED.reasons,
                           examples = EXCLUDED.examples, functions = EXCLUDED.functions,
                           redirected_from = EXCLUDED.redirected_from",
                    )
                    .await?;
                for (key, row) in &rows {
                    let strings = |list: &[Box<str>]| list.iter().map(|s| s.to_string()).collect::<Vec<String>>();
                    let reasons: Vec<String> = row.reasons().into_iter().map(|s| s.code().to_string()).collect();
                    tx.execute(
                        &upsert,
                        &[
                            &replica,
                            &key.encode(),
                            &(row.count as i64),
                            &(row.first_seen as i64),
                            &(row.last_seen as i64),
                            &reasons,
                            &strings(&row.examples),
                            &strings(&row.functions),
                            &strings(&row.redirected_from),
                        ],
                    )
                    .await?;
                }
                tx.execute("DELETE FROM egressd_denials WHERE last_seen < $1", &[&cutoff])
                    .await?;
                tx.execute(
                    "DELETE FROM egressd_denials WHERE replica = $1 AND fix_key IN (
                         SELECT fix_key FROM egressd_denials WHERE replica = $1
                         ORDER BY last_seen DESC OFFSET $2)",
                    &[&replica, &(MAX_ENTRIES as i64)],
                )
                .await?;
                tx.commit().await
            })
            .await?;
        Ok(written)
    }

    /// Every replica's rows seen at or after `since_ms`, this replica's from `book` (fresher
    /// than its last flush), merged by key.
    pub async fn merged(
        &self,
        book: &DenialBook,
        since_ms: u64,
    ) -> Result<Vec<(Key, Row)>, DbError> {
        let replica = self.db.replica().to_string();
        let others = self
            .db
            .run(async |client| {
                client
                    .query(
                        "SELECT fix_key, count, first_seen, last_seen, reasons, examples, functions, redirected_from
                         FROM egressd_denials WHERE replica <> $1 AND last_seen >= $2",
                        &[&replica, &(since_ms as i64)],
                    )
                    .await
            })
            .await?;
        let boxed = |list: Vec<String>| list.into_iter().map(String::into_boxed_str).collect();
        let theirs = others.into_iter().filter_map(|r| {
            let key = Key::decode(r.get::<_, &str>(0))?;
            let reasons: Vec<String> = r.get(4);
            let mut row =
                Row::default().with_reasons(reasons.iter().filter_map(|c| Seen::from_code(c)));
            row.count = r.get::<_, i64>(1) as u64;
            row.first_seen = r.get::<_, i64>(2) as u64;
            row.last_seen = r.get::<_, i64>(3) as u64;
            row.examples = boxed(r.get(5));
            row.functions = boxed(r.get(6));
            row.redirected_from = boxed(r.get(7));
            Some((key, row))
        });
        let parts: Vec<(Key, Row)> = book.rows(since_ms).into_iter().chain(theirs).collect();
        Ok(merge_rows(parts, MAX_ENTRIES + Seen::all().count()))
    }

    /// Flushes every [`FLUSH_INTERVAL`] until the process ends; a failed flush is retried
    /// whole at the next one.
    pub async fn keep_flushing(self: Arc<Self>, book: Arc<crate::metrics::Metrics>) {
        let mut since = 0;
        loop {
            tokio::time::sleep(FLUSH_INTERVAL).await;
            let now = crate::util::time::now_ms();
            match self.flush(&book.denials, since, now).await {
                // Rows seen during the flush are written again next time.
                Ok(_) => since = now.saturating_sub(FLUSH_INTERVAL.as_millis() as u64),
                Err(err) => {
                    tracing::debug!(error = %err, "recent denials not written to the shared state; retried");
                }
            }
        }
    }
}
