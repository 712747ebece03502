//! The scheduler's memory: tasks, the hosts holding their pieces, who fetches from the origin.
//!
//! Everything here is plain data behind one mutex, changed by the gRPC handlers and read to build
//! each peer's [`TaskView`]. Nothing is persisted: after a restart, hosts re-attach and
//! re-announce what they hold.

use std::collections::{HashMap, HashSet};
use std::sync::{Mutex, MutexGuard};
use std::time::Instant;

use shoal_p2p::Bitmap;
use shoal_p2p::proto::{Failure, Host, Job, PieceSet, Source, Task};
use tokio::sync::{mpsc, watch};

use crate::task::{Attached, MAX_STRIKES, TaskEntry, rendezvous};

/// Parents offered to one peer at a time.
pub const MAX_PARENTS: usize = 16;
/// What changed, so metrics can count it.
#[derive(Debug, Default)]
pub struct Assigned {
    pub seed_job: Option<(String, Job)>,
    pub back_to_source_peer: bool,
}

/// What became of an announcement.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Merge {
    Merged,
    /// The scheduler does not know the task (it restarted, say).
    UnknownTask,
    /// It contradicted the task's known length or digests: reported, not adopted.
    Disputed,
}

#[derive(Default)]
pub struct State {
    pub tasks: HashMap<String, TaskEntry>,
    pub hosts: HashMap<String, Attached>,
    /// The tasks each host held, watched or fetched (a superset: entries are added as it
    /// happens, and dropped when the host leaves or the task is forgotten), so that a host
    /// leaving costs what it touched, not every task.
    host_tasks: HashMap<String, HashSet<String>>,
    next_generation: u64,
}

/// Locks the state. A panic while it was held (there should be none: network input is checked
/// before it reaches the state) must not take every later call down with it, so a poisoned lock
/// is taken over rather than propagated.
pub(crate) fn lock(state: &Mutex<State>) -> MutexGuard<'_, State> {
    state
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
}

impl State {
    /// How many tasks host `id` watches, holds or fetches.
    pub fn task_count(&self, id: &str) -> usize {
        self.host_tasks.get(id).map_or(0, HashSet::len)
    }

    /// Records an attached host; returns its generation.
    pub fn attach(&mut self, host: Host, jobs: mpsc::Sender<Job>) -> u64 {
        self.next_generation += 1;
        let generation = self.next_generation;
        self.hosts.insert(
            host.id.clone(),
            Attached {
                host,
                jobs,
                generation,
            },
        );
        generation
    }

    /// Forgets a host whose attach stream ended (unless it re-attached since); its tasks are
    /// re-planned. Returns the seed jobs to send.
    pub fn detach(&mut self, host_id: &str, generation: u64) -> Vec<(String, Job)> {
        if self
            .hosts
            .get(host_id)
            .is_none_or(|a| a.generation != generation)
        {
            return Vec::new();
        }
        self.hosts.remove(host_id);
        let ids = self.host_tasks.remove(host_id).unwrap_or_default();
        let mut jobs = Vec::new();
        // The tasks that still list it as a holder (until `gc` drops it) stay in its index: if
        // it comes back and leaves again, they are visited again.
        let mut kept = HashSet::new();
        for id in ids {
            let Some(entry) = self.tasks.get_mut(&id) else {
                continue;
            };
            let holder = entry.holders.contains_key(host_id);
            if holder || entry.fetcher.as_deref() == Some(host_id) {
                if entry.fetcher.as_deref() == Some(host_id) {
                    entry.fetcher = None;
                }
                entry.notify();
                if let Some(job) = self.plan(&id, None).seed_job {
                    jobs.push(job);
                }
            }
            if holder {
                kept.insert(id);
            }
        }
        if !kept.is_empty() {
            self.host_tasks.insert(host_id.to_owned(), kept);
        }
        jobs
    }

    /// A peer starts watching a task, holding `have`. Who fetches the task from the origin is
    /// planned first, so that a peer sent there is heard on what it already holds.
    pub fn watch(
        &mut self,
        host: &Host,
        task: Task,
        have: &PieceSet,
    ) -> (watch::Receiver<u64>, Assigned) {
        let entry = self
            .tasks
            .entry(task.id.clone())
            .or_insert_with(|| TaskEntry::new(task.clone()));
        if entry.task.url.is_empty() || (entry.task.headers.is_empty() && !task.headers.is_empty())
        {
            // A later request may carry the credentials the first one lacked.
            entry.task = task;
        }
        entry.holders.entry(host.id.clone()).or_default().watching += 1;
        self.host_tasks
            .entry(host.id.clone())
            .or_default()
            .insert(entry.task.id.clone());
        let rx = entry.changed.subscribe();
        let id = entry.task.id.clone();
        let assigned = self.plan(&id, Some(&host.id));
        self.merge(&id, &host.id, have);
        (rx, assigned)
    }

    /// A watch stream ended.
    pub fn unwatch(&mut self, task_id: &str, host_id: &str) {
        if let Some(entry) = self.tasks.get_mut(task_id)
            && let Some(h) = entry.holders.get_mut(host_id)
        {
            h.watching = h.watching.saturating_sub(1);
            if h.watching == 0 {
                // Nothing arrives at a host no longer downloading the task.
                h.arriving = Bitmap::default();
            }
            if h.watching == 0 && h.bitmap.count() == 0 {
                entry.holders.remove(host_id);
            }
            if entry.fetcher.as_deref() == Some(host_id) && !entry.holders.contains_key(host_id) {
                entry.fetcher = None;
            }
            entry.notify();
        }
    }

    /// `host_id` no longer holds the task: it is nobody's parent for it.
    pub fn withdraw(&mut self, task_id: &str, host_id: &str) {
        if let Some(entry) = self.tasks.get_mut(task_id)
            && let Some(h) = entry.holders.get_mut(host_id)
        {
            h.bitmap = Bitmap::new(h.bitmap.len());
            h.arriving = Bitmap::default();
            if h.watching == 0 {
                entry.holders.remove(host_id);
            }
            entry.notify();
        }
    }

    /// Whether `host_id`'s announcement makes it the author of the prefetch list `task_id`: the
    /// first whole list, before anyone defined it, from a host that holds pieces of the layer
    /// itself (it ran the layer). The layer's sources, which become the list's: it goes to
    /// whom the layer goes.
    fn may_author(&self, task_id: &str, host_id: &str, pieces: &PieceSet) -> Option<Vec<Source>> {
        let entry = self.tasks.get(task_id)?;
        if !entry.authored() || entry.fetcher.is_some() || entry.length.is_some() || !whole(pieces)
        {
            return None;
        }
        let url: url::Url = entry.task.url.parse().ok()?;
        let digest = shoal_p2p::id::oci_blob_digest(&url)?;
        let layer = self
            .tasks
            .get(&shoal_p2p::TaskId::for_blob(&digest).to_string())?;
        let runs_it = layer
            .holders
            .get(host_id)
            .is_some_and(|h| h.bitmap.count() > 0);
        (runs_it && !layer.sources.is_empty()).then(|| layer.sources.clone())
    }

    /// Merges what a host announced. A task's length and piece digests are taken only from a
    /// host that knows them: the one sent to the origin for it, or a seed. Another host's claims
    /// wait for one who knows (its bitmap is kept), and a claim that contradicts what is known
    /// is reported and counts as a strike against that host, never adopted. The task's sources
    /// (the upstreams its content came from) are set once, with its length, and a piece digest
    /// from a host naming another upstream is not taken: every piece the swarm passes on came
    /// from one of the task's sources, the upstreams a mirror checks its clients against.
    pub fn merge(&mut self, task_id: &str, host_id: &str, pieces: &PieceSet) -> Merge {
        let is_seed = self.hosts.get(host_id).is_some_and(|a| a.host.seed);
        let author = self.may_author(task_id, host_id, pieces);
        let Some(entry) = self.tasks.get_mut(task_id) else {
            return Merge::UnknownTask;
        };
        self.host_tasks
            .entry(host_id.to_owned())
            .or_default()
            .insert(task_id.to_owned());
        if let Some(sources) = &author {
            entry.fetcher = Some(host_id.to_owned());
            entry.set_sources(sources);
        }
        let fetcher = entry.fetcher.as_deref() == Some(host_id) && !entry.seed_only();
        let knows = is_seed || fetcher;
        let mut disputed = false;
        if pieces.length_known {
            match entry.length {
                Some(known) if known != pieces.content_length => disputed = true,
                None if knows => entry.set_length(pieces.content_length),
                None => {
                    let holder = entry.holders.entry(host_id.to_owned()).or_default();
                    holder.claimed_length = Some(pieces.content_length);
                }
                Some(_) => {}
            }
        }
        let n = entry.piece_count();
        if knows && entry.digests.iter().all(Option::is_none) {
            // Taken while no piece is defined yet: with the length, or after a length that came
            // without sources (from a host that had none to tell).
            entry.set_sources(&pieces.sources);
        }
        // A piece digest defines content: taken only from a host that names where its pieces
        // came from, all of them among the task's sources, so that those stay every upstream
        // the content came from.
        let vouched = knows
            && (entry.authored()
                || !pieces.sources.is_empty()
                    && pieces.sources.iter().all(|s| entry.sources.contains(s)));
        for d in &pieces.digests {
            let i = d.number as usize;
            if d.number >= n || d.blake3.len() != 32 {
                continue;
            }
            match &entry.digests[i] {
                Some(known) if *known != d.blake3 => disputed = true,
                None if vouched => entry.digests[i] = Some(d.blake3.clone()),
                _ => {}
            }
        }
        let holder = entry.holders.entry(host_id.to_owned()).or_default();
        if disputed {
            // Its pieces are not what the task is: offered to nobody.
            tracing::warn!(
                task = task_id,
                host = host_id,
                "a host announced a length or piece digest that contradicts the fetcher's"
            );
            holder.strikes = MAX_STRIKES;
            entry.notify();
            return Merge::Disputed;
        }
        // Until the length is known the bitmap is kept as it came (the service bounds it), to be
        // read once someone who knows says the length.
        let bits = if entry.length.is_some() {
            n
        } else {
            u32::try_from(pieces.bitmap.len() * 8).unwrap_or(u32::MAX)
        };
        let announced = Bitmap::from_bytes(&pieces.bitmap, bits);
        if announced.count() > 0 && entry.length.is_some() {
            // Someone has pieces again: the swarm works for this task.
            entry.failure = None;
        }
        let width = holder.bitmap.len().max(bits);
        holder.bitmap = Bitmap::from_bytes(holder.bitmap.as_bytes(), width);
        let mut known = holder.bitmap.clone();
        known.union(&holder.arriving);
        holder.bitmap.union(&announced);
        // What arrives is told afresh each time (a piece that failed is no longer arriving),
        // and only once the length is known: only pieces whose digests are known are fetched
        // from peers.
        holder.arriving = match entry.length {
            Some(_) => {
                let mut arriving = Bitmap::from_bytes(&pieces.arriving, n);
                arriving.subtract(&holder.bitmap);
                arriving
            }
            None => Bitmap::default(),
        };
        // Counted from its first word on the task (a host that has gained nothing yet is
        // starting, not stuck).
        let gained = holder.bitmap.count_not_in(&known) + holder.arriving.count_not_in(&known) > 0;
        if gained || holder.last_gain.is_none() {
            holder.last_gain = Some(Instant::now());
        }
        if entry.length.is_some() {
            let now = Instant::now();
            for p in announced.ones() {
                entry.first_held[p as usize].get_or_insert(now);
            }
        }
        entry.notify();
        Merge::Merged
    }

    /// The fetcher's origin request failed. That is its own failure (its credentials, that
    /// moment, its route to the origin), not the task's, and the host is not sent to the origin
    /// for this task again. A seed that could not reach the origin (no answer, 5xx, 429, 408)
    /// failed on its route or its moment: another fetches for the swarm (the next seed, or one
    /// watcher, as the watchers plan again), and the others go on waiting for its pieces. Any
    /// other failure (a 401, 403, 404: the credentials the job carried) the watchers learn at
    /// once and fetch from the origin themselves, with their own.
    pub fn fail(&mut self, task_id: &str, host_id: &str, failure: Failure) {
        let seed = self.hosts.get(host_id).is_some_and(|a| a.host.seed);
        let route = matches!(failure.http_status, 0 | 408 | 429 | 500..=599);
        if let Some(entry) = self.tasks.get_mut(task_id) {
            if entry.authored() {
                // Nobody fetches a prefetch list: no failure to route around.
                return;
            }
            if !(seed && route) {
                entry.failure = Some((failure, Instant::now()));
            }
            entry
                .failed_fetchers
                .insert(host_id.to_owned(), Instant::now());
            if entry.fetcher.as_deref() == Some(host_id) {
                entry.fetcher = None;
            }
            entry.notify();
        }
    }

    /// `host` reports `parent`: `host` never gets it again for this task; corrupt data is a
    /// strike against `parent` for everyone.
    pub fn report(&mut self, task_id: &str, host: &str, parent: &str, corrupt: bool) {
        if let Some(entry) = self.tasks.get_mut(task_id) {
            if let Some(h) = entry.holders.get_mut(host) {
                h.avoid.insert(parent.to_owned());
            }
            if corrupt && let Some(p) = entry.holders.get_mut(parent) {
                p.strikes += 1;
            }
            entry.notify();
        }
    }

    /// Makes sure someone will fetch what no live host holds: the seed chosen for the task by
    /// rendezvous hashing, else the asking peer. Returns the job to send if a seed was chosen.
    pub fn plan(&mut self, task_id: &str, asking: Option<&str>) -> Assigned {
        let Some(entry) = self.tasks.get_mut(task_id) else {
            return Assigned::default();
        };
        // Without a URL (only hosts that claim to hold the task watched it so far) nobody can
        // be sent to the origin yet; the first request with one plans again.
        // While a fetcher's failure is recent, the watchers fetch from the origin themselves.
        // (A live fetcher is checked before `covered`, which costs a pass over the holders.)
        if let Some(f) = &entry.fetcher
            && self.hosts.contains_key(f)
            && entry.holders.get(f).is_none_or(|h| h.strikes < MAX_STRIKES)
        {
            return Assigned::default();
        }
        if entry.recent_failure().is_some()
            || entry.task.url.is_empty()
            || entry.authored()
            || entry.covered(&self.hosts)
        {
            return Assigned::default();
        }
        let seed = self
            .hosts
            .values()
            .filter(|a| a.host.seed && !entry.failed_recently(&a.host.id))
            .filter(|a| {
                entry
                    .holders
                    .get(&a.host.id)
                    .is_none_or(|h| h.strikes < MAX_STRIKES)
            })
            .max_by_key(|a| rendezvous(task_id, &a.host.id));
        if let Some(seed) = seed {
            entry.fetcher = Some(seed.host.id.clone());
            self.host_tasks
                .entry(seed.host.id.clone())
                .or_default()
                .insert(task_id.to_owned());
            entry.notify();
            let job = Job {
                task: Some(entry.task.clone()),
            };
            return Assigned {
                seed_job: Some((seed.host.id.clone(), job)),
                back_to_source_peer: false,
            };
        }
        if let Some(peer) = asking
            && !entry.seed_only()
            && self.hosts.contains_key(peer)
            && !entry.failed_recently(peer)
        {
            entry.fetcher = Some(peer.to_owned());
            self.host_tasks
                .entry(peer.to_owned())
                .or_default()
                .insert(task_id.to_owned());
            entry.notify();
            return Assigned {
                seed_job: None,
                back_to_source_peer: true,
            };
        }
        Assigned::default()
    }

    /// Forgets tasks nobody watched or announced for `idle`, and holders that are gone.
    pub fn gc(&mut self, idle: std::time::Duration) {
        let hosts = &self.hosts;
        self.tasks.retain(|_, e| {
            e.holders
                .retain(|id, h| h.watching > 0 || hosts.contains_key(id));
            !e.holders.is_empty() || e.last_active.elapsed() < idle
        });
        let tasks = &self.tasks;
        self.host_tasks.retain(|host, ids| {
            ids.retain(|id| {
                tasks.get(id).is_some_and(|e| {
                    e.holders.contains_key(host) || e.fetcher.as_deref() == Some(host.as_str())
                })
            });
            !ids.is_empty()
        });
    }
}

/// Whether `pieces` announces a whole task: its length, every piece held, every digest.
fn whole(pieces: &PieceSet) -> bool {
    let Some(n) = shoal_p2p::Layout::for_length(pieces.content_length).map(|l| l.piece_count())
    else {
        return false;
    };
    let mut digests = Bitmap::new(n);
    for d in pieces.digests.iter().filter(|d| d.number < n) {
        digests.set(d.number);
    }
    pieces.length_known && Bitmap::from_bytes(&pieces.bitmap, n).is_full() && digests.is_full()
}

mod preheat;
#[cfg(test)]
mod tests;
mod view;
