//! Layers unpacked ahead, in parallel. containerd prepares an image's layers one after another,
//! each on the one before; but an overlay layer's directory holds its own diff whatever lies
//! under it, so the first prepare of an image starts every layer the image lists, each streamed
//! from the node and unpacked into a snapshot of its own without a parent, a few at a time,
//! bottom first. A layer's prepare then only waits for its own unpack and commits it on its
//! parent ([`Snapshotter::commit_on`]).
//!
//! Unpacks are kept per registry, repository and digest: a layer is only ever given to a
//! prepare of the repository it was read from (with that pull's credentials, through the
//! mirror's access check). They are hidden from containerd ([`internal`]), whose garbage
//! collector removes every snapshot it does not know. An unpack nobody claims (the pull was
//! abandoned) is removed after [`UNCLAIMED_FOR`]; those a stop interrupted are removed at the
//! next start ([`sweep`]).

use std::collections::{BTreeMap, HashMap};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use shoal_seed::registry::Registry;
use tokio::sync::{Notify, Semaphore, watch};

use super::{blocking, unpack_checked, valid_digest};
use crate::error::{Error, Result};
use crate::snapshots::Snapshotter;

/// Prefix of the snapshots layers are unpacked into before they are claimed.
const STAGING: &str = "shoal-staging/";
/// The prefix an earlier version unpacked under.
const UNPACKING: &str = "shoal-unpacking/";
/// Layers unpacked at once (each also inflates: CPU).
const AT_ONCE: usize = 4;
/// How long an unpacked layer waits for its prepare.
const UNCLAIMED_FOR: Duration = Duration::from_secs(600);

/// What an unpack came to: the layer's diff id, or why not (`None`: still going).
type Outcome = Option<std::result::Result<String, String>>;

struct Staged {
    /// The snapshot it is unpacked into.
    key: String,
    done: watch::Receiver<Outcome>,
    /// Told when a prepare waits for it: it unpacks at once, without waiting for a slot.
    wanted: Arc<Notify>,
}

/// (registry, repository, digest).
type Which = (String, String, String);

/// The layers being unpacked ahead.
pub(super) struct Stager {
    layers: Mutex<HashMap<Which, Staged>>,
    slots: Arc<Semaphore>,
    next: AtomicU64,
}

impl Default for Stager {
    fn default() -> Self {
        Stager {
            layers: Mutex::default(),
            slots: Arc::new(Semaphore::new(AT_ONCE)),
            next: AtomicU64::new(1),
        }
    }
}

/// Where to read a layer: the registry client (through the node), its host and repository.
#[derive(Clone)]
pub(super) struct Source {
    pub registry: Arc<Registry>,
    pub host: String,
    pub repository: String,
}

impl Source {
    fn which(&self, digest: &str) -> Which {
        (
            self.host.clone(),
            self.repository.clone(),
            digest.to_owned(),
        )
    }
}

impl Stager {
    /// Starts unpacking each layer of `digests` not being unpacked already, in that order.
    pub(super) fn start<'a>(
        self: &Arc<Self>,
        snapshotter: &Arc<Snapshotter>,
        source: &Source,
        digests: impl IntoIterator<Item = &'a str>,
    ) {
        let mut layers = self.layers.lock().expect("staging lock");
        for digest in digests {
            let which = source.which(digest);
            if layers.contains_key(&which) || !valid_digest(digest) {
                continue;
            }
            let key = self.key(digest);
            let (tx, done) = watch::channel(None);
            let wanted = Arc::new(Notify::new());
            layers.insert(
                which.clone(),
                Staged {
                    key: key.clone(),
                    done,
                    wanted: wanted.clone(),
                },
            );
            let (this, s, source) = (self.clone(), snapshotter.clone(), source.clone());
            tokio::spawn(async move {
                let digest = &which.2;
                let outcome = this.unpack(&s, &source, digest, &key, &wanted).await;
                if outcome.is_err() {
                    this.forget(&which, &key);
                    remove(&s, &key).await;
                }
                let unpacked = outcome.is_ok();
                let _ = tx.send(Some(outcome.map_err(|e| e.to_string())));
                if unpacked {
                    tokio::time::sleep(UNCLAIMED_FOR).await;
                    if this.forget(&which, &key) {
                        tracing::info!(
                            layer = digest,
                            "a layer unpacked ahead was not claimed; removed"
                        );
                        remove(&s, &key).await;
                    }
                }
            });
        }
    }

    /// Whether `digest` from `source` is being (or was) unpacked ahead, not claimed yet.
    pub(super) fn has(&self, source: &Source, digest: &str) -> bool {
        let layers = self.layers.lock().expect("staging lock");
        layers.contains_key(&source.which(digest))
    }

    /// A name for a snapshot of `digest` made before its prepare commits it (hidden from
    /// containerd, swept at start).
    pub(super) fn key(&self, digest: &str) -> String {
        format!(
            "{STAGING}{}-{digest}",
            self.next.fetch_add(1, Ordering::Relaxed)
        )
    }

    /// Waits for the unpack of `digest` from `source`, then takes it (no other prepare gets
    /// it): the snapshot it is in and the layer's diff id. `None`: it is not being unpacked,
    /// or another prepare took it. Dropped while waiting, the unpack stays for another.
    pub(super) async fn claim(
        &self,
        source: &Source,
        digest: &str,
    ) -> Option<Result<(String, String)>> {
        let which = source.which(digest);
        let (key, mut done) = {
            let layers = self.layers.lock().expect("staging lock");
            let staged = layers.get(&which)?;
            staged.wanted.notify_one();
            (staged.key.clone(), staged.done.clone())
        };
        let outcome = match done.wait_for(Option::is_some).await {
            Ok(outcome) => outcome.clone(),
            Err(_) => {
                // The unpack's task ended without a word (a panic): the next prepare starts
                // another.
                self.forget(&which, &key);
                None
            }
        };
        match outcome.unwrap_or_else(|| Err("the unpack stopped".to_owned())) {
            // Taken here, with no wait before the caller commits it (or removes it).
            Ok(diff_id) => self.forget(&which, &key).then_some(Ok((key, diff_id))),
            Err(e) => Some(Err(Error::Remote(e))),
        }
    }

    /// Drops the entry of `which` if it is still the unpack into `key`; whether it was.
    fn forget(&self, which: &Which, key: &str) -> bool {
        let mut layers = self.layers.lock().expect("staging lock");
        let ours = layers.get(which).is_some_and(|s| s.key == key);
        if ours {
            layers.remove(which);
        }
        ours
    }

    async fn unpack(
        &self,
        s: &Arc<Snapshotter>,
        source: &Source,
        digest: &str,
        key: &str,
        wanted: &Notify,
    ) -> Result<String> {
        let parsed = digest
            .parse()
            .map_err(|e| Error::InvalidArgument(format!("layer digest: {e}")))?;
        let _slot = match self.slots.clone().try_acquire_owned() {
            Ok(slot) => Some(slot),
            Err(_) => {
                // Waits its turn to unpack (the node fetches it meanwhile), unless containerd
                // waits for it now.
                warm(source, parsed);
                tokio::select! {
                    slot = self.slots.clone().acquire_owned() => {
                        Some(slot.map_err(|e| Error::Remote(e.to_string()))?)
                    }
                    () = wanted.notified() => None,
                }
            }
        };
        let (s, k) = (s.clone(), key.to_owned());
        let dir = blocking(move || {
            s.prepare(&k, "", BTreeMap::new())?;
            Ok(s.fs_dir(s.stat(&k)?.id))
        })
        .await?;
        let resp = source
            .registry
            .blob(&source.repository, parsed)
            .await
            .map_err(|e| Error::Remote(format!("through the node's mirror: {e}")))?;
        unpack_checked(resp, digest, dir).await
    }
}

/// Asks the node for a layer and reads it to the end (the node keeps it).
fn warm(source: &Source, digest: shoal_p2p::Digest) {
    let source = source.clone();
    tokio::spawn(async move {
        if let Ok(mut resp) = source.registry.blob(&source.repository, digest).await {
            while let Ok(Some(_)) = resp.chunk().await {}
        }
    });
}

async fn remove(s: &Arc<Snapshotter>, key: &str) {
    let (s, key) = (s.clone(), key.to_owned());
    let _ = blocking(move || match s.remove(&key) {
        Err(Error::NotFound(_)) => Ok(()),
        r => r,
    })
    .await;
}

/// Whether a snapshot is one of these unpacks: containerd is not shown them.
pub fn internal(name: &str) -> bool {
    name.starts_with(STAGING) || name.starts_with(UNPACKING)
}

/// Removes the unpacks a stop interrupted; how many.
pub fn sweep(s: &Snapshotter) -> Result<usize> {
    let mut removed = 0;
    for snapshot in s.list()? {
        if internal(&snapshot.name) {
            match s.remove(&snapshot.name) {
                Ok(()) => removed += 1,
                Err(e) => {
                    tracing::warn!(snapshot = snapshot.name, error = %e, "could not remove a half-unpacked layer")
                }
            }
        }
    }
    Ok(removed)
}
