//! The remote path: a layer containerd asks to prepare with the labels CRI (or `shoal pull`)
//! sends — `containerd.io/snapshot.ref` (the chain id to commit as),
//! `containerd.io/snapshot/cri.layer-digest` and `…/cri.image-ref` — is read through the local
//! node's registry mirror (from the swarm, by digest), checked against its digest, unpacked
//! while it streams, and committed under the chain id; containerd is then told it already
//! exists and fetches nothing. The first such layer of an image starts every layer the image
//! lists (`…/cri.image-layers`): they are read and unpacked in parallel (`stage`), and each
//! prepare only waits for its own.
//! Whatever fails (no mirror, a registry that wants credentials the snapshotter lacks, a layer
//! with device nodes) leaves that one layer to containerd's own path, with a log line.

mod lazy;
mod metrics;
mod prefetch;
mod restart;
mod stage;

use std::collections::{BTreeMap, HashMap};
use std::path::PathBuf;
use std::sync::{Arc, Mutex};

use bytes::Bytes;
use sha2::Digest as _;

use shoal_seed::registry::Registry;

use crate::error::{Error, Result};
use crate::snapshots::Snapshotter;

pub const TARGET: &str = "containerd.io/snapshot.ref";
pub const LAYER_DIGEST: &str = "containerd.io/snapshot/cri.layer-digest";
pub const IMAGE_REF: &str = "containerd.io/snapshot/cri.image-ref";
pub const IMAGE_LAYERS: &str = "containerd.io/snapshot/cri.image-layers";

pub use lazy::{EAGER, INDEX_WAIT, LAZY};
pub use metrics::LazyMetrics;
pub use stage::{internal, sweep};

/// One layer of an image, as the labels name it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct LayerRef {
    /// The chain id containerd wants committed.
    pub target: String,
    /// Registry host (`docker.io` is `registry-1.docker.io`'s name) and repository.
    pub registry: String,
    pub repository: String,
    pub digest: String,
    /// Every layer of the image (digests), when the labels list them.
    pub image_layers: Vec<String>,
}

impl LayerRef {
    pub fn from_labels(labels: &BTreeMap<String, String>) -> Option<LayerRef> {
        let digest = labels.get(LAYER_DIGEST)?;
        let (registry, repository) = split_reference(labels.get(IMAGE_REF)?)?;
        let target = labels.get(TARGET)?.clone();
        valid_digest(digest).then(|| LayerRef {
            target,
            registry,
            repository,
            digest: digest.clone(),
            image_layers: labels
                .get(IMAGE_LAYERS)
                .map(|l| l.split(',').map(str::to_owned).collect())
                .unwrap_or_default(),
        })
    }
}

/// A SHA-256 digest (`sha256:` and 64 hex digits): it goes into a URL path.
fn valid_digest(digest: &str) -> bool {
    digest
        .strip_prefix("sha256:")
        .is_some_and(|h| h.len() == 64 && h.bytes().all(|b| b.is_ascii_hexdigit()))
}

/// `registry.example:5000/team/app:v1@sha256:…` → (`registry.example:5000`, `team/app`);
/// a name without a registry is Docker Hub's (`library/` for one component).
pub(crate) fn split_reference(reference: &str) -> Option<(String, String)> {
    let name = reference.split('@').next()?;
    let name = match name.rfind(':') {
        Some(i) if !name[i..].contains('/') => &name[..i],
        _ => name,
    };
    let (first, rest) = name.split_once('/').unwrap_or(("", name));
    let (registry, repository) = if first == "docker.io" || first == "index.docker.io" {
        // As containerd normalizes Docker Hub's names.
        let official = !rest.contains('/');
        let repository = match official {
            true => format!("library/{rest}"),
            false => rest.to_owned(),
        };
        ("docker.io".to_owned(), repository)
    } else if first.contains('.') || first.contains(':') || first == "localhost" {
        (first.to_owned(), rest.to_owned())
    } else if first.is_empty() {
        ("docker.io".to_owned(), format!("library/{rest}"))
    } else {
        ("docker.io".to_owned(), name.to_owned())
    };
    // The distribution spec's path components: lower-case alphanumerics, separated by `.`,
    // `_`, `__` or dashes; never `..` (the repository goes into a URL path).
    let alnum = |b: u8| b.is_ascii_lowercase() || b.is_ascii_digit();
    let valid = !repository.is_empty()
        && repository.split('/').all(|c| {
            c.bytes().next().is_some_and(alnum)
                && c.bytes().last().is_some_and(alnum)
                && !c.contains("..")
                && c.bytes().all(|b| alnum(b) || b"._-".contains(&b))
        });
    valid.then_some((registry, repository))
}

/// Reads layers through the local node's registry mirror.
pub struct Remote {
    /// The mirror (`http://127.0.0.1:4001`).
    pub mirror: url::Url,
    /// Docker's config file, for a registry's credentials (`auths`).
    pub docker_config: Option<PathBuf>,
    http: reqwest::Client,
    /// One client per registry host (each keeps its tokens).
    registries: Mutex<HashMap<String, Arc<Registry>>>,
    /// Layers being unpacked ahead.
    stager: Arc<stage::Stager>,
    /// Credentials the kubelet's pulls gave (through the CRI proxy), by repository.
    pub keychain: Arc<crate::cri::Keychain>,
    /// One unpack per target at a time: a second prepare of a layer waits for the first.
    unpacking: Mutex<HashMap<String, Arc<tokio::sync::Mutex<()>>>>,
    /// Whether a layer whose index the swarm holds is mounted lazily (FUSE) instead of
    /// unpacked (default true; a prepare labelled [`EAGER`] is unpacked all the same).
    pub lazy: bool,
    mounted: Arc<lazy::Mounted>,
}

impl Remote {
    pub fn new(mirror: url::Url, docker_config: Option<PathBuf>) -> Result<Remote> {
        shoal_p2p::install_crypto_provider();
        let http = reqwest::Client::builder()
            .no_proxy()
            .connect_timeout(std::time::Duration::from_secs(3))
            .read_timeout(std::time::Duration::from_secs(60))
            .build()
            .map_err(|e| Error::InvalidArgument(format!("HTTP client: {e}")))?;
        Ok(Remote {
            mirror,
            docker_config,
            http,
            registries: Mutex::default(),
            stager: Arc::default(),
            keychain: Arc::default(),
            unpacking: Mutex::default(),
            lazy: true,
            mounted: Arc::default(),
        })
    }

    /// How long after a lazy layer's first read its reads are recorded for its prefetch list
    /// (before the snapshotter serves).
    pub fn set_record_for(&mut self, d: std::time::Duration) {
        if let Some(m) = Arc::get_mut(&mut self.mounted) {
            m.record_for = d;
        }
    }

    /// After a (re)start: the lazy layers' mounts are gone (a stop unmounts them, a crash
    /// leaves them dead). Each committed lazy snapshot is mounted again, or, when its index
    /// cannot be had, the layer is unpacked into its directory: never left empty.
    pub async fn restore(&self, snapshotter: &Arc<Snapshotter>) {
        restart::unmount_stale(snapshotter.root());
        let s = snapshotter.clone();
        let Ok(list) = blocking(move || s.list()).await else {
            return;
        };
        let until = std::time::Instant::now() + restart::RESTORE_FOR;
        for snap in list {
            if snap.kind != crate::Kind::Committed || !snap.labels.contains_key(LAZY) {
                continue;
            }
            let (Some(layer), Ok(digest)) = (
                LayerRef::from_labels(&snap.labels),
                snap.labels[LAZY].parse::<shoal_p2p::Digest>(),
            ) else {
                tracing::error!(
                    snapshot = snap.name,
                    "a lazy layer whose labels do not name it: its directory is empty"
                );
                continue;
            };
            let source = stage::Source {
                registry: self.registry(&layer.registry, &layer.repository),
                host: layer.registry.clone(),
                repository: layer.repository.clone(),
            };
            let remounted =
                restart::remount(snapshotter, &self.mounted, &source, &snap, digest, until).await;
            let Err(e) = remounted else { continue };
            if snapshotter.unpacked_dir(snap.id).is_dir() {
                // Its files are unpacked already: its children stack on them.
                tracing::info!(layer = %digest, error = %e, "a lazy layer not mounted again: it is unpacked");
                continue;
            }
            tracing::warn!(layer = %digest, error = %e, "a lazy layer could not be mounted again; unpacking it");
            let dir = snapshotter.fs_dir(snap.id);
            let unpacked = match source.registry.blob(&source.repository, digest).await {
                Ok(resp) => unpack_checked(resp, &layer.digest, dir).await,
                Err(e) => Err(Error::Remote(e.to_string())),
            };
            match unpacked {
                Ok(diff_id) if chain_id(parent_chain(&snap.parent), &diff_id) == snap.name => {
                    let (s, name) = (snapshotter.clone(), snap.name.clone());
                    let mut labels = snap.labels.clone();
                    labels.remove(LAZY);
                    let _ = blocking(move || s.update(&name, labels, &[]).map(drop)).await;
                }
                Ok(diff_id) => {
                    tracing::error!(layer = %digest, diff_id, snapshot = snap.name, "the layer unpacked to another chain id: its snapshot is wrong")
                }
                Err(e) => {
                    tracing::error!(layer = %digest, error = %e, snapshot = snap.name, "a lazy layer could be neither mounted nor unpacked: its directory is empty")
                }
            }
        }
    }

    /// What lazy layers do (for `/metrics`: [`LazyMetrics::register`]).
    pub fn metrics(&self) -> &LazyMetrics {
        &self.mounted.metrics
    }

    /// Unmounts the lazy layer mounted over snapshot `id`, if one is (before its files go).
    pub fn unmount(&self, snapshotter: &Snapshotter, id: u64) {
        self.mounted.unmount(id, &snapshotter.fs_dir(id));
    }

    /// Prepares `key` by the remote path. `Ok(false)`: the labels name no layer (the plain path
    /// is the one). `Err(AlreadyExists)`: the layer is committed as containerd wants it.
    pub async fn prepare(
        &self,
        snapshotter: &Arc<Snapshotter>,
        parent: &str,
        labels: &BTreeMap<String, String>,
    ) -> Result<bool> {
        let Some(layer) = LayerRef::from_labels(labels) else {
            return Ok(false);
        };
        let lock = self
            .unpacking
            .lock()
            .expect("unpacking lock")
            .entry(layer.target.clone())
            .or_default()
            .clone();
        let result = {
            let _one_at_a_time = lock.lock().await;
            match snapshotter.stat(&layer.target) {
                // containerd then lists the target with this parent: only that one will do.
                Ok(s) if s.kind == crate::Kind::Committed && s.parent == parent => Ok(true),
                // Committed on another parent (another namespace's): containerd's path.
                Ok(_) => Ok(false),
                Err(_) => self
                    .pull(snapshotter, &layer, parent, labels)
                    .await
                    .map(|()| true),
            }
        };
        {
            let mut unpacking = self.unpacking.lock().expect("unpacking lock");
            if Arc::strong_count(&lock) == 2 {
                unpacking.remove(&layer.target);
            }
        }
        match result {
            Ok(true) | Err(Error::AlreadyExists(_)) => Err(Error::AlreadyExists(layer.target)),
            Ok(false) => Ok(false),
            Err(e) => {
                tracing::warn!(layer = layer.digest, image_registry = layer.registry, error = %e, "layer not read through the node; containerd fetches it itself");
                Ok(false)
            }
        }
    }

    /// The client of `host`'s `repository` through the node's mirror (`?ns=host`): with the
    /// credentials a kubelet's pull of it gave, else those Docker's config file holds for the
    /// host (read when the client is made; tokens are kept).
    fn registry(&self, host: &str, repository: &str) -> Arc<Registry> {
        let base = crate::client::through_mirror(&self.mirror, host);
        if let Some(credentials) = self.keychain.get(host, repository) {
            return Arc::new(Registry::new(base, self.http.clone(), credentials));
        }
        let mut clients = self.registries.lock().expect("registries lock");
        clients
            .entry(host.to_owned())
            .or_insert_with(|| {
                let credentials = self
                    .docker_config
                    .as_deref()
                    .and_then(|c| crate::client::docker_credentials(c, host))
                    .unwrap_or_default();
                Arc::new(Registry::new(base, self.http.clone(), credentials))
            })
            .clone()
    }

    /// Unpacks the layer (and starts the image's others) and commits it on `parent` as the
    /// target.
    async fn pull(
        &self,
        snapshotter: &Arc<Snapshotter>,
        layer: &LayerRef,
        parent: &str,
        labels: &BTreeMap<String, String>,
    ) -> Result<()> {
        let source = stage::Source {
            registry: self.registry(&layer.registry, &layer.repository),
            host: layer.registry.clone(),
            repository: layer.repository.clone(),
        };
        let eager = labels.get(EAGER).is_some_and(|v| v == "true");
        if self.lazy && !eager && !self.stager.has(&source, &layer.digest) {
            let key = self.stager.key(&layer.digest);
            let mounted = lazy::mount(
                snapshotter,
                &self.mounted,
                &source,
                key,
                layer,
                parent,
                labels,
            )
            .await;
            match mounted {
                Ok(()) => return Ok(()),
                Err(e) => {
                    tracing::info!(layer = layer.digest, why = %e, "layer not mounted lazily; unpacking it")
                }
            }
        }
        // The layers above this one (containerd lists from this layer up, and prepares bottom
        // first: those below are made).
        let own = std::iter::once(layer.digest.as_str());
        let mut above = layer.image_layers.iter().map(String::as_str);
        let from_here = above.clone().position(|d| d == layer.digest);
        if let Some(i) = from_here {
            above.nth(i);
        }
        let mut above: Vec<&str> = above.collect();
        if self.lazy && !eager {
            // Those the swarm has an index of are mounted lazily when their turn comes.
            let indexed = lazy::indexed(&source, &above).await;
            above.retain(|d| !indexed.contains(d));
        }
        self.stager.start(snapshotter, &source, own.chain(above));
        let mut claimed = None;
        for _ in 0..3 {
            claimed = self.stager.claim(&source, &layer.digest).await;
            if claimed.is_some() {
                break;
            }
            // Another prepare (of the same layer on another parent) took it: another unpack.
            self.stager
                .start(snapshotter, &source, [layer.digest.as_str()]);
        }
        let (key, diff_id) =
            claimed.ok_or_else(|| Error::Remote("other prepares took its unpacks".into()))??;
        // The unpacked bytes must be what the chain id containerd named is made of, else one
        // image could plant files under another's chain id.
        let made = chain_id(parent_chain(parent), &diff_id);
        let checked = match made == layer.target {
            true => Ok(()),
            false => Err(Error::Remote(format!(
                "the layer unpacks to {diff_id}, which makes chain id {made}, not {}",
                layer.target
            ))),
        };
        let s = snapshotter.clone();
        let (target, parent, labels) = (layer.target.clone(), parent.to_owned(), labels.clone());
        blocking(move || {
            checked
                .and_then(|()| s.commit_on(&target, &key, Some(&parent), labels))
                .inspect_err(|_| {
                    let _ = s.remove(&key);
                })
        })
        .await
    }
}

/// The chain id of a layer with diff id `diff_id` on the layers whose chain id is `parent`
/// (none: a base layer).
pub(crate) fn chain_id(parent: Option<&str>, diff_id: &str) -> String {
    match parent {
        None => diff_id.to_owned(),
        Some(p) => format!(
            "sha256:{}",
            hex::encode(sha2::Sha256::digest(format!("{p} {diff_id}").as_bytes()))
        ),
    }
}

/// The chain id a parent snapshot stands for: its name, less the `<namespace>/<n>/` containerd
/// puts before the names it commits.
fn parent_chain(parent: &str) -> Option<&str> {
    (!parent.is_empty()).then(|| parent.rsplit('/').next().unwrap_or(parent))
}

/// Unpacks the layer `resp` streams into `dir` while it arrives; fails unless its bytes are
/// `digest` (`sha256:…`). Returns its diff id.
pub(crate) async fn unpack_checked(
    mut resp: reqwest::Response,
    digest: &str,
    dir: PathBuf,
) -> Result<String> {
    let (tx, rx) = tokio::sync::mpsc::channel::<std::io::Result<Bytes>>(16);
    let unpacking = tokio::task::spawn_blocking(move || {
        crate::extract::unpack(shoal_p2p::ChunkReader::new(rx), &dir)
    });
    let mut hash = sha2::Sha256::new();
    let streamed = async {
        while let Some(chunk) = resp.chunk().await.map_err(std::io::Error::other)? {
            hash.update(&chunk);
            if tx.send(Ok(chunk)).await.is_err() {
                break; // the unpacker stopped: its error says why
            }
        }
        Ok::<_, std::io::Error>(())
    }
    .await;
    if let Err(e) = &streamed {
        let _ = tx.send(Err(std::io::Error::other(e.to_string()))).await;
    }
    drop(tx);
    let unpacked = unpacking
        .await
        .map_err(|e| Error::Remote(format!("unpacking stopped: {e}")))?;
    streamed.map_err(|e| Error::Remote(format!("reading the layer: {e}")))?;
    let unpacked = unpacked?;
    let got = format!("sha256:{}", hex::encode(hash.finalize()));
    if got != digest {
        return Err(Error::Remote(format!(
            "the layer's bytes are {got}, not {digest}"
        )));
    }
    Ok(unpacked.diff_id)
}

async fn blocking<T: Send + 'static>(f: impl FnOnce() -> Result<T> + Send + 'static) -> Result<T> {
    tokio::task::spawn_blocking(f)
        .await
        .map_err(|e| Error::Remote(format!("snapshot operation stopped: {e}")))?
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn references_name_their_registry_and_repository() {
        let split = |r: &str| split_reference(r);
        assert_eq!(
            split("alpine:3.19"),
            Some(("docker.io".into(), "library/alpine".into()))
        );
        assert_eq!(
            split("docker.io/library/alpine"),
            Some(("docker.io".into(), "library/alpine".into()))
        );
        assert_eq!(
            split("team/app@sha256:ab"),
            Some(("docker.io".into(), "team/app".into()))
        );
        assert_eq!(
            split("127.0.0.1:5000/test/cat:v1"),
            Some(("127.0.0.1:5000".into(), "test/cat".into()))
        );
        assert_eq!(split("localhost/x"), Some(("localhost".into(), "x".into())));
        for bad in ["", "r.io/", "r.io/A", "r.io/a//b", "r.io/../x"] {
            assert_eq!(split(bad), None, "{bad:?}");
        }
    }

    #[test]
    fn a_layer_needs_its_target_digest_and_image() {
        let mut labels = BTreeMap::from([
            (TARGET.to_owned(), "sha256:chain".to_owned()),
            (
                LAYER_DIGEST.to_owned(),
                format!("sha256:{}", "a".repeat(64)),
            ),
            (IMAGE_REF.to_owned(), "r.io/x:1".to_owned()),
        ]);
        let layer = LayerRef::from_labels(&labels).unwrap();
        assert_eq!(
            (layer.registry.as_str(), layer.repository.as_str()),
            ("r.io", "x")
        );
        labels.insert(LAYER_DIGEST.into(), "sha256:../../x".into());
        assert_eq!(
            LayerRef::from_labels(&labels),
            None,
            "a digest that is a path"
        );
        labels.remove(LAYER_DIGEST);
        assert_eq!(LayerRef::from_labels(&labels), None);
    }
}
