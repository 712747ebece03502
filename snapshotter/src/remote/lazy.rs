//! The lazy path (DESIGN.md "Lazy pulling", path 1): a gzip layer whose index the swarm holds
//! is not unpacked. The prepare fetches the index through the node's mirror (which checks the
//! client's credentials against the registry first, as for the layer), checks that the layer's
//! diff id makes the chain id containerd named, commits an empty snapshot under it and mounts
//! the layer over its directory with FUSE (`crate::lazy`); overlay then stacks it like any
//! other. A file read asks the node to make the bytes' compressed span present (`present`:
//! the node fetches those pieces first, from peers, else the origin) and reads the node's task
//! file; the rest of the layer comes in the background from the first byte asked, and once
//! the node holds it all, reads go to the file alone.
//! Once the node holds the whole layer, it is unpacked beside the mount, and later containers
//! stack on those files. Prefetch (the first host's reads, first on the next hosts): see
//! `super::prefetch`.
//! No index within [`INDEX_WAIT`] (the first pull of a layer anywhere: the seed builds it
//! meanwhile), a layer that is not gzip, `shoal pull --eager`: the layer is unpacked, as before.

use std::collections::{BTreeMap, HashMap};
use std::fs::File;
use std::ops::Range;
use std::os::unix::fs::{FileExt, MetadataExt};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use http::HeaderValue;
use http::header::HeaderMap;
use shoal_p2p::Digest;
use shoal_p2p::api::{COMPLETE_HEADER, LAZY_HEADER, PrefetchList, TASK_FILE_HEADER};

use super::prefetch::{Recording, prefetch_or_record};
use shoal_seed::gzindex::{LAYER_INDEX_MAGIC, LayerIndex};

use super::metrics::LazyMetrics;
use super::stage::Source;
use super::{LayerRef, blocking, chain_id, parent_chain};
use crate::error::{Error, Result};
use crate::lazy::{LazyLayer, Spans};
use crate::snapshots::Snapshotter;

/// A prepare's label (`shoal pull --eager`) that unpacks the layer even when it could be lazy.
pub const EAGER: &str = "containerd.io/snapshot/shoal.eager";
/// The label of a committed snapshot a lazy layer is mounted over: the layer's digest.
pub const LAZY: &str = "containerd.io/snapshot/shoal.lazy";
/// How long a prepare waits for the layer's index before it unpacks the layer instead.
pub const INDEX_WAIT: Duration = Duration::from_secs(3);
/// The largest index taken.
const MAX_INDEX: usize = shoal_p2p::api::MAX_GZIP_INDEX as usize;
/// How often a mounted layer's background download is checked on (and started again).
pub(super) const COMPLETE_CHECK: Duration = Duration::from_secs(5);
/// How long a read waits for a node too busy to start the layer's download.
const BUSY_FOR: Duration = Duration::from_secs(30);

/// How long after a layer's first read its reads are recorded for its prefetch list, unless
/// the config says otherwise.
pub const RECORD_FOR: Duration = Duration::from_secs(15);

/// The FUSE mounts of lazy layers, by snapshot id, and what they do.
pub(super) struct Mounted {
    sessions: Mutex<HashMap<u64, fuser::BackgroundSession>>,
    pub metrics: LazyMetrics,
    /// How long after a layer's first read (on the first host to run it) its reads are
    /// recorded for the prefetch list.
    pub record_for: Duration,
}

impl Default for Mounted {
    fn default() -> Self {
        Mounted {
            sessions: Mutex::default(),
            metrics: LazyMetrics::default(),
            record_for: RECORD_FOR,
        }
    }
}

impl Mounted {
    /// Unmounts what is mounted over snapshot `id` (nothing if nothing is).
    pub(super) fn unmount(&self, id: u64, at: &std::path::Path) {
        let session = self.sessions.lock().expect("mounts lock").remove(&id);
        if let Some(session) = session
            && let Err(e) = session.umount_and_join()
        {
            // Busy (a process still in it): detached, so the snapshot's files can go.
            tracing::warn!(snapshot = id, error = %e, "could not unmount a lazy layer; detaching it");
            detach(at);
        }
    }

    pub(super) fn holds(&self, id: u64) -> bool {
        self.sessions.lock().expect("mounts lock").contains_key(&id)
    }
}

/// `umount -l`: the mount leaves the tree now, the kernel lets go of it when it is idle.
fn detach(at: &std::path::Path) -> bool {
    let done = std::process::Command::new("umount")
        .arg("-l")
        .arg(at)
        .status();
    matches!(done, Ok(s) if s.success())
}

/// Mounts `layer` lazily and commits it on `parent` as containerd wants it; an error (no
/// index, a diff id that does not make the chain id) leaves nothing behind.
pub(super) async fn mount(
    snapshotter: &Arc<Snapshotter>,
    mounted: &Arc<Mounted>,
    source: &Source,
    key: String,
    layer: &LayerRef,
    parent: &str,
    labels: &BTreeMap<String, String>,
) -> Result<()> {
    let digest: Digest = layer
        .digest
        .parse()
        .map_err(|e| Error::InvalidArgument(format!("layer digest: {e}")))?;
    let started = std::time::Instant::now();
    let index = tokio::time::timeout(INDEX_WAIT, index(source, digest))
        .await
        .map_err(|_| Error::Remote(format!("no index within {INDEX_WAIT:?}")))??;
    // The index's diff id is the seed's word (the index's pieces are checked against the
    // seed's digests): the layer it describes must be the one containerd names.
    let made = chain_id(parent_chain(parent), &index.diff_id.to_string());
    if made != layer.target {
        return Err(Error::Remote(format!(
            "the layer's index says diff id {}, which makes chain id {made}, not {}",
            index.diff_id, layer.target
        )));
    }
    // Mounted over the snapshot before it is committed: containerd never sees it empty.
    let (s, k, prepared) = (snapshotter.clone(), key.clone(), key.clone());
    let id = blocking(move || {
        s.prepare(&k, "", BTreeMap::new())?;
        Ok(s.stat(&k)?.id)
    })
    .await?;
    let (s, target, parent) = (snapshotter.clone(), layer.target.clone(), parent.to_owned());
    let mut labels = labels.clone();
    labels.insert(LAZY.into(), layer.digest.clone());
    let attached = attach(snapshotter, mounted, source, digest, id, index, true).await;
    let committed = match attached {
        Ok(()) => blocking(move || s.commit_on(&target, &key, Some(&parent), labels)).await,
        Err(e) => Err(e),
    };
    if let Err(e) = committed {
        mounted.unmount(id, &snapshotter.fs_dir(id));
        // Not committed: the active snapshot goes.
        let s = snapshotter.clone();
        let _ = blocking(move || s.remove(&prepared)).await;
        return Err(e);
    }
    tracing::info!(layer = layer.digest, took = ?started.elapsed(), "layer mounted lazily");
    Ok(())
}

/// Mounts the layer `digest` described by `index` over snapshot `id`'s directory and starts
/// its background download, and its prefetch (or, when `record` and the swarm has no list,
/// the recording of its first reads).
pub(super) async fn attach(
    snapshotter: &Arc<Snapshotter>,
    mounted: &Arc<Mounted>,
    source: &Source,
    digest: Digest,
    id: u64,
    index: LayerIndex,
    record: bool,
) -> Result<()> {
    let metrics = mounted.metrics.clone();
    let since = std::time::Instant::now();
    // Recording from the mount on; stopped if the swarm has a list.
    let recording = Arc::new(Recording {
        list: Mutex::new(record.then(PrefetchList::default)),
        first_read: tokio::sync::Notify::new(),
    });
    let spans = NodeSpans {
        source: source.clone(),
        digest,
        handle: tokio::runtime::Handle::current(),
        file: Mutex::default(),
        metrics: metrics.clone(),
        since,
        read: std::sync::atomic::AtomicBool::new(false),
        recording: recording.clone(),
    };
    let layer_bytes = index.index.compressed_size;
    let diff_id = index.diff_id.to_string();
    let fs = LazyLayer::new(index.index, index.files, Box::new(spans));
    let dir = snapshotter.fs_dir(id);
    let session = tokio::task::spawn_blocking(move || crate::lazy::mount(fs, &dir))
        .await
        .map_err(|e| Error::Remote(format!("FUSE mount: {e}")))?
        .map_err(|e| Error::Remote(format!("FUSE mount: {e}")))?;
    mounted
        .sessions
        .lock()
        .expect("mounts lock")
        .insert(id, session);
    metrics.mounted.inc();
    metrics.layer_bytes.inc_by(layer_bytes);
    tokio::spawn(prefetch_or_record(
        source.clone(),
        mounted.clone(),
        id,
        digest,
        layer_bytes,
        recording,
    ));
    // The first byte asked starts the whole layer's download in the node: the background
    // completion. Asked again now and then until the node holds it all (a download that
    // failed starts over), while the layer is mounted.
    // Once whole, the layer is unpacked beside its mount: containers started after that read
    // plain files (those running on the mount go on with it).
    let (source, mounted, snapshotter) = (source.clone(), mounted.clone(), snapshotter.clone());
    tokio::spawn(async move {
        let mut warned = false;
        while mounted.holds(id) {
            match present(&source, digest, 0..1).await {
                Ok((file, true)) => {
                    metrics.complete.observe(since.elapsed().as_secs_f64());
                    match unpack_whole(&snapshotter, &mounted, id, file.into(), diff_id).await {
                        Ok(()) => {
                            metrics.unpacked.inc();
                            tracing::info!(layer = %digest, snapshot = id, "lazy layer whole and unpacked: new containers read its files directly")
                        }
                        Err(e) => {
                            tracing::warn!(layer = %digest, error = %e, "a whole lazy layer was not unpacked: its containers read it through the mount")
                        }
                    }
                    break;
                }
                Ok(_) => {}
                Err(e) if !warned => {
                    warned = true;
                    tracing::warn!(layer = %digest, error = %e, "the layer's background download did not start; trying again");
                }
                Err(_) => {}
            }
            tokio::time::sleep(COMPLETE_CHECK).await;
        }
    });
    Ok(())
}

/// Unpacks the whole layer (its task file, complete and checked against the layer's digest)
/// into snapshot `id`'s unpacked directory, which appears when it is whole and its diff id is
/// `diff_id` (the one the snapshot's chain id was checked against).
async fn unpack_whole(
    snapshotter: &Arc<Snapshotter>,
    mounted: &Arc<Mounted>,
    id: u64,
    task_file: std::path::PathBuf,
    diff_id: String,
) -> Result<()> {
    let done = snapshotter.unpacked_dir(id);
    let staging = snapshotter.unpacking_dir(id);
    let mounted = mounted.clone();
    blocking(move || {
        if done.is_dir() {
            return Ok(());
        }
        let _ = std::fs::remove_dir_all(&staging);
        std::fs::create_dir_all(&staging)
            .map_err(|e| Error::io("create unpack dir", &staging, e))?;
        let input =
            File::open(&task_file).map_err(|e| Error::io("open task file", &task_file, e))?;
        let unpacked = crate::extract::unpack(input, &staging);
        let made = match unpacked {
            Ok(u) if u.diff_id == diff_id => {
                // Under the mounts' lock: a snapshot removed meanwhile (unmounted first) gets
                // no files back.
                let sessions = mounted.sessions.lock().expect("mounts lock");
                match sessions.contains_key(&id) {
                    true => std::fs::rename(&staging, &done)
                        .map_err(|e| Error::io("rename", &staging, e)),
                    false => Err(Error::Remote("the layer was unmounted meanwhile".into())),
                }
            }
            Ok(u) => Err(Error::Remote(format!(
                "the layer unpacked to {}, its index says {diff_id}",
                u.diff_id
            ))),
            Err(e) => Err(e),
        };
        if made.is_err() {
            let _ = std::fs::remove_dir_all(&staging);
        }
        made
    })
    .await
}

/// Of `layers`, those whose index the swarm holds (each asked at once; the node keeps what
/// it fetched for the prepares to come).
pub(super) async fn indexed<'a>(source: &Source, layers: &[&'a str]) -> Vec<&'a str> {
    let asks = layers.iter().map(|d| async move {
        let digest: Digest = d.parse().ok()?;
        let found = tokio::time::timeout(INDEX_WAIT, index(source, digest)).await;
        matches!(found, Ok(Ok(_))).then_some(*d)
    });
    futures_util::future::join_all(asks)
        .await
        .into_iter()
        .flatten()
        .collect()
}

/// The layer's index, from the swarm through the node's mirror.
pub(super) async fn index(source: &Source, digest: Digest) -> Result<LayerIndex> {
    let bytes = derived(
        source,
        digest,
        ("index", "index"),
        LAYER_INDEX_MAGIC,
        MAX_INDEX,
    )
    .await?;
    LayerIndex::from_bytes(&bytes).map_err(|e| Error::Remote(format!("the layer's index: {e}")))
}

/// What the node's mirror answers for the layer with `x-shoal-lazy: <ask>` (content derived
/// from the layer, from the swarm only, called `what` in errors): at most `max` bytes starting
/// with `magic`.
pub(super) async fn derived(
    source: &Source,
    digest: Digest,
    (ask, what): (&'static str, &str),
    magic: &[u8],
    max: usize,
) -> Result<Vec<u8>> {
    let mut extra = HeaderMap::new();
    extra.insert(LAZY_HEADER, HeaderValue::from_static(ask));
    let mut resp = source
        .registry
        .blob_with(&source.repository, digest, &extra)
        .await
        .map_err(|e| Error::Remote(format!("the layer's {what}: {e}")))?;
    let mut bytes: Vec<u8> = Vec::new();
    while let Some(chunk) = resp
        .chunk()
        .await
        .map_err(|e| Error::Remote(format!("reading the layer's {what}: {e}")))?
    {
        if bytes.len() + chunk.len() > max {
            return Err(Error::Remote(format!("the layer's {what} is too large")));
        }
        bytes.extend_from_slice(&chunk);
        // Not what was asked (a mirror that does not know the header answered the layer): stop.
        if bytes.len() >= magic.len() && !bytes.starts_with(magic) {
            return Err(Error::Remote(format!(
                "the node's mirror answered no {what}"
            )));
        }
    }
    Ok(bytes)
}

/// Asks the node to make `range` (not empty) of the layer present; the task file it is in,
/// and whether the node holds the whole layer.
pub(super) async fn present(
    source: &Source,
    digest: Digest,
    range: Range<u64>,
) -> shoal_seed::Result<(String, bool)> {
    let mut extra = HeaderMap::new();
    extra.insert(LAZY_HEADER, HeaderValue::from_static("present"));
    let bytes = format!("bytes={}-{}", range.start, range.end.saturating_sub(1));
    extra.insert(
        http::header::RANGE,
        HeaderValue::from_str(&bytes).expect("ASCII"),
    );
    let resp = source
        .registry
        .blob_with(&source.repository, digest, &extra)
        .await?;
    let header = |name: &str| resp.headers().get(name).and_then(|v| v.to_str().ok());
    // Anything else (a mirror that does not know the header) is not an answer.
    let file = header(TASK_FILE_HEADER).ok_or_else(|| shoal_seed::Error::Status {
        url: format!("the node's mirror, for layer {digest}"),
        status: resp.status().as_u16(),
    })?;
    Ok((file.to_owned(), header(COMPLETE_HEADER) == Some("1")))
}

/// A lazy layer's compressed bytes: made present by the node, read from its task file.
struct NodeSpans {
    source: Source,
    digest: Digest,
    handle: tokio::runtime::Handle,
    /// The task file once opened, and whether the node held the whole layer then.
    file: Mutex<Option<(Arc<File>, bool)>>,
    metrics: LazyMetrics,
    /// When the layer was mounted, and whether a read came since.
    since: std::time::Instant,
    read: std::sync::atomic::AtomicBool,
    recording: Arc<Recording>,
}

impl NodeSpans {
    /// Makes `range` present, waiting out a node too busy to start the download; the task
    /// file (opened again if the node made it anew) and whether the layer is whole.
    fn present(&self, range: Range<u64>) -> std::io::Result<Arc<File>> {
        let start = std::time::Instant::now();
        let (path, complete) = loop {
            match self
                .handle
                .block_on(present(&self.source, self.digest, range.clone()))
            {
                Ok(answer) => break answer,
                Err(e) if e.status() == Some(503) && start.elapsed() < BUSY_FOR => {
                    std::thread::sleep(Duration::from_millis(200));
                }
                Err(e) => {
                    return Err(std::io::Error::other(format!(
                        "layer {} bytes {}-{}: {e}",
                        self.digest, range.start, range.end
                    )));
                }
            }
        };
        let mut held = self.file.lock().expect("task file lock");
        let same = |f: &File| {
            let (a, b) = (f.metadata(), std::fs::metadata(&path));
            matches!((a, b), (Ok(a), Ok(b)) if (a.dev(), a.ino()) == (b.dev(), b.ino()))
        };
        let file = match held.as_ref() {
            Some((f, _)) if same(f) => f.clone(),
            _ => Arc::new(File::open(&path)?),
        };
        *held = Some((file.clone(), complete));
        Ok(file)
    }
}

impl Spans for NodeSpans {
    fn fetch(&self, range: Range<u64>) -> std::io::Result<Vec<u8>> {
        if range.is_empty() {
            return Ok(Vec::new());
        }
        if !self.read.swap(true, std::sync::atomic::Ordering::Relaxed) {
            let waited = self.since.elapsed().as_secs_f64();
            self.metrics.first_read.observe(waited);
            self.recording.first_read.notify_one();
        }
        if let Some(list) = self.recording.list.lock().expect("recording lock").as_mut() {
            list.record(range.clone());
        }
        let held = self.file.lock().expect("task file lock").clone();
        let file = match held {
            // The whole layer is here, checked: no need to ask.
            Some((file, true)) => file,
            _ => {
                self.metrics.read_bytes.inc_by(range.end - range.start);
                let asked = std::time::Instant::now();
                let file = self.present(range.clone())?;
                self.metrics.fetch.observe(asked.elapsed().as_secs_f64());
                file
            }
        };
        let len = usize::try_from(range.end - range.start).map_err(std::io::Error::other)?;
        let mut buf = vec![0; len];
        file.read_exact_at(&mut buf, range.start)?;
        Ok(buf)
    }
}

impl std::fmt::Debug for NodeSpans {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "NodeSpans({})", self.digest)
    }
}
