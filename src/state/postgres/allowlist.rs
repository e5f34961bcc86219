//! The allowlist's shared half: activation times every replica agrees on, and the entries
//! added from the console or the API (merged with the config file's on every replica).
//!
//! Every change bumps `egressd_changes.version` and sends `NOTIFY egressd_state` in the
//! same transaction. A replica LISTENs, and polls the version every second as the fallback
//! ([`SharedAllowlist::version`]); when it moved, it reads the entries and times again and
//! swaps its policy. Decisions never wait for any of it: they read the policy in memory.
//!
//! **Activation times.** `egressd_activation` holds one row per pattern any replica has
//! in force. A replica that finds a pattern without a row writes `now + activation_delay`;
//! one that finds a row takes its times, so every replica has the same `active_at`. A
//! pattern a replica no longer has is marked removed (its row kept), so adding it again
//! later starts its delay over, as on one replica. The very first agreement (version 0)
//! activates every pattern at once, like the first start of a single replica.

use std::collections::HashMap;
use std::sync::Arc;

use super::{snapshot, Database, DbError};
use crate::policy::activation::Stamp;
use crate::policy::allowlist::Pattern;

/// `pg_advisory_xact_lock` key serialising changes to activation times and entries.
const ALLOWLIST_LOCK: i64 = 0x6567_7265_7373_6403;

/// The channel replicas LISTEN on.
pub const CHANNEL: &str = "egressd_state";

/// What the shared state says about the allowlist.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct SharedView {
    /// `egressd_changes.version` when read.
    pub version: i64,
    /// Entries added through the console or API, oldest first.
    pub entries: Vec<Pattern>,
    /// Agreed times of the patterns asked about (and of the entries).
    pub stamps: HashMap<Pattern, Stamp>,
}

/// Why an edit of the shared entries was refused.
#[derive(Debug, thiserror::Error)]
pub enum SharedEditError {
    #[error("{0} is on the shared allowlist already")]
    Duplicate(String),
    #[error("{0} is not on the shared allowlist")]
    NotFound(String),
    #[error("{0}")]
    Db(#[from] DbError),
}

/// The shared allowlist. Blocking methods (the reloader runs on blocking threads) run on
/// the runtime given at construction.
pub struct SharedAllowlist {
    db: Arc<Database>,
    runtime: tokio::runtime::Handle,
}

impl SharedAllowlist {
    pub fn new(db: Arc<Database>, runtime: tokio::runtime::Handle) -> SharedAllowlist {
        SharedAllowlist { db, runtime }
    }

    pub fn database(&self) -> &Arc<Database> {
        &self.db
    }

    /// The change counter: cheap enough to poll every second.
    pub fn version(&self) -> Result<i64, DbError> {
        self.runtime
            .block_on(self.db.run(async |client| version(&*client).await))
    }

    /// Agrees on the activation times of `patterns` (this replica's file entries): rows
    /// that exist are taken, missing ones are written (`now + delay`, or `now` at the very
    /// first agreement), and `removed` (patterns this replica just dropped from its file)
    /// are marked so a later add starts over. Returns the shared entries and the agreed
    /// times of `patterns` and the entries.
    pub fn agree(
        &self,
        patterns: &[Pattern],
        removed: &[Pattern],
        delay_ms: u64,
        now_ms: u64,
    ) -> Result<SharedView, DbError> {
        let texts: Vec<String> = patterns.iter().map(|p| p.to_string()).collect();
        let removed: Vec<String> = removed.iter().map(|p| p.to_string()).collect();
        self.runtime.block_on(self.db.run(async |client| {
            let tx = locked(client).await?;
            let version = version(&tx).await?;
            let now = now_ms as i64;
            let active_at = if version == 0 {
                now
            } else {
                now + delay_ms as i64
            };
            // A pattern that is also a shared entry stays in force: not marked.
            let mut changed = tx
                .execute(
                    "UPDATE egressd_activation SET removed_at = $2
                     WHERE pattern = ANY($1) AND removed_at IS NULL
                       AND pattern NOT IN (SELECT pattern FROM egressd_allowlist)",
                    &[&removed, &now],
                )
                .await?;
            changed += tx
                .execute(
                    "INSERT INTO egressd_activation (pattern, added_at, active_at)
                     SELECT unnest($1::text[]), $2, $3
                     ON CONFLICT (pattern) DO UPDATE
                     SET added_at = EXCLUDED.added_at, active_at = EXCLUDED.active_at,
                         removed_at = NULL
                     WHERE egressd_activation.removed_at IS NOT NULL",
                    &[&texts, &now, &active_at],
                )
                .await?;
            let version = match changed > 0 || version == 0 {
                true => bump(&tx).await?,
                false => version,
            };
            let view = read_view(&tx, &texts, version).await?;
            tx.commit().await?;
            Ok(view)
        }))
    }

    /// The entries and the times of `patterns` and of the entries, as they are now.
    pub fn read(&self, patterns: &[Pattern]) -> Result<SharedView, DbError> {
        let texts: Vec<String> = patterns.iter().map(|p| p.to_string()).collect();
        self.runtime.block_on(self.db.run(async |client| {
            let tx = snapshot(client).await?;
            let version = version(&tx).await?;
            let view = read_view(&tx, &texts, version).await?;
            tx.commit().await?;
            Ok(view)
        }))
    }

    /// Adds a shared entry, its activation starting now (over, if it was removed before).
    pub fn add(
        &self,
        pattern: &Pattern,
        delay_ms: u64,
        now_ms: u64,
        by: &str,
    ) -> Result<(), SharedEditError> {
        let text = pattern.to_string();
        let added = self.runtime.block_on(self.db.run(async |client| {
            let tx = locked(client).await?;
            let inserted = tx
                .execute(
                    "INSERT INTO egressd_allowlist (pattern, added_by) VALUES ($1, $2)
                     ON CONFLICT (pattern) DO NOTHING",
                    &[&text, &by],
                )
                .await?;
            if inserted == 0 {
                return Ok(false);
            }
            let now = now_ms as i64;
            // A pattern some replica has in force from its file keeps its times; otherwise
            // (new, or removed before) the delay starts now.
            tx.execute(
                "INSERT INTO egressd_activation (pattern, added_at, active_at) VALUES ($1, $2, $3)
                 ON CONFLICT (pattern) DO UPDATE
                 SET added_at = EXCLUDED.added_at, active_at = EXCLUDED.active_at, removed_at = NULL
                 WHERE egressd_activation.removed_at IS NOT NULL",
                &[&text, &now, &(now + delay_ms as i64)],
            )
            .await?;
            bump(&tx).await?;
            tx.commit().await?;
            Ok(true)
        }))?;
        match added {
            true => Ok(()),
            false => Err(SharedEditError::Duplicate(text)),
        }
    }

    /// Removes a shared entry and marks its activation row removed, so adding it again
    /// starts the delay over. A replica whose file also lists the pattern keeps it, with
    /// the times it has.
    pub fn remove(&self, pattern: &Pattern, now_ms: u64) -> Result<(), SharedEditError> {
        let text = pattern.to_string();
        let removed = self.runtime.block_on(self.db.run(async |client| {
            let tx = locked(client).await?;
            let deleted = tx
                .execute("DELETE FROM egressd_allowlist WHERE pattern = $1", &[&text])
                .await?;
            if deleted == 0 {
                return Ok(false);
            }
            tx.execute(
                "UPDATE egressd_activation SET removed_at = $2 WHERE pattern = $1",
                &[&text, &(now_ms as i64)],
            )
            .await?;
            bump(&tx).await?;
            tx.commit().await?;
            Ok(true)
        }))?;
        match removed {
            true => Ok(()),
            false => Err(SharedEditError::NotFound(text)),
        }
    }

    /// Wakes `changed` at every `NOTIFY egressd_state`, on a connection of its own,
    /// reconnecting every second while the database is away. Runs until the process ends.
    pub async fn listen(self: Arc<Self>, changed: Arc<tokio::sync::Notify>) {
        loop {
            if let Err(err) = self.listen_once(&changed).await {
                tracing::debug!(error = %err, "LISTEN connection lost; polling meanwhile");
            }
            tokio::time::sleep(std::time::Duration::from_secs(1)).await;
        }
    }

    async fn listen_once(&self, changed: &tokio::sync::Notify) -> Result<(), DbError> {
        use tokio_postgres::AsyncMessage;
        let db = &self.db;
        let (client, mut connection) = db.connect_raw().await?;
        let statement = format!("LISTEN {CHANNEL}");
        let mut listening = std::pin::pin!(client.batch_execute(&statement));
        let mut subscribed = false;
        loop {
            let message = std::future::poll_fn(|cx| {
                if !subscribed {
                    if let std::task::Poll::Ready(result) = listening.as_mut().poll(cx) {
                        subscribed = true;
                        if let Err(err) = result {
                            return std::task::Poll::Ready(Some(Err(err)));
                        }
                        // Changes made before LISTEN took effect are picked up by a poll.
                        changed.notify_one();
                    }
                }
                connection.poll_message(cx)
            })
            .await;
            match message {
                Some(Ok(AsyncMessage::Notification(_))) => changed.notify_one(),
                Some(Ok(_)) => {}
                Some(Err(err)) => return Err(db.error(err)),
                None => return Ok(()),
            }
        }
    }
}

use std::future::Future;

/// A transaction holding the allowlist lock: changes to entries and times, one at a time.
async fn locked(
    client: &mut deadpool_postgres::Object,
) -> Result<deadpool_postgres::Transaction<'_>, tokio_postgres::Error> {
    let tx = client.transaction().await?;
    tx.execute("SELECT pg_advisory_xact_lock($1)", &[&ALLOWLIST_LOCK])
        .await?;
    Ok(tx)
}

/// The change counter, `egressd_changes.version`.
async fn version(
    client: &impl deadpool_postgres::GenericClient,
) -> Result<i64, tokio_postgres::Error> {
    let row = client
        .query_one("SELECT version FROM egressd_changes WHERE id = 1", &[])
        .await?;
    Ok(row.get(0))
}

/// Bumps the change counter and notifies the other replicas (delivered at commit).
async fn bump(tx: &deadpool_postgres::Transaction<'_>) -> Result<i64, tokio_postgres::Error> {
    let row = tx
        .query_one(
            "UPDATE egressd_changes SET version = version + 1 WHERE id = 1 RETURNING version",
            &[],
        )
        .await?;
    tx.batch_execute(&format!("NOTIFY {CHANNEL}")).await?;
    Ok(row.get(0))
}

/// The shared entries, and the times of `patterns` and of the entries.
async fn read_view(
    tx: &deadpool_postgres::Transaction<'_>,
    patterns: &[String],
    version: i64,
) -> Result<SharedView, tokio_postgres::Error> {
    let entry_rows = tx
        .query(
            "SELECT pattern FROM egressd_allowlist ORDER BY added_at, pattern",
            &[],
        )
        .await?;
    let entries: Vec<Pattern> = entry_rows
        .iter()
        .filter_map(|r| Pattern::parse(r.get::<_, &str>(0)).ok())
        .collect();
    let stamp_rows = tx
        .query(
            "SELECT pattern, added_at, active_at FROM egressd_activation
             WHERE removed_at IS NULL
               AND (pattern = ANY($1) OR pattern IN (SELECT pattern FROM egressd_allowlist))",
            &[&patterns],
        )
        .await?;
    let stamps = stamp_rows
        .iter()
        .filter_map(|r| {
            let pattern = Pattern::parse(r.get::<_, &str>(0)).ok()?;
            let stamp = Stamp {
                added_at: r.get::<_, i64>(1).max(0) as u64,
                active_at: r.get::<_, i64>(2).max(0) as u64,
            };
            Some((pattern, stamp))
        })
        .collect();
    Ok(SharedView {
        version,
        entries,
        stamps,
    })
}
