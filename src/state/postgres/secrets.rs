//! The secret store in PostgreSQL: sealed values in `egressd_secrets`, the key check and a
//! change counter in the one row of `egressd_secret_store`. Every write locks that row, so
//! writes from all replicas are ordered, versions come from the database, and the counter
//! tells every replica's poll that its injected values are stale.

use std::sync::Arc;

use chrono::{DateTime, Utc};
use tokio_postgres::Row;

use super::{Database, DbError};
use crate::secrets::backend::BoxFuture;
use crate::secrets::{BackendError, Meta, SecretBackend, StoredSecret, Update, WriteError};

pub struct PgSecretBackend {
    db: Arc<Database>,
}

impl PgSecretBackend {
    pub fn new(db: Arc<Database>) -> PgSecretBackend {
        PgSecretBackend { db }
    }
}

const COLUMNS: &str = "name, sealed, created_at, updated_at, version, last_writer, is_default";

fn secret(row: &Row) -> StoredSecret {
    StoredSecret {
        key: row.get("name"),
        sealed: row.get("sealed"),
        meta: meta(row),
    }
}

fn meta(row: &Row) -> Meta {
    Meta {
        created_at: row.get::<_, DateTime<Utc>>("created_at"),
        updated_at: row.get::<_, DateTime<Utc>>("updated_at"),
        version: row.get::<_, i64>("version") as u64,
        last_writer: row.get("last_writer"),
        default: row.get("is_default"),
    }
}

fn unavailable(err: DbError) -> BackendError {
    BackendError::Unavailable(err.to_string())
}

/// Locks the store row for the rest of the transaction and bumps its revision.
async fn lock_and_bump(
    tx: &deadpool_postgres::Transaction<'_>,
) -> Result<(), tokio_postgres::Error> {
    tx.execute(
        "UPDATE egressd_secret_store SET revision = revision + 1 WHERE id = 1",
        &[],
    )
    .await
    .map(|_| ())
}

impl SecretBackend for PgSecretBackend {
    fn describe(&self) -> String {
        format!("the database {}", self.db.target())
    }

    fn open(&self, check: &str) -> BoxFuture<'_, Result<Vec<StoredSecret>, BackendError>> {
        let check = check.to_string();
        Box::pin(async move {
            let target = self.db.target().to_string();
            let opened = self
                .db
                .run(async |client| {
                    let tx = client.transaction().await?;
                    let stored: Option<String> = tx
                        .query_one(
                            "SELECT key_check FROM egressd_secret_store WHERE id = 1 FOR UPDATE",
                            &[],
                        )
                        .await?
                        .get(0);
                    match stored {
                        Some(stored) if stored != check => {
                            return Ok(Err(BackendError::WrongKey {
                                key_file: String::new(),
                                store: format!("the secret store in {target}"),
                                given: check.clone(),
                                stored,
                            }))
                        }
                        Some(_) => {}
                        None => {
                            let count: i64 = tx
                                .query_one("SELECT count(*) FROM egressd_secrets", &[])
                                .await?
                                .get(0);
                            if count > 0 {
                                return Ok(Err(BackendError::Corrupt(format!(
                                    "the secret store in {target} holds secrets but no key check; nothing was written"
                                ))));
                            }
                            tx.execute(
                                "UPDATE egressd_secret_store SET key_check = $1 WHERE id = 1",
                                &[&check],
                            )
                            .await?;
                        }
                    }
                    let rows = tx
                        .query(&format!("SELECT {COLUMNS} FROM egressd_secrets"), &[])
                        .await?;
                    tx.commit().await?;
                    Ok(Ok(rows.iter().map(secret).collect()))
                })
                .await
                .map_err(unavailable)?;
            opened
        })
    }

    fn revision(&self) -> BoxFuture<'_, Result<u64, BackendError>> {
        Box::pin(async move {
            self.db
                .run(async |client| {
                    let row = client
                        .query_one(
                            "SELECT revision FROM egressd_secret_store WHERE id = 1",
                            &[],
                        )
                        .await?;
                    Ok(row.get::<_, i64>(0) as u64)
                })
                .await
                .map_err(unavailable)
        })
    }

    fn all(&self) -> BoxFuture<'_, Result<(u64, Vec<StoredSecret>), BackendError>> {
        Box::pin(async move {
            self.db
                .run(async |client| {
                    let tx = super::snapshot(client).await?;
                    let revision: i64 = tx
                        .query_one(
                            "SELECT revision FROM egressd_secret_store WHERE id = 1",
                            &[],
                        )
                        .await?
                        .get(0);
                    let rows = tx
                        .query(&format!("SELECT {COLUMNS} FROM egressd_secrets"), &[])
                        .await?;
                    tx.commit().await?;
                    Ok((revision as u64, rows.iter().map(secret).collect()))
                })
                .await
                .map_err(unavailable)
        })
    }

    fn get<'a>(
        &'a self,
        key: &'a str,
    ) -> BoxFuture<'a, Result<Option<StoredSecret>, BackendError>> {
        Box::pin(async move {
            self.db
                .run(async |client| {
                    let row = client
                        .query_opt(
                            &format!("SELECT {COLUMNS} FROM egressd_secrets WHERE name = $1"),
                            &[&key],
                        )
                        .await?;
                    Ok(row.as_ref().map(secret))
                })
                .await
                .map_err(unavailable)
        })
    }

    fn create(&self, new: StoredSecret, limit: usize) -> BoxFuture<'_, Result<(), WriteError>> {
        Box::pin(async move {
            let result = self
                .db
                .run(async |client| {
                    let tx = client.transaction().await?;
                    lock_and_bump(&tx).await?;
                    let count: i64 = tx
                        .query_one("SELECT count(*) FROM egressd_secrets", &[])
                        .await?
                        .get(0);
                    let exists = tx
                        .query_opt("SELECT 1 FROM egressd_secrets WHERE name = $1", &[&new.key])
                        .await?
                        .is_some();
                    if exists {
                        return Ok(Err(WriteError::Exists(new.key.clone())));
                    }
                    if count as usize >= limit {
                        return Ok(Err(WriteError::Full(limit)));
                    }
                    tx.execute(
                        "INSERT INTO egressd_secrets (name, sealed, created_at, updated_at, version, last_writer, is_default)
                         VALUES ($1, $2, $3, $4, $5, $6, $7)",
                        &[
                            &new.key,
                            &new.sealed,
                            &new.meta.created_at,
                            &new.meta.updated_at,
                            &(new.meta.version as i64),
                            &new.meta.last_writer,
                            &new.meta.default,
                        ],
                    )
                    .await?;
                    tx.commit().await?;
                    Ok(Ok(()))
                })
                .await
                .map_err(|e| WriteError::Backend(unavailable(e)))?;
            result
        })
    }

    fn update<'a>(
        &'a self,
        key: &'a str,
        update: Update,
    ) -> BoxFuture<'a, Result<Meta, WriteError>> {
        Box::pin(async move {
            let expected = update.expected.map(|v| v as i64);
            let result = self
                .db
                .run(async |client| {
                    let tx = client.transaction().await?;
                    lock_and_bump(&tx).await?;
                    let current = tx
                        .query_opt(
                            "SELECT version FROM egressd_secrets WHERE name = $1",
                            &[&key],
                        )
                        .await?;
                    let Some(current) = current.map(|r| r.get::<_, i64>(0)) else {
                        return Ok(Err(WriteError::NotFound(key.to_string())));
                    };
                    if expected.is_some_and(|v| v != current) {
                        return Ok(Err(WriteError::VersionMismatch {
                            key: key.to_string(),
                            current: current as u64,
                        }));
                    }
                    let row = tx
                        .query_one(
                            &format!(
                                "UPDATE egressd_secrets
                                 SET sealed = $2, version = version + 1, updated_at = $3, last_writer = $4
                                 WHERE name = $1 RETURNING {COLUMNS}"
                            ),
                            &[&key, &update.sealed, &update.at, &update.writer],
                        )
                        .await?;
                    tx.commit().await?;
                    Ok(Ok(meta(&row)))
                })
                .await
                .map_err(|e| WriteError::Backend(unavailable(e)))?;
            result
        })
    }

    fn delete<'a>(&'a self, key: &'a str) -> BoxFuture<'a, Result<Meta, WriteError>> {
        Box::pin(async move {
            let result = self
                .db
                .run(async |client| {
                    let tx = client.transaction().await?;
                    lock_and_bump(&tx).await?;
                    let row = tx
                        .query_opt(
                            &format!(
                                "DELETE FROM egressd_secrets WHERE name = $1 RETURNING {COLUMNS}"
                            ),
                            &[&key],
                        )
                        .await?;
                    tx.commit().await?;
                    Ok(row
                        .as_ref()
                        .map(meta)
                        .ok_or_else(|| WriteError::NotFound(key.to_string())))
                })
                .await
                .map_err(|e| WriteError::Backend(unavailable(e)))?;
            result
        })
    }

    fn rekey<'a>(
        &'a self,
        old_check: &'a str,
        new_check: &'a str,
        resealed: Vec<(String, Vec<u8>)>,
    ) -> BoxFuture<'a, Result<(), WriteError>> {
        Box::pin(async move {
            let result = self
                .db
                .run(async |client| {
                    let tx = client.transaction().await?;
                    lock_and_bump(&tx).await?;
                    let stored: Option<String> = tx
                        .query_one(
                            "SELECT key_check FROM egressd_secret_store WHERE id = 1",
                            &[],
                        )
                        .await?
                        .get(0);
                    let count: i64 = tx
                        .query_one("SELECT count(*) FROM egressd_secrets", &[])
                        .await?
                        .get(0);
                    if stored.as_deref() != Some(old_check) || count as usize != resealed.len() {
                        return Ok(Err(WriteError::Backend(
                            BackendError::changed_during_rekey(),
                        )));
                    }
                    for (name, sealed) in &resealed {
                        let updated = tx
                            .execute(
                                "UPDATE egressd_secrets SET sealed = $2 WHERE name = $1",
                                &[name, sealed],
                            )
                            .await?;
                        if updated != 1 {
                            return Ok(Err(WriteError::Backend(
                                BackendError::changed_during_rekey(),
                            )));
                        }
                    }
                    tx.execute(
                        "UPDATE egressd_secret_store SET key_check = $1 WHERE id = 1",
                        &[&new_check],
                    )
                    .await?;
                    tx.commit().await?;
                    Ok(Ok(()))
                })
                .await
                .map_err(|e| WriteError::Backend(unavailable(e)))?;
            result
        })
    }
}
