//! Which piece to ask for next, and of whom. It reads a [`Snapshot`] of one download and decides;
//! the piece loop (`pieces`) starts the requests.
//!
//! * From peers: rarest first among the missing pieces whose digest is known and some parent
//!   with a free request slot holds (random among equals); of those parents, a non-seed before a
//!   seed (the seed's upload is for pieces only it holds), then the one asked least.
//! * Endgame: when every missing piece is in flight and few are left, a piece in flight from
//!   one parent is asked of another holder too.
//! * From the origin: the first missing piece not in flight that no parent could give, and the
//!   run of such pieces after it (one origin stream's pieces).
//! * Pieces a reader waits for (a lazy layer's file read) go before all others, to peers and
//!   to the origin, with twice the per-parent limit; meanwhile no other piece starts (the
//!   background completion of a lazy layer pauses while a read waits).

use std::collections::HashMap;
use std::ops::Range;

use rand::Rng;
use tokio::task::AbortHandle;

use crate::bitmap::Bitmap;

/// The endgame starts when this few pieces are missing (and all are in flight).
const ENDGAME_PIECES: usize = 3;
/// Fewest requests in flight to one parent that the spread allows (see [`per_parent_limit`]).
const MIN_PER_PARENT: usize = 2;

/// Requests in flight to one parent at most: the download's share spread over its parents, and
/// never fewer than [`MIN_PER_PARENT`]. In the lab (8 hosts, 7 peers and a seed each) 2 per
/// parent gave a median of 1.25–1.26× ideal against 1.28–1.34× with 4: more requests to one parent
/// pile onto the few that hold the newest pieces, whose uploads are already the busiest.
pub(super) fn per_parent_limit(piece_concurrency: usize, parents: usize) -> usize {
    piece_concurrency
        .div_ceil(parents.max(1))
        .max(MIN_PER_PARENT)
}

/// Peer requests in flight per piece: the parent asked, and how to abort it.
pub(super) type Inflight = HashMap<u32, Vec<(String, AbortHandle)>>;

/// A parent as the chooser sees it.
pub(super) struct Candidate {
    pub id: String,
    pub addr: String,
    /// The pieces it holds or has arriving (which it passes on as they come).
    pub holds: Bitmap,
    /// Of those, the ones still arriving there.
    pub arriving: Bitmap,
    pub seed: bool,
    /// In another place (zone, data center): asked after the parents here, and never for an
    /// endgame's second copy.
    pub elsewhere: bool,
    /// Answered "busy" or "not here" a moment ago: not asked now, but still counted as a
    /// holder (its pieces are not the origin's).
    pub resting: bool,
}

/// What the chooser knows of one download.
pub(super) struct Snapshot<'a> {
    /// The parents still in use (not failed this download).
    pub parents: Vec<Candidate>,
    /// The pieces not stored yet, in order.
    pub missing: Vec<u32>,
    /// Of those, the ones a reader waits for.
    pub urgent: Vec<u32>,
    /// Whether each piece's digest is published (only such pieces are asked of peers).
    pub known: Vec<bool>,
    pub inflight: &'a Inflight,
    /// Pieces an origin stream will deliver.
    pub streamed: Bitmap,
    /// Requests in flight per parent.
    pub load: &'a HashMap<String, usize>,
    /// Pieces in flight from peers at most, for the whole download.
    pub piece_concurrency: usize,
}

impl Snapshot<'_> {
    fn load(&self, id: &str) -> usize {
        self.load.get(id).copied().unwrap_or(0)
    }

    /// The next piece some reader waits for (see `urgent`) to ask a parent for, and the
    /// parent: the background's limits doubled, so a read never queues behind it.
    pub fn urgent_peer(&self) -> Option<(u32, &Candidate)> {
        let limit = 2 * per_parent_limit(self.piece_concurrency, self.parents.len());
        let n = self.rarest(&self.urgent, limit)?;
        Some((n, self.parent_for(n, limit)?))
    }

    /// The next piece to ask a parent for, and the parent.
    pub fn peer(&self) -> Option<(u32, &Candidate)> {
        let limit = per_parent_limit(self.piece_concurrency, self.parents.len());
        let endgame =
            self.missing.len() <= ENDGAME_PIECES && self.missing.iter().all(|&n| self.busy(n));
        let n = self.rarest(&self.missing, limit).or_else(|| {
            if !endgame {
                return None;
            }
            self.inflight
                .iter()
                .filter(|(_, reqs)| reqs.len() == 1)
                .find(|(n, reqs)| {
                    self.known(**n)
                        && self
                            .parents
                            .iter()
                            .any(|p| p.holds.get(**n) && reqs[0].0 != p.id && !p.elsewhere)
                })
                .map(|(n, _)| *n)
        })?;
        Some((n, self.parent_for(n, limit)?))
    }

    /// Whether piece `n` is asked of a parent or an origin stream's.
    fn busy(&self, n: u32) -> bool {
        self.inflight.contains_key(&n) || self.streamed.get(n)
    }

    fn known(&self, n: u32) -> bool {
        self.known.get(n as usize).copied().unwrap_or(false)
    }

    /// Of `pieces`, one not in flight whose digest is known, held by the fewest parents with a
    /// free slot under `limit` (random among equals).
    fn rarest(&self, pieces: &[u32], limit: usize) -> Option<u32> {
        let mut best: Option<(usize, u32, u32)> = None;
        let mut rng = rand::rng();
        for n in pieces
            .iter()
            .copied()
            .filter(|&n| !self.busy(n) && self.known(n))
        {
            let holders = self
                .parents
                .iter()
                .filter(|p| p.holds.get(n) && !p.resting && self.load(&p.id) < limit)
                .count();
            if holders == 0 {
                continue;
            }
            let tie: u32 = rng.random();
            if best.is_none_or(|(h, _, t)| (holders, tie) < (h, t)) {
                best = Some((holders, n, tie));
            }
        }
        best.map(|(_, n, _)| n)
    }

    /// The parent to ask for piece `n`: one that holds it, was not asked for it already and
    /// has a free slot (and is here, when it is a second request); one here before one
    /// elsewhere, a non-seed before a seed, one holding it before one it is arriving at, then
    /// the least loaded.
    fn parent_for(&self, n: u32, limit: usize) -> Option<&Candidate> {
        let asked: Vec<&str> = self
            .inflight
            .get(&n)
            .into_iter()
            .flatten()
            .map(|(p, _)| p.as_str())
            .collect();
        self.parents
            .iter()
            .filter(|p| {
                p.holds.get(n)
                    && !p.resting
                    && !asked.contains(&p.id.as_str())
                    && (asked.is_empty() || !p.elsewhere)
                    && self.load(&p.id) < limit
            })
            .min_by_key(|p| (p.elsewhere, p.seed, p.arriving.get(n), self.load(&p.id)))
    }

    /// The next pieces to stream from the origin: the first missing piece not in flight that
    /// no parent could give (held by one, digest known), and the run of such pieces after it;
    /// with whether they are pieces a reader waits for. While a reader waits, only those.
    pub fn origin_run(&self) -> Option<(Range<u32>, bool)> {
        let from_peers = |n: u32| self.known(n) && self.parents.iter().any(|p| p.holds.get(n));
        let free = |n: u32| !self.busy(n) && !from_peers(n);
        let urgent = !self.urgent.is_empty();
        let pieces = match urgent {
            true => &self.urgent,
            false => &self.missing,
        };
        let at = pieces.iter().position(|&n| free(n))?;
        let first = pieces[at];
        let mut end = first + 1;
        // `pieces` is in order: the run goes on while the next one is the next piece.
        for &n in &pieces[at + 1..] {
            if n != end || !free(n) {
                break;
            }
            end += 1;
        }
        Some((first..end, urgent))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn requests_spread_over_parents_but_one_parent_can_fill_the_download() {
        // The lab: 8 in flight over 7 peers and a seed.
        assert_eq!(per_parent_limit(8, 8), MIN_PER_PARENT);
        // One parent (a seed, or a single peer): all 8 from it.
        assert_eq!(per_parent_limit(8, 1), 8);
        assert_eq!(per_parent_limit(8, 3), 3);
        assert_eq!(per_parent_limit(8, 0), 8);
        assert_eq!(per_parent_limit(1, 4), MIN_PER_PARENT);
    }

    fn parent(id: &str, holds: &[u32], seed: bool) -> Candidate {
        let mut b = Bitmap::new(4);
        holds.iter().for_each(|&n| b.set(n));
        Candidate {
            id: id.into(),
            addr: format!("{id}:4000"),
            holds: b,
            arriving: Bitmap::new(4),
            seed,
            elsewhere: false,
            resting: false,
        }
    }

    #[test]
    fn rarest_piece_first_from_a_peer_before_a_seed_and_the_origin_gets_the_rest() {
        let inflight = Inflight::new();
        let load = HashMap::new();
        let snap = Snapshot {
            parents: vec![
                parent("seed", &[0, 1, 2], true),
                parent("a", &[0, 1], false),
                parent("b", &[0], false),
            ],
            missing: vec![0, 1, 2, 3],
            urgent: Vec::new(),
            known: vec![true, true, true, false],
            inflight: &inflight,
            streamed: Bitmap::new(4),
            load: &load,
            piece_concurrency: 8,
        };
        // Piece 2 is held by the seed alone: the rarest.
        let (n, p) = snap.peer().unwrap();
        assert_eq!((n, p.id.as_str()), (2, "seed"));
        // Piece 3's digest is unknown and no parent holds it: the origin's.
        assert_eq!(snap.origin_run(), Some((3..4, false)));
        let snap = Snapshot {
            missing: vec![1],
            ..snap
        };
        let (n, p) = snap.peer().unwrap();
        assert_eq!((n, p.id.as_str()), (1, "a"), "a peer before the seed");
        assert_eq!(snap.origin_run(), None, "a parent can give piece 1");
    }

    #[tokio::test]
    async fn a_parent_elsewhere_is_asked_last_and_never_for_a_second_copy() {
        let far = |id: &str| Candidate {
            elsewhere: true,
            ..parent(id, &[0, 1], false)
        };
        let (none, load) = (Inflight::new(), HashMap::new());
        let first = Snapshot {
            parents: vec![far("far"), parent("seed", &[0, 1], true)],
            missing: vec![0, 1],
            urgent: Vec::new(),
            known: vec![true; 4],
            inflight: &none,
            streamed: Bitmap::new(4),
            load: &load,
            piece_concurrency: 8,
        };
        assert_eq!(first.peer().map(|(_, p)| p.id.as_str()), Some("seed"));
        // The endgame: piece 0 is in flight from "a"; "far" holds it too, but a second copy
        // would cross the slow link between places.
        let handle = tokio::spawn(async {}).abort_handle();
        let inflight = Inflight::from([(0, vec![("a".to_owned(), handle)])]);
        let load = HashMap::from([("a".to_owned(), 1)]);
        let endgame = Snapshot {
            parents: vec![parent("a", &[0], false), far("far")],
            missing: vec![0],
            inflight: &inflight,
            load: &load,
            ..first
        };
        assert!(endgame.peer().is_none());
        let here = Snapshot {
            parents: vec![
                parent("a", &[0], false),
                far("far"),
                parent("near", &[0], false),
            ],
            ..endgame
        };
        assert_eq!(
            here.peer().map(|(n, p)| (n, p.id.as_str())),
            Some((0, "near"))
        );
    }

    #[test]
    fn a_piece_a_reader_waits_for_goes_first_even_to_a_busy_parent() {
        let inflight = Inflight::new();
        // "a" has all its slots taken by background pieces (8 over 2 parents: 4 each).
        let load = HashMap::from([("a".to_owned(), 4)]);
        let snap = Snapshot {
            parents: vec![parent("a", &[0, 1, 2, 3], false), parent("b", &[0], false)],
            missing: vec![0, 1, 2, 3],
            urgent: vec![3],
            known: vec![true; 4],
            inflight: &inflight,
            streamed: Bitmap::new(4),
            load: &load,
            piece_concurrency: 8,
        };
        assert_eq!(snap.peer().map(|(n, p)| (n, p.id.as_str())), Some((0, "b")));
        let (n, p) = snap.urgent_peer().unwrap();
        assert_eq!((n, p.id.as_str()), (3, "a"), "past the background's limit");
        let alone = Snapshot {
            parents: Vec::new(),
            ..snap
        };
        assert_eq!(
            alone.origin_run(),
            Some((3..4, true)),
            "and first from the origin"
        );
        let in_flight = Inflight::from([(3, Vec::new())]);
        let waiting = Snapshot {
            inflight: &in_flight,
            ..alone
        };
        assert_eq!(
            waiting.origin_run(),
            None,
            "and nothing else while it comes"
        );
    }

    #[test]
    fn an_origin_stream_runs_over_the_next_missing_pieces_nobody_else_gives() {
        let inflight = Inflight::new();
        let load = HashMap::new();
        let streamed = |pieces: &[u32]| {
            let mut b = Bitmap::new(10);
            pieces.iter().for_each(|&n| b.set(n));
            b
        };
        let mut holder = parent("a", &[], false);
        holder.holds = streamed(&[7]);
        let snap = Snapshot {
            parents: vec![holder],
            missing: vec![0, 1, 2, 3, 5, 6, 7, 8, 9],
            urgent: Vec::new(),
            known: vec![true; 10],
            inflight: &inflight,
            streamed: streamed(&[]),
            load: &load,
            piece_concurrency: 8,
        };
        assert_eq!(
            snap.origin_run(),
            Some((0..4, false)),
            "up to the stored piece 4"
        );
        let snap = Snapshot {
            streamed: streamed(&[0, 1, 2, 3]),
            ..snap
        };
        assert_eq!(
            snap.origin_run(),
            Some((5..7, false)),
            "up to the peer's piece 7"
        );
        let snap = Snapshot {
            streamed: streamed(&[0, 1, 2, 3, 5, 6, 9]),
            ..snap
        };
        assert_eq!(
            snap.origin_run(),
            Some((8..9, false)),
            "up to another stream's"
        );
        let snap = Snapshot {
            streamed: streamed(&[]),
            urgent: vec![2, 3, 6],
            ..snap
        };
        assert_eq!(
            snap.origin_run(),
            Some((2..4, true)),
            "a reader's pieces only"
        );
    }

    #[test]
    fn a_resting_parent_is_not_asked_and_its_pieces_are_not_the_origins() {
        let inflight = Inflight::new();
        let load = HashMap::new();
        let mut busy = parent("a", &[0, 1], false);
        busy.resting = true;
        let snap = Snapshot {
            parents: vec![busy],
            missing: vec![0, 1, 2, 3],
            urgent: Vec::new(),
            known: vec![true; 4],
            inflight: &inflight,
            streamed: Bitmap::new(4),
            load: &load,
            piece_concurrency: 8,
        };
        assert!(snap.peer().is_none());
        assert_eq!(snap.origin_run(), Some((2..4, false)));
    }
}
