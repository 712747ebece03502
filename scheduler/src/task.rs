//! One task as the scheduler knows it: its holders and their pieces, the piece digests, who fetches it from the origin and whether that failed, and what the seeds
//! offer each downloader.

use std::collections::{HashMap, HashSet};
use std::time::Instant;

use shoal_p2p::Bitmap;
use shoal_p2p::piece::Layout;
use shoal_p2p::proto::{Failure, Host, Job, Source, Task};
use tokio::sync::{mpsc, watch};

/// Sources a task may have (one per upstream its fetchers used, with and without credentials).
pub const MAX_SOURCES: usize = 8;
/// The longest upstream (`scheme://host:port`) a source may name.
const MAX_UPSTREAM_LEN: usize = 300;
/// Corrupt-piece reports after which a host is offered to nobody for that task.
pub const MAX_STRIKES: u32 = 2;
/// How long a piece only seeds hold is offered to its one chosen host before a second host is
/// offered it too, and then twice as many hosts each time again, until every host is (8 hosts:
/// after 15 s; 32: 25 s). A slow chosen host delays only that piece: the others keep getting
/// the pieces the other hosts pass on, well within their stall timeout (10 s by default).
/// Widening by doubling, not to everyone at once: in the lab (32 hosts at 50 Mbit/s) every host
/// asking the seed for the same late piece shared its uplink so thinly that pieces took more
/// than the 30 s peer timeout.
pub const SEED_EXCLUSIVE: std::time::Duration = std::time::Duration::from_secs(5);
/// How long a fetcher's origin failure sends the task's watchers to the origin themselves; after
/// it, the task is planned again (another seed, or a watcher, fetches for the swarm).
pub const FAILURE_TTL: std::time::Duration = std::time::Duration::from_secs(10);
/// How long a host whose origin fetch failed is not sent to the origin for that task again.
pub const FAILED_FETCHER_TTL: std::time::Duration = std::time::Duration::from_secs(60);

/// An attached host: its description and the channel its jobs go to.
pub struct Attached {
    pub host: Host,
    pub jobs: mpsc::Sender<Job>,
    /// Distinguishes a re-attach from the stream it replaced.
    pub generation: u64,
}

pub struct TaskEntry {
    pub task: Task,
    pub length: Option<u64>,
    pub digests: Vec<Option<Vec<u8>>>,
    /// The upstreams its content came from, set once (see [`TaskEntry::set_sources`]).
    pub sources: Vec<Source>,
    /// When each piece was first announced by anyone.
    pub(crate) first_held: Vec<Option<Instant>>,
    pub holders: HashMap<String, Holder>,
    /// The host told to fetch from the origin, if any.
    pub fetcher: Option<String>,
    /// The last fetcher's origin failure, and when it came (it counts for [`FAILURE_TTL`]).
    pub(crate) failure: Option<(Failure, Instant)>,
    /// Hosts whose origin fetch failed for this task, and when: not sent to the origin for it
    /// again for [`FAILED_FETCHER_TTL`] (a failure may be that moment's).
    pub(crate) failed_fetchers: HashMap<String, Instant>,
    pub changed: watch::Sender<u64>,
    pub last_active: Instant,
}

#[derive(Default)]
pub struct Holder {
    pub bitmap: Bitmap,
    /// Pieces arriving at this host from peers, which it passes on as they come (cut-through);
    /// none of them in `bitmap`. Replaced by each announcement.
    pub arriving: Bitmap,
    /// Watch streams this host has open for the task.
    pub watching: u32,
    /// Parents this host reported; never offered to it again.
    pub avoid: HashSet<String>,
    /// Corrupt pieces others reported against this host.
    pub strikes: u32,
    /// The length it announced before the task's length was known.
    pub claimed_length: Option<u64>,
    /// Its place in the task's order of downloaders (the rendezvous hash of task and host),
    /// computed once.
    pub(crate) rank: std::cell::Cell<Option<u64>>,
    /// When it last announced a piece it did not hold or have arriving before.
    pub(crate) last_gain: Option<Instant>,
}

impl TaskEntry {
    /// Whether only a seed may fetch the task (a layer's gzip index: a seed builds it, and
    /// what it holds — file modes, owners, links — is believed as the layer's).
    pub fn seed_only(&self) -> bool {
        self.application() == Some(shoal_p2p::id::GZIP_INDEX)
    }

    /// Whether the task is a layer's prefetch list: nobody fetches it, the first host that
    /// holds the layer and announces all of a list (before anyone told its length) is its
    /// author, and what it said defines it.
    pub fn authored(&self) -> bool {
        self.application() == Some(shoal_p2p::id::PREFETCH)
    }

    fn application(&self) -> Option<&str> {
        self.task.id_options.as_ref()?.application.as_deref()
    }

    pub(crate) fn new(task: Task) -> Self {
        TaskEntry {
            task,
            length: None,
            digests: Vec::new(),
            sources: Vec::new(),
            first_held: Vec::new(),
            holders: HashMap::new(),
            fetcher: None,
            failure: None,
            failed_fetchers: HashMap::new(),
            changed: watch::channel(0).0,
            last_active: Instant::now(),
        }
    }

    pub fn layout(&self) -> Option<Layout> {
        self.length.and_then(Layout::for_length)
    }

    pub(crate) fn piece_count(&self) -> u32 {
        self.layout().map_or(0, |l| l.piece_count())
    }

    /// Whether `host` failed to fetch this task from the origin lately.
    pub(crate) fn failed_recently(&self, host: &str) -> bool {
        self.failed_fetchers
            .get(host)
            .is_some_and(|at| at.elapsed() < FAILED_FETCHER_TTL)
    }

    /// The fetcher's origin failure, while it is recent.
    pub(crate) fn recent_failure(&self) -> Option<&Failure> {
        self.failure
            .as_ref()
            .filter(|(_, at)| at.elapsed() < FAILURE_TTL)
            .map(|(f, _)| f)
    }

    /// Wakes every watcher of the task.
    pub fn notify(&mut self) {
        self.last_active = Instant::now();
        self.changed.send_modify(|v| *v += 1);
    }

    /// Takes the length from one who knows it (the service refuses impossible ones).
    pub(crate) fn set_length(&mut self, length: u64) {
        if self.length.is_none() && Layout::for_length(length).is_some() {
            self.length = Some(length);
            let n = self.piece_count() as usize;
            self.digests = vec![None; n];
            self.first_held = vec![None; n];
            for h in self.holders.values_mut() {
                h.bitmap = Bitmap::from_bytes(h.bitmap.as_bytes(), n as u32);
                if h.claimed_length.take().is_some_and(|l| l != length) {
                    // It claimed another task's pieces: offered to nobody.
                    h.strikes = MAX_STRIKES;
                }
            }
        }
    }

    /// Takes the task's sources from one who knows them, while it has none; at most
    /// [`MAX_SOURCES`], each a plausible upstream, else none are taken (and a mirror serves the
    /// task's content to no client from the swarm).
    pub(crate) fn set_sources(&mut self, sources: &[Source]) {
        let plausible = |s: &Source| {
            s.upstream.len() <= MAX_UPSTREAM_LEN
                && (s.upstream.starts_with("https://") || s.upstream.starts_with("http://"))
        };
        if self.sources.is_empty() && sources.len() <= MAX_SOURCES && sources.iter().all(plausible)
        {
            shoal_p2p::proto::add_sources(&mut self.sources, sources);
        }
    }

    /// Whether the hosts alive among `hosts` hold every piece between them, with every piece's
    /// digest known (a piece nobody can check is as good as missing).
    pub(crate) fn covered(&self, hosts: &HashMap<String, Attached>) -> bool {
        let Some(layout) = self.layout() else {
            return false;
        };
        if self.digests.iter().any(Option::is_none) {
            return false;
        }
        let mut all = Bitmap::new(layout.piece_count());
        for (id, h) in &self.holders {
            if hosts.contains_key(id) && h.strikes < MAX_STRIKES {
                all.union(&h.bitmap);
            }
        }
        all.is_full()
    }
}

/// The labels that say where a host is (Dragonfly's `idc`, and `zone`): hosts that differ in
/// one of them are in different places, joined by links slower and dearer than their own.
pub const PLACE_LABELS: [&str; 2] = ["idc", "zone"];

/// Whether hosts `a` and `b` are in one place: they agree on every place label (one naming a
/// place the other does not is elsewhere).
pub fn same_place(a: &Host, b: &Host) -> bool {
    PLACE_LABELS
        .iter()
        .all(|k| a.labels.get(*k) == b.labels.get(*k))
}

/// The pieces sources (and hosts elsewhere) offer one host, and whether that changes with time
/// alone.
pub(crate) struct SeedOffer {
    /// What the sources offer it.
    pub pieces: Bitmap,
    /// What hosts in other places offer it: the pieces nobody in its place holds or has
    /// arriving, each to one host of the place in turn (see [`TaskEntry::seed_offer`]).
    pub fresh: Bitmap,
    pub expiring: bool,
}

impl TaskEntry {
    /// Whether `id` (attached as `attached`) fetches the task from the origin for the swarm: a
    /// seed, or the peer the scheduler sent to the origin (after a seed died, or with no seed).
    pub(crate) fn is_source(&self, id: &String, attached: &Attached) -> bool {
        attached.host.seed || self.fetcher.as_ref() == Some(id)
    }

    /// Which of the sources' pieces `host` is offered (sources: seeds, and the peer fetching from
    /// the origin for the swarm), so that a source's upload carries each piece about once and the
    /// hosts pass it on among themselves:
    /// * a piece no other host holds goes to one host: the hosts still downloading take the
    ///   pieces in turn (piece `p` to the `p mod k`-th of them, in an order hashed from the task
    ///   id), so each host's upload carries as many new pieces as the next; while nobody else
    ///   holds it, the next host in that order is offered it too after [`SEED_EXCLUSIVE`], then
    ///   twice as many hosts every [`SEED_EXCLUSIVE`] (the chosen host may be slow);
    /// * a piece other hosts hold is theirs to give while the seed is still fetching (its
    ///   upload is for new pieces); once the seed has everything, it helps with those too.
    ///
    /// Places ([`PLACE_LABELS`]) count as well: "other hosts" and "the hosts still downloading"
    /// are those in `host`'s place, and a piece held only elsewhere is new to the place, offered
    /// from there to one host of the place in turn, the others getting it from that one. A
    /// source elsewhere offers it only when no host of the source's own place is downloading
    /// (they pass the source's pieces on: its upload is for them), or once the chosen host
    /// gained nothing for [`SEED_EXCLUSIVE`]; and it helps with pieces held in `host`'s place
    /// never. Each piece then crosses into a place about once. A host naming no `zone` (or
    /// `idc`) is in another place than one naming it: label every host, or none.
    ///
    /// `usable` says which attached holders `host` may be offered.
    pub(crate) fn seed_offer(
        &self,
        host: &Host,
        hosts: &HashMap<String, Attached>,
        usable: impl Fn(&String, &Holder) -> bool,
    ) -> SeedOffer {
        let n = self.piece_count();
        let mut others = Bitmap::new(n);
        // Sources' pieces here and elsewhere; what hosts elsewhere hold or have arriving.
        let (mut seeds, mut seeds_away) = (Bitmap::new(n), Bitmap::new(n));
        let mut elsewhere = Bitmap::new(n);
        let mut seed_complete = false;
        // Sources elsewhere, and the hosts elsewhere downloading (which may pass their pieces on).
        let (mut sources_away, mut downloading_away): (Vec<&Host>, Vec<&Host>) = Default::default();
        let mut downloaders: Vec<(u64, &str, &Holder)> = Vec::new();
        for (id, h) in &self.holders {
            // A host not attached offers nothing and is no downloader (one lookup per holder).
            let Some(attached) = hosts.get(id) else {
                continue;
            };
            let here = same_place(&attached.host, host);
            if self.is_source(id, attached) {
                if h.strikes < MAX_STRIKES {
                    match here {
                        true => seeds.union(&h.bitmap),
                        false => {
                            seeds_away.union(&h.bitmap);
                            sources_away.push(&attached.host);
                        }
                    }
                    seed_complete |= here && h.bitmap.is_full();
                }
                continue;
            }
            if usable(id, h) {
                // A piece arriving at a host is that host's to pass on, as a held one is.
                let to = if here { &mut others } else { &mut elsewhere };
                to.union(&h.bitmap);
                to.union(&h.arriving);
            }
            let downloading = h.watching > 0 && h.strikes < MAX_STRIKES && !h.bitmap.is_full();
            if downloading && !here {
                downloading_away.push(&attached.host);
            }
            if here && downloading {
                let rank = h.rank.get().unwrap_or_else(|| {
                    let r = rendezvous(&self.task.id, id);
                    h.rank.set(Some(r));
                    r
                });
                downloaders.push((rank, id, h));
            }
        }
        // Whether a source elsewhere has hosts of its own place downloading: they pass its
        // pieces on (to this place too), and its upload is for them.
        let busy_elsewhere = downloading_away
            .iter()
            .any(|d| sources_away.iter().any(|s| same_place(d, s)));
        // The downloaders in an order of their own for this task; new pieces go round it.
        downloaders.sort_unstable_by_key(|(rank, id, _)| (*rank, *id));
        let k = downloaders.len();
        let me = downloaders.iter().position(|(_, id, _)| *id == host.id);
        let mut pieces = Bitmap::new(n);
        let mut fresh = Bitmap::new(n);
        let mut expiring = false;
        let mut candidates = seeds.clone();
        candidates.union(&seeds_away);
        candidates.union(&elsewhere);
        for p in candidates.ones() {
            if others.get(p) {
                if seed_complete && seeds.get(p) {
                    pieces.set(p);
                }
                continue;
            }
            // Offered to `width` downloaders from the chosen one on (all of them, and hosts
            // that are not downloading, once it reaches them all).
            let width = match seeds.get(p) {
                true => self.first_held[p as usize].map_or(usize::MAX, |t| {
                    let doublings = t.elapsed().as_millis() / SEED_EXCLUSIVE.as_millis();
                    1usize
                        .checked_shl(doublings.min(64) as u32)
                        .unwrap_or(usize::MAX)
                }),
                // A piece coming from elsewhere stays its chosen host's while that host gains
                // pieces: the link between places is slower, so this place's pieces queue there
                // for long, and a second host taking one would carry it across twice.
                false => match downloaders.get(p as usize % k.max(1)) {
                    Some((_, _, chosen))
                        if chosen
                            .last_gain
                            .is_some_and(|t| t.elapsed() < SEED_EXCLUSIVE) =>
                    {
                        1
                    }
                    _ => usize::MAX,
                },
            };
            let offered = width >= k || me.is_some_and(|i| (i + k - p as usize % k) % k < width);
            // A source elsewhere is this place's fallback while hosts there pass it on.
            let away = seeds_away.get(p) && (!busy_elsewhere || width > 1);
            expiring |= !offered || seeds_away.get(p) && !away;
            if offered {
                fresh.set(p);
                if seeds.get(p) || away {
                    pieces.set(p);
                }
            }
        }
        SeedOffer {
            pieces,
            fresh,
            expiring,
        }
    }
}

/// Rendezvous (highest random weight) hashing: the same task picks the same seed while the set
/// of seeds is unchanged, and losing a seed moves only its tasks.
pub fn rendezvous(key: &str, node: &str) -> u64 {
    let mut h = blake3::Hasher::new();
    h.update(key.as_bytes());
    h.update(&[0]);
    h.update(node.as_bytes());
    u64::from_le_bytes(h.finalize().as_bytes()[..8].try_into().expect("8 bytes"))
}
