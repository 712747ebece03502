//! Tests of `state`.

use super::*;
use crate::task::{FAILURE_TTL, SEED_EXCLUSIVE};
use shoal_p2p::proto::PieceDigest;

/// Small tasks have pieces of the minimum length.
const PIECE: u64 = shoal_p2p::piece::MIN_PIECE_LENGTH;

fn host(id: &str, seed: bool) -> Host {
    Host {
        id: id.into(),
        upload_addr: format!("{id}:4000"),
        seed,
        ..Default::default()
    }
}

/// A piece set of `pieces` out of `count`, with their digests.
fn have(count: u32, pieces: &[u32]) -> PieceSet {
    let bitmap: Bitmap = (0..count).map(|p| pieces.contains(&p)).collect();
    PieceSet {
        length_known: true,
        content_length: u64::from(count) * PIECE,
        bitmap: bitmap.as_bytes().to_vec(),
        digests: pieces
            .iter()
            .map(|&p| PieceDigest {
                number: p,
                blake3: vec![p as u8; 32],
            })
            .collect(),
    }
}

/// A state with a seed and `n` downloading hosts watching task "t" of `count` pieces.
fn swarm(n: usize, count: u32) -> (State, Vec<Host>) {
    let mut state = State::default();
    let task = Task {
        id: "t".into(),
        url: "http://origin/blob".into(),
        ..Default::default()
    };
    let mut hosts = vec![host("seed", true)];
    hosts.extend((0..n).map(|i| host(&format!("h{i}"), false)));
    for h in &hosts {
        state.attach(h.clone(), mpsc::channel(1).0);
        let _ = state.watch(h, task.clone(), &have(count, &[]));
    }
    (state, hosts)
}

fn offered_by(state: &State, to: &Host, parent: &str) -> Vec<u32> {
    let (view, _) = state.view("t", to).unwrap();
    let n = view.digests.len() as u32;
    view.parents
        .iter()
        .find(|p| p.host_id == parent)
        .map(|p| Bitmap::from_bytes(&p.bitmap, n).ones().collect())
        .unwrap_or_default()
}

#[test]
fn a_new_piece_of_the_seed_is_offered_to_one_host_only() {
    let (mut state, hosts) = swarm(5, 16);
    state.merge("t", "seed", &have(16, &(0..8).collect::<Vec<_>>()));
    for p in 0..8 {
        let takers = hosts[1..]
            .iter()
            .filter(|h| offered_by(&state, h, "seed").contains(&p))
            .count();
        assert_eq!(takers, 1, "piece {p} offered to {takers} hosts");
    }
    // New pieces go round the hosts: each is offered as many as the next, give or take one.
    let shares: Vec<usize> = hosts[1..]
        .iter()
        .map(|h| offered_by(&state, h, "seed").len())
        .collect();
    let (lo, hi) = (shares.iter().min().unwrap(), shares.iter().max().unwrap());
    assert!(
        *lo > 0 && hi - lo <= 1,
        "shares of the seed's pieces: {shares:?}"
    );
    let busy = shares.iter().filter(|&&n| n > 0).count();
    assert!(state.view("t", &hosts[1]).unwrap().1 || busy < 5);
}

#[test]
fn once_a_host_holds_a_piece_the_others_get_it_from_that_host() {
    let (mut state, hosts) = swarm(3, 4);
    state.merge("t", "seed", &have(4, &[0, 1]));
    let chosen = hosts[1..]
        .iter()
        .find(|h| offered_by(&state, h, "seed").contains(&0))
        .unwrap()
        .clone();
    state.merge("t", &chosen.id, &have(4, &[0]));
    for h in hosts[1..].iter().filter(|h| h.id != chosen.id) {
        assert!(offered_by(&state, h, &chosen.id).contains(&0));
        assert!(
            !offered_by(&state, h, "seed").contains(&0),
            "the seed still fetching should keep its upload for new pieces"
        );
    }
    // A complete seed helps with every piece.
    state.merge("t", "seed", &have(4, &[0, 1, 2, 3]));
    let other = hosts[1..].iter().find(|h| h.id != chosen.id).unwrap();
    assert!(offered_by(&state, other, "seed").contains(&0));
}

#[test]
fn a_piece_nobody_else_got_is_offered_to_everyone_after_a_while() {
    let (mut state, hosts) = swarm(3, 4);
    state.merge("t", "seed", &have(4, &[0]));
    let entry = state.tasks.get_mut("t").unwrap();
    entry.first_held[0] = Some(Instant::now() - SEED_EXCLUSIVE);
    for h in &hosts[1..] {
        assert_eq!(offered_by(&state, h, "seed"), vec![0]);
    }
}

#[test]
fn a_host_is_never_its_own_parent_and_a_struck_host_is_offered_to_nobody() {
    let (mut state, hosts) = swarm(3, 4);
    let (h0, h1, h2) = (&hosts[1], &hosts[2], &hosts[3]);
    state.merge("t", "h0", &have(4, &[0, 1]));
    assert_eq!(offered_by(&state, h2, "h0"), vec![0, 1]);
    let own = state.view("t", h0).unwrap().0;
    assert!(own.parents.iter().all(|p| p.host_id != h0.id));
    for _ in 0..MAX_STRIKES {
        state.report("t", &h1.id, &h0.id, true);
    }
    assert!(offered_by(&state, h2, "h0").is_empty());
}

#[test]
fn the_peer_sent_to_the_origin_offers_its_new_pieces_like_a_seed() {
    let (mut state, hosts) = swarm(4, 8);
    // The seed dies; a peer is sent to the origin.
    state.hosts.remove("seed");
    let fetcher = &hosts[1];
    assert!(state.plan("t", Some(&fetcher.id)).back_to_source_peer);
    state.merge("t", &fetcher.id, &have(8, &[0, 1, 2, 3]));
    for p in 0..4 {
        let takers = hosts[2..]
            .iter()
            .filter(|h| offered_by(&state, h, &fetcher.id).contains(&p))
            .count();
        assert_eq!(takers, 1, "piece {p} offered to {takers} hosts");
    }
}

#[test]
fn a_fetchers_failure_sends_the_watchers_to_the_origin_and_is_its_own() {
    let (mut state, hosts) = swarm(2, 4);
    let planned = state.plan("t", Some("h0"));
    assert_eq!(planned.seed_job.map(|(s, _)| s).as_deref(), Some("seed"));
    let failure = Failure {
        http_status: 401,
        message: "expired token".into(),
    };
    state.fail("t", "seed", failure.clone());
    // The watchers learn at once, and the failed seed is not sent to the origin again.
    let (view, _) = state.view("t", &hosts[1]).unwrap();
    assert_eq!(view.failure, Some(failure));
    assert!(state.plan("t", Some("h0")).seed_job.is_none());
    // Once the failure is old, the task is planned again: not the seed that failed, but the
    // asking watcher, with its own credentials.
    if let Some(entry) = state.tasks.get_mut("t")
        && let Some((_, at)) = entry.failure.as_mut()
    {
        *at -= FAILURE_TTL;
    }
    assert_eq!(state.view("t", &hosts[1]).unwrap().0.failure, None);
    let planned = state.plan("t", Some("h0"));
    assert!(planned.seed_job.is_none() && planned.back_to_source_peer);
    // Pieces announced clear a failure at once.
    state.fail("t", "h0", Failure::default());
    state.merge("t", "h1", &have(4, &[0]));
    assert_eq!(state.view("t", &hosts[2]).unwrap().0.failure, None);
}
