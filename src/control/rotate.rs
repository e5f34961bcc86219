//! Rotation of mTLS client identities: the certificate, key and CA files of every `[[mtls]]`
//! entry are watched (their directories, so a Kubernetes Secret's `..data` swap counts), and
//! a change reloads the identities of the entries whose files changed.
//!
//! A replacement that loads is put in force for new connections at once, and the pools are
//! dropped so no connection keeps presenting the old identity. A replacement that does not
//! load — garbage, a key that no longer matches, a file caught half-written — keeps the old
//! identity serving; the error is logged with its file and shown in `GET /v1/mtls` until a
//! good replacement comes.

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::SystemTime;

use notify::RecommendedWatcher;

use crate::egress::tls::{load_identity, MtlsEntry, MtlsTable};
use crate::egress::{EgressClient, Snapshot, SnapshotHandle};
use crate::util::sync::lock;
use crate::util::watch::watch_files;

/// Watches the identity files of the `[[mtls]]` table in force.
pub struct Rotator {
    /// The snapshot in force: a rotation stores one with the same policy and new identities.
    snapshot: SnapshotHandle,
    /// Every egress client: their pools go, so no connection keeps the old identity.
    egress: Vec<Arc<EgressClient>>,
    /// The last failed load per entry pattern, until a good one.
    errors: Mutex<HashMap<String, (String, SystemTime)>>,
    /// Dropping it stops the watch; replaced when the table's files change.
    watcher: Mutex<Option<RecommendedWatcher>>,
}

impl Rotator {
    pub fn new(snapshot: SnapshotHandle, egress: Vec<Arc<EgressClient>>) -> Arc<Self> {
        Arc::new(Rotator {
            snapshot,
            egress,
            errors: Mutex::default(),
            watcher: Mutex::default(),
        })
    }

    /// The table in force.
    pub fn table(&self) -> Arc<MtlsTable> {
        self.snapshot.load().identities.clone()
    }

    /// The last failed load of `pattern`'s files, if it has not been fixed since.
    pub fn error(&self, pattern: &str) -> Option<(String, SystemTime)> {
        lock(&self.errors).get(pattern).cloned()
    }

    /// Watches the files of `table` (the one just put in force), instead of the last one's.
    pub fn watch(self: &Arc<Self>, table: &MtlsTable) -> anyhow::Result<()> {
        let files: Vec<PathBuf> = table
            .entries()
            .iter()
            .flat_map(|e| {
                [e.spec.client_cert.clone(), e.spec.client_key.clone()]
                    .into_iter()
                    .chain(e.spec.ca.clone())
            })
            .collect();
        let watcher = if files.is_empty() {
            None
        } else {
            let rotator = Arc::downgrade(self);
            Some(watch_files(&files, move || {
                if let Some(rotator) = rotator.upgrade() {
                    rotator.rotate();
                }
            })?)
        };
        lock(&self.errors).clear();
        *lock(&self.watcher) = watcher;
        Ok(())
    }

    /// Reloads every entry's identity; puts the table in force if any changed. Blocking.
    pub fn rotate(&self) {
        let current = self.table();
        let now = SystemTime::now();
        let mut changed = false;
        let mut entries = Vec::with_capacity(current.entries().len());
        for entry in current.entries() {
            let pattern = entry.spec.pattern.to_string();
            match load_identity(&entry.spec, now) {
                Ok(identity) => {
                    lock(&self.errors).remove(&pattern);
                    if identity.certificate != entry.identity.certificate || files_changed(entry) {
                        tracing::info!(
                            mtls = %pattern,
                            subject = %identity.certificate.subject,
                            sha256 = %identity.certificate.sha256,
                            "client certificate rotated; new connections present it"
                        );
                        changed = true;
                        entries.push(MtlsEntry {
                            spec: entry.spec.clone(),
                            identity: Arc::new(identity),
                        });
                        continue;
                    }
                }
                Err(err) => {
                    tracing::error!(
                        mtls = %pattern,
                        file = %err.path().display(),
                        error = %err,
                        "replacement client identity does not load; the old one keeps serving"
                    );
                    lock(&self.errors).insert(pattern, (err.to_string(), now));
                }
            }
            entries.push(entry.clone());
        }
        if changed {
            let rotated = MtlsTable::new(entries);
            // A reload may have swapped in other entries while the files were read: only an
            // entry whose spec is still in force takes its rotated identity.
            self.snapshot.rcu(|now| Snapshot {
                policy: now.policy.clone(),
                identities: Arc::new(now.identities.with_identities_of(&rotated)),
                origins: now.origins.clone(),
            });
            for egress in &self.egress {
                egress.reset_pool();
            }
        }
    }
}

/// Whether a file of the entry was written since its identity was loaded: a new CA bundle
/// does not show in the client certificate's fingerprint.
fn files_changed(entry: &MtlsEntry) -> bool {
    let spec = &entry.spec;
    [&spec.client_cert, &spec.client_key]
        .into_iter()
        .chain(spec.ca.as_ref())
        .any(|file| {
            std::fs::metadata(file)
                .and_then(|m| m.modified())
                .is_ok_and(|modified| modified > entry.identity.loaded_at)
        })
}
