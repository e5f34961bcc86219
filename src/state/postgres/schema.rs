//! The database schema: embedded, versioned migrations, applied at start under an advisory
//! lock so that replicas starting together apply each one once. A schema newer than this
//! binary knows is refused before anything is written: an older egressd must not run
//! against tables it does not understand.

use super::DbError;

/// One schema change.
pub struct Migration {
    pub version: i32,
    pub name: &'static str,
    pub sql: &'static str,
}

/// Every migration, in order. Append; never edit one that has shipped.
pub const MIGRATIONS: &[Migration] = &[
    Migration {
        version: 1,
        name: "schedules, run ledger, activation times, shared allowlist",
        sql: include_str!("migrations/0001_shared_state.sql"),
    },
    Migration {
        version: 2,
        name: "secret store",
        sql: include_str!("migrations/0002_secrets.sql"),
    },
    Migration {
        version: 3,
        name: "recent denials",
        sql: include_str!("migrations/0003_denials.sql"),
    },
];

/// The schema version this binary writes.
pub fn latest() -> i32 {
    MIGRATIONS.last().map_or(0, |m| m.version)
}

/// `pg_advisory_lock` key: "egressd" in ASCII, then 1.
const MIGRATION_LOCK: i64 = 0x6567_7265_7373_6401;

/// A schema problem before it knows which database it is about.
#[derive(Debug)]
pub enum SchemaError {
    Pg(tokio_postgres::Error),
    Newer { found: i32 },
}

impl SchemaError {
    pub fn at(self, target: &str) -> DbError {
        match self {
            SchemaError::Pg(err) => DbError::from_pg(target, err),
            SchemaError::Newer { found } => DbError::SchemaNewer {
                found,
                known: latest(),
            },
        }
    }
}

impl From<tokio_postgres::Error> for SchemaError {
    fn from(err: tokio_postgres::Error) -> Self {
        SchemaError::Pg(err)
    }
}

/// The version the database is at; 0 when it has no egressd schema. Reads only.
pub async fn version(client: &tokio_postgres::Client) -> Result<i32, tokio_postgres::Error> {
    let exists: bool = client
        .query_one("SELECT to_regclass('egressd_schema') IS NOT NULL", &[])
        .await?
        .get(0);
    if !exists {
        return Ok(0);
    }
    let row = client
        .query_one("SELECT coalesce(max(version), 0) FROM egressd_schema", &[])
        .await?;
    Ok(row.get(0))
}

/// Brings the schema to [`latest`], each migration in its own transaction, under a session
/// advisory lock held on this (dedicated) connection. Returns the versions applied.
pub async fn migrate(client: &mut tokio_postgres::Client) -> Result<Vec<i32>, SchemaError> {
    client
        .execute("SELECT pg_advisory_lock($1)", &[&MIGRATION_LOCK])
        .await?;
    let result = migrate_locked(client).await;
    // Dropping the connection would release it too; say so explicitly when it is alive.
    let _ = client
        .execute("SELECT pg_advisory_unlock($1)", &[&MIGRATION_LOCK])
        .await;
    result
}

async fn migrate_locked(client: &mut tokio_postgres::Client) -> Result<Vec<i32>, SchemaError> {
    let found = version(client).await?;
    if found > latest() {
        return Err(SchemaError::Newer { found });
    }
    let mut applied = Vec::new();
    for migration in MIGRATIONS.iter().filter(|m| m.version > found) {
        let tx = client.transaction().await?;
        tx.batch_execute(
            "CREATE TABLE IF NOT EXISTS egressd_schema (
                 version     integer PRIMARY KEY,
                 name        text NOT NULL,
                 applied_at  timestamptz NOT NULL DEFAULT now()
             )",
        )
        .await?;
        tx.batch_execute(migration.sql).await?;
        tx.execute(
            "INSERT INTO egressd_schema (version, name) VALUES ($1, $2)",
            &[&migration.version, &migration.name],
        )
        .await?;
        tx.commit().await?;
        tracing::info!(
            version = migration.version,
            name = migration.name,
            "database schema migrated"
        );
        applied.push(migration.version);
    }
    Ok(applied)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn migrations_are_numbered_one_by_one() {
        for (i, migration) in MIGRATIONS.iter().enumerate() {
            assert_eq!(migration.version, i as i32 + 1, "{}", migration.name);
        }
    }
}
