//! A download's link to the swarm: the task's watch stream at its scheduler, the last view it
//! sent (content length, piece digests, parents, whether to go to the origin), and the courier
//! that carries the download's announces and reports to the scheduler off the piece loop.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use tokio::sync::mpsc;

use crate::id::TaskId;
use crate::proto::{Fault, Header, PieceSet, Task, TaskView};
use crate::store::Holdings;
use crate::swarm::Swarm;

use super::request::DownloadRequest;

/// The swarm side of a download, when there is one.
pub(crate) struct SwarmLink<'a> {
    pub swarm: Arc<Swarm>,
    pub courier: Courier,
    pub holdings: &'a Holdings,
    pub peers: crate::peer::PeerClient,
    /// The open watch stream (None once lost).
    pub stream: Option<tonic::Streaming<TaskView>>,
    pub view: TaskView,
}

impl SwarmLink<'_> {
    /// Takes `view`, the next on the stream (its digests, when a delta, added to those known).
    pub(crate) fn take(&mut self, view: TaskView) {
        follow(&mut self.view, view);
    }

    /// Waits for the swarm to tell the content length (without `wait`, only takes it if the
    /// first view had it). `None` when this host must learn it from the origin: it is the
    /// fetcher, or no length came within the stall timeout.
    pub(crate) async fn wait_for_length(&mut self, wait: bool) -> Option<u64> {
        if !wait {
            return self.view.length_known.then_some(self.view.content_length);
        }
        let deadline = tokio::time::Instant::now() + self.swarm.config().stall_timeout;
        loop {
            if self.view.length_known {
                return Some(self.view.content_length);
            }
            if self.view.back_to_source || self.view.failure.is_some() {
                return None;
            }
            let stream = self.stream.as_mut()?;
            match tokio::time::timeout_at(deadline, stream.message()).await {
                Ok(Ok(Some(view))) => self.take(view),
                _ => return None,
            }
        }
    }
}

/// `view` follows `last` on one stream: it replaces it, its digests (when a delta) those of
/// `last` with the new ones added.
fn follow(last: &mut TaskView, mut view: TaskView) {
    if view.digests_delta {
        let mut digests = std::mem::take(&mut last.digests);
        let count = match view.length_known {
            true => crate::piece::Layout::for_length(view.content_length)
                .map_or(0, |l| l.piece_count() as usize),
            false => digests.len(),
        };
        digests.resize(count, Vec::new());
        for d in view.new_digests.drain(..) {
            if let Some(slot) = digests.get_mut(d.number as usize) {
                *slot = d.blake3;
            }
        }
        view.digests = digests;
        view.digests_delta = false;
    }
    *last = view;
}

/// Whether a download fetches from its own origin: it is the swarm's fetcher, the fetcher
/// failed, or there is no swarm.
pub(crate) fn to_origin(link: Option<&SwarmLink<'_>>) -> bool {
    link.is_none_or(|l| l.view.back_to_source || l.view.failure.is_some())
}

/// What a download tells its scheduler.
enum Note {
    Pieces(PieceSet),
    Report { parent: String, fault: Fault },
}

/// Carries a download's announces and reports to its scheduler in order, on a task of its own:
/// the piece loop never waits for an RPC, so a slow or black-holed scheduler does not slow the
/// data path. Announces that queue up behind a slow one are merged into one (bitmaps are
/// cumulative; digests add up). They go to the scheduler the download watches the task at
/// (after a scheduler is lost, the one it watches again at). Dropping the courier lets it
/// deliver what is queued, each RPC within the swarm's timeout, and end.
pub(crate) struct Courier {
    tx: mpsc::UnboundedSender<Note>,
    at: Arc<AtomicUsize>,
}

impl Courier {
    /// A courier to scheduler `at`.
    pub(crate) fn start(swarm: Arc<Swarm>, task: TaskId, at: usize) -> Courier {
        let (tx, mut rx) = mpsc::unbounded_channel::<Note>();
        let at = Arc::new(AtomicUsize::new(at));
        let to = at.clone();
        tokio::spawn(async move {
            while let Some(note) = rx.recv().await {
                let mut next = Some(note);
                while let Some(note) = next.take() {
                    let index = to.load(Ordering::Relaxed);
                    match note {
                        Note::Report { parent, fault } => {
                            swarm.report_at(index, &task, &parent, fault).await;
                        }
                        Note::Pieces(mut set) => {
                            // Merge what queued behind; stop at a report, to keep the order.
                            while let Ok(more) = rx.try_recv() {
                                match more {
                                    Note::Pieces(later) => merge(&mut set, later),
                                    report => {
                                        next = Some(report);
                                        break;
                                    }
                                }
                            }
                            swarm.announce_at(Some(index), &task, Some(set), None).await;
                        }
                    }
                }
            }
        });
        Courier { tx, at }
    }

    /// The download watches the task at scheduler `index` now.
    pub(crate) fn watching(&self, index: usize) {
        self.at.store(index, Ordering::Relaxed);
    }

    /// Announces what the download holds now.
    pub(crate) fn announce(&self, set: PieceSet) {
        // The courier ends only when this handle is dropped.
        let _ = self.tx.send(Note::Pieces(set));
    }

    /// Reports a parent that failed the download.
    pub(crate) fn report(&self, parent: &str, fault: Fault) {
        let _ = self.tx.send(Note::Report {
            parent: parent.to_owned(),
            fault,
        });
    }
}

/// `later` announced after `set`: its bitmap is all a download holds (a superset), its digests
/// are new ones, its arriving pieces are those arriving now.
fn merge(set: &mut PieceSet, later: PieceSet) {
    if !later.bitmap.is_empty() {
        set.bitmap = later.bitmap;
    }
    set.arriving = later.arriving;
    set.digests.extend(later.digests);
    crate::proto::add_sources(&mut set.sources, &later.sources);
    set.length_known |= later.length_known;
    set.content_length = set.content_length.max(later.content_length);
}

/// The next view on the link's stream; `None` when the stream ended or failed.
pub(crate) async fn next_view(link: &mut Option<SwarmLink<'_>>) -> Option<TaskView> {
    let stream = link.as_mut()?.stream.as_mut()?;
    stream.message().await.ok().flatten()
}

/// The scheduler's description of a task (the headers go to whoever fetches from the origin).
pub(crate) fn task_message(id: &TaskId, req: &DownloadRequest) -> Task {
    Task {
        id: id.to_string(),
        url: req.origin.url.to_string(),
        headers: req
            .origin
            .headers
            .iter()
            .map(|(k, v)| Header {
                name: k.to_string(),
                value: v.as_bytes().to_vec(),
            })
            .collect(),
        digest: req.digest.map(|d| d.to_string()).unwrap_or_default(),
        id_options: Some((&req.id_options).into()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::bitmap::Bitmap;
    use crate::proto::PieceDigest;

    #[test]
    fn queued_announces_merge_into_one_that_loses_nothing() {
        let digest = |n: u32| PieceDigest {
            number: n,
            blake3: vec![n as u8; 32],
        };
        let set = |pieces: &[u32], digests: &[u32]| PieceSet {
            length_known: true,
            content_length: 10 << 20,
            bitmap: (0..10u32)
                .map(|p| pieces.contains(&p))
                .collect::<Bitmap>()
                .as_bytes()
                .to_vec(),
            digests: digests.iter().map(|&n| digest(n)).collect(),
            sources: vec![crate::proto::Source {
                upstream: format!("https://r{}", pieces.len()),
                anonymous: false,
            }],
            arriving: vec![pieces.len() as u8],
        };
        let mut first = set(&[0, 1], &[0, 1]);
        merge(&mut first, set(&[0, 1, 9], &[9]));
        assert_eq!(first.bitmap, set(&[0, 1, 9], &[]).bitmap);
        assert_eq!(first.digests, vec![digest(0), digest(1), digest(9)]);
        assert!(first.length_known);
        let upstreams: Vec<_> = first.sources.iter().map(|s| s.upstream.as_str()).collect();
        assert_eq!(upstreams, ["https://r2", "https://r3"]);
        // What arrives is the latest word: a piece that stopped arriving is not announced.
        assert_eq!(first.arriving, vec![3]);
    }

    #[test]
    fn a_delta_view_adds_its_digests_to_those_known() {
        let length = 3 << 20;
        let mut last = TaskView::default();
        let whole = TaskView {
            length_known: true,
            content_length: length,
            digests: vec![vec![0; 32], Vec::new(), Vec::new()],
            ..Default::default()
        };
        follow(&mut last, whole.clone());
        assert_eq!(last, whole);
        let delta = TaskView {
            length_known: true,
            content_length: length,
            digests_delta: true,
            new_digests: vec![PieceDigest {
                number: 2,
                blake3: vec![2; 32],
            }],
            back_to_source: true,
            ..Default::default()
        };
        follow(&mut last, delta);
        assert_eq!(last.digests, [vec![0; 32], Vec::new(), vec![2; 32]]);
        assert!(last.back_to_source && !last.digests_delta && last.new_digests.is_empty());
        // A number past the task's pieces is nobody's.
        let stray = TaskView {
            length_known: true,
            content_length: length,
            digests_delta: true,
            new_digests: vec![PieceDigest {
                number: 9,
                blake3: vec![9; 32],
            }],
            ..Default::default()
        };
        follow(&mut last, stray);
        assert_eq!(last.digests.len(), 3);
    }
}
